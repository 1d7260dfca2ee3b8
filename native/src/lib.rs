//! ambient-fast's native data path. Pure modules (`tls`, `verify`, `server`, `pool`, `pump`,
//! `settings`, `netns`, `pki`) know nothing of Python; `python` (and `python_pki`) are the thin
//! PyO3 binding layer.

/// mimalloc keeps freed buffers instead of returning them to the kernel: glibc's malloc
/// turned the 1 MiB HTTP/2 frame buffers into page-fault churn (about 12% of proxy CPU).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod completion;
pub mod logbridge;
pub mod netns;
pub mod pki;
pub mod pool;
pub mod pump;
mod python;
mod python_pki;
pub mod server;
pub mod settings;
pub mod tls;
pub mod verify;

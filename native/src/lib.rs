//! ambient-fast's native data path. Pure modules (`tls`, `verify`, `server`, `pool`, `pump`,
//! `settings`) know nothing of Python; `python` is the thin PyO3 binding layer.

pub mod completion;
pub mod logbridge;
pub mod pool;
pub mod pump;
mod python;
pub mod server;
pub mod settings;
pub mod tls;
pub mod verify;

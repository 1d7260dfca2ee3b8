//! Native log records for Python's `logging`, without the GIL: records wait in a bounded
//! queue and the event loop emits them when it drains completions.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Past this many undrained records new ones are counted and dropped (never block a pump).
const MAX_PENDING: usize = 10_000;

pub struct LogRecord {
    pub level: u8,
    pub target: String,
    pub message: String,
}

type Waker = Arc<dyn Fn() + Send + Sync>;

#[derive(Default)]
pub struct LogBridge {
    pending: Mutex<VecDeque<LogRecord>>,
    dropped: AtomicU64,
    waker: Mutex<Option<Waker>>,
}

/// Python logging's numeric levels.
fn python_level(level: Level) -> u8 {
    match level {
        Level::Error => 40,
        Level::Warn => 30,
        Level::Info => 20,
        Level::Debug | Level::Trace => 10,
    }
}

impl LogBridge {
    pub fn global() -> &'static LogBridge {
        static BRIDGE: OnceLock<LogBridge> = OnceLock::new();
        BRIDGE.get_or_init(|| {
            let _ = log::set_logger(&Installed);
            log::set_max_level(LevelFilter::Info);
            LogBridge::default()
        })
    }

    /// Who to wake when a record arrives (the most recent event loop's completion queue).
    pub fn set_waker(&self, waker: Waker) {
        *self.waker.lock().expect("waker lock") = Some(waker);
    }

    /// Takes the pending records and how many were dropped since the last call.
    pub fn drain(&self) -> (Vec<LogRecord>, u64) {
        let records = self.pending.lock().expect("log lock").drain(..).collect();
        (records, self.dropped.swap(0, Ordering::AcqRel))
    }

    fn push(&self, record: LogRecord) {
        {
            let mut pending = self.pending.lock().expect("log lock");
            if pending.len() >= MAX_PENDING {
                self.dropped.fetch_add(1, Ordering::AcqRel);
                return;
            }
            pending.push_back(record);
        }
        if let Some(wake) = self.waker.lock().expect("waker lock").as_ref() {
            wake();
        }
    }
}

struct Installed;

impl Log for Installed {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        // Only our crate's records: rustls and h2 internals stay quiet unless they matter.
        if self.enabled(record.metadata()) && record.target().starts_with("ambient_fast_native") {
            LogBridge::global().push(LogRecord {
                level: python_level(record.level()),
                target: record.target().replace("::", "."),
                message: record.args().to_string(),
            });
        }
    }

    fn flush(&self) {}
}

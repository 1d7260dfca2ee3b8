//! Completion queues: how native tasks report back to Python without ever taking the GIL.
//!
//! A task pushes its outcome and, if the queue was idle, writes the queue's eventfd; the
//! event loop (Python) is woken by the fd and drains every outcome in one call. Tokio
//! threads therefore never block on the GIL, and nothing native touches Python while the
//! interpreter is shutting down.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

/// A running task: `abort` drops it where it stands; `stop` (stoppable tasks only) asks it
/// to end by itself, so it still reports an outcome.
struct Running {
    abort: AbortHandle,
    stop: Option<oneshot::Sender<()>>,
}

/// What a stoppable task watches: `stopped()` resolves once `CompletionQueue::cut` is called
/// for its token, and never otherwise.
pub struct StopSignal(oneshot::Receiver<()>);

impl StopSignal {
    pub async fn stopped(self) {
        if self.0.await.is_err() {
            // The sender is dropped only with the task's entry: the task is ending anyway.
            std::future::pending::<()>().await;
        }
    }
}

pub struct CompletionQueue<T> {
    ready: Mutex<Vec<(u64, T)>>,
    running: Mutex<HashMap<u64, Running>>,
    signalled: AtomicBool,
    eventfd: OwnedFd,
}

impl<T> CompletionQueue<T> {
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ready: Mutex::new(Vec::new()),
            running: Mutex::new(HashMap::new()),
            signalled: AtomicBool::new(false),
            // SAFETY: fd was just created and is owned by nobody else.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn fileno(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// Wakes the consumer unless a wake-up is already pending.
    pub fn signal(&self) {
        if !self.signalled.swap(true, Ordering::AcqRel) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to our own eventfd.
            unsafe { libc::write(self.fileno(), (&one as *const u64).cast(), 8) };
        }
    }

    pub fn push(&self, token: u64, outcome: T) {
        self.running.lock().expect("running lock").remove(&token);
        self.ready
            .lock()
            .expect("ready lock")
            .push((token, outcome));
        self.signal();
    }

    /// Takes every ready outcome. Clears the fd first, so a push racing with us re-signals.
    pub fn drain(&self) -> Vec<(u64, T)> {
        let mut counter: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our own non-blocking eventfd.
        unsafe { libc::read(self.fileno(), (&mut counter as *mut u64).cast(), 8) };
        self.signalled.store(false, Ordering::Release);
        std::mem::take(&mut *self.ready.lock().expect("ready lock"))
    }

    /// Runs `work` on `runtime` and pushes its outcome under `token` unless cancelled.
    pub fn spawn<F>(self: &Arc<Self>, runtime: &Runtime, token: u64, work: F)
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.start(runtime, token, None, work);
    }

    /// Like `spawn`, for work that `cut(token)` can end early: it watches the StopSignal and
    /// its outcome is pushed as usual.
    pub fn spawn_stoppable<F>(
        self: &Arc<Self>,
        runtime: &Runtime,
        token: u64,
        work: impl FnOnce(StopSignal) -> F,
    ) where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (stop, signal) = oneshot::channel();
        self.start(runtime, token, Some(stop), work(StopSignal(signal)));
    }

    fn start<F>(
        self: &Arc<Self>,
        runtime: &Runtime,
        token: u64,
        stop: Option<oneshot::Sender<()>>,
        work: F,
    ) where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let queue = self.clone();
        // Held across spawn: a task that finishes at once waits here before un-tracking.
        let mut running = self.running.lock().expect("running lock");
        let task = runtime.spawn(async move {
            let outcome = work.await;
            queue.push(token, outcome);
        });
        let abort = task.abort_handle();
        running.insert(token, Running { abort, stop });
    }

    /// Aborts a running task; its outcome is never pushed.
    pub fn cancel(&self, token: u64) {
        if let Some(task) = self.running.lock().expect("running lock").remove(&token) {
            task.abort.abort();
        }
    }

    /// Signals a running stoppable task to end; it still pushes its outcome. A no-op for
    /// other tasks and for tokens no longer running.
    pub fn cut(&self, token: u64) {
        let mut running = self.running.lock().expect("running lock");
        if let Some(stop) = running.get_mut(&token).and_then(|task| task.stop.take()) {
            let _ = stop.send(());
        }
    }

    pub fn running(&self) -> usize {
        self.running.lock().expect("running lock").len()
    }
}

impl<T> Drop for CompletionQueue<T> {
    fn drop(&mut self) {
        for (_, task) in self.running.lock().expect("running lock").drain() {
            task.abort.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::CompletionQueue;

    #[test]
    fn a_cut_task_still_reports() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let q = Arc::new(CompletionQueue::<u32>::new().expect("eventfd"));
        q.spawn_stoppable(&runtime, 7, |stop| async move {
            stop.stopped().await;
            42
        });
        q.cut(7);
        runtime.block_on(async {
            while q.running() > 0 {
                tokio::task::yield_now().await;
            }
        });
        assert_eq!(q.drain(), vec![(7, 42)]);
        q.cut(7); // no longer running: nothing to signal
    }

    #[test]
    fn a_push_after_drain_signals_again() {
        let q = CompletionQueue::<u32>::new().expect("eventfd");
        q.push(1, 10);
        q.push(2, 20);
        assert_eq!(q.drain(), vec![(1, 10), (2, 20)]);
        assert!(q.drain().is_empty());
        q.push(3, 30);
        let mut counter = 0u64;
        // SAFETY: test reads our own eventfd into a live u64.
        let n = unsafe { libc::read(q.fileno(), (&mut counter as *mut u64).cast(), 8) };
        assert_eq!(n, 8, "the eventfd is readable again after a new push");
    }
}

//! Sockets created inside another network namespace (ztunnel's in-pod mode).
//!
//! A socket belongs for its whole life to the namespace of the thread that created it. A pool
//! serving one pod steps the current worker thread into the pod's namespace (setns(2)) for the
//! `socket()` call only and straight back, as istio/ztunnel's InpodNetns::run does.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use log::error;

/// The namespace this process's threads live in, read when the pool is made.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

pub struct Netns {
    target: OwnedFd,
    home: OwnedFd,
}

fn setns(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: setns only reads the fd; CLONE_NEWNET restricts it to network namespaces.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Netns {
    /// `target`: an open network namespace (duplicated; the caller keeps its own fd). Home is
    /// the calling thread's namespace, where every runtime thread lives.
    pub fn new(target: BorrowedFd<'_>) -> io::Result<Self> {
        Ok(Self {
            target: target.try_clone_to_owned()?,
            home: std::fs::File::open(THREAD_NETNS)?.into(),
        })
    }

    /// Runs `make` with the current thread inside the namespace, then returns the thread home.
    pub fn run<T>(&self, make: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        setns(&self.target).map_err(|e| io::Error::new(e.kind(), format!("setns: {e}")))?;
        let made = make();
        if let Err(e) = setns(&self.home) {
            // A runtime thread left in a pod's namespace would open every later socket there.
            error!("netns: cannot return a worker thread to its namespace: {e}");
            std::process::abort();
        }
        made
    }
}

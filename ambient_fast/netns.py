"""Network namespaces: stepping a thread into one, and naming them.

A socket belongs to the network namespace of the thread that created it, for its whole
life. So the way to open a listener inside a pod is to step one thread into the pod's
namespace (setns(2)), create the socket, and step back. `entered` does that for the calling
thread; it must never be the event loop's thread while other work could run in between.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

# `ip netns add NAME` bind-mounts the namespace here.
NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    """Moves the calling thread into the network namespace open at `fd`."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns into netns fd {fd}: {os.strerror(errno)}")


def named_path(name: str) -> str:
    """The path of a namespace made by `ip netns add NAME`."""
    return os.path.join(NETNS_RUN_DIR, name)


@contextlib.contextmanager
def entered(netns_fd: int) -> Iterator[None]:
    """The calling thread in the namespace open at `netns_fd` until exit; back home after,
    also on error. Sockets created meanwhile stay in that namespace."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(netns_fd)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(home)


@contextlib.contextmanager
def entered_named(name: str) -> Iterator[None]:
    """`entered` for a namespace made by `ip netns add NAME`."""
    fd = os.open(named_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        with entered(fd):
            yield
    finally:
        os.close(fd)

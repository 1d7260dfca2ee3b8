"""Finding a pod's network namespace by its IP, as the node agent must after a restart (or
when it learns of a pod from the control plane rather than from the runtime).

Candidates are the named namespaces (`ip netns`, /run/netns) and every process's namespace
(/proc/<pid>/ns/net), one per (device, inode). A helper thread steps into each (setns) and
reads the local addresses from /proc/thread-self/net/fib_trie, so no command runs per
namespace. Results are cached by inode; a miss rescans.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from ambient_fast import netns

NetnsKey = tuple[int, int]  # (st_dev, st_ino) of the namespace file


def local_ipv4s() -> set[str]:
    """The IPv4 addresses local to the calling thread's namespace (loopback's excluded)."""
    addresses = set()
    last = ""
    with open("/proc/thread-self/net/fib_trie") as trie:
        for line in trie:
            text = line.strip()
            if text.startswith("|-- ") or text.startswith("+-- "):
                last = text[4:].split("/", 1)[0]
            elif text == "/32 host LOCAL" and last and not last.startswith("127."):
                addresses.add(last)
    return addresses


def _candidates() -> Iterator[str]:
    with contextlib.suppress(FileNotFoundError):
        for name in sorted(os.listdir(netns.NETNS_RUN_DIR)):
            yield netns.named_path(name)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            yield f"/proc/{pid}/ns/net"


class NetnsFinder:
    def __init__(self) -> None:
        self._own = os.stat("/proc/self/ns/net")
        self._by_ip: dict[str, str] = {}

    def find(self, ip: str) -> str | None:
        """A path to the namespace holding `ip`, or None."""
        path = self._by_ip.get(ip)
        if path is not None and ip in self._addresses(path):
            return path
        self._scan()
        return self._by_ip.get(ip)

    def namespaces(self) -> list[tuple[str, set[str]]]:
        """Every namespace but our own, once each, with its local IPv4 addresses."""
        seen: set[NetnsKey] = {(self._own.st_dev, self._own.st_ino)}
        found = []
        for path in _candidates():
            try:
                st = os.stat(path)
            except OSError:
                continue  # a process or namespace that just went away
            key = (st.st_dev, st.st_ino)
            if key not in seen:
                seen.add(key)
                found.append((path, self._addresses(path)))
        return found

    def _scan(self) -> None:
        self._by_ip = {}
        for path, ips in self.namespaces():
            for ip in ips:
                self._by_ip.setdefault(ip, path)

    @staticmethod
    def _addresses(path: str) -> set[str]:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return set()
        try:
            with netns.entered(fd):
                return local_ipv4s()
        except OSError:
            return set()
        finally:
            os.close(fd)

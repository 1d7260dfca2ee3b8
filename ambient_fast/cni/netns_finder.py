"""Finding a pod's network namespace by its IP, as the node agent must after a restart (or
when it learns of a pod from the control plane rather than from the runtime).

Candidates are the named namespaces (`ip netns`, /run/netns) and every process's namespace
(/proc/<pid>/ns/net), one per (device, inode). A helper thread steps into each (setns) and
reads the local addresses from /proc/thread-self/net/fib_trie, so no command runs per
namespace. Results are cached by inode; a miss rescans.

With `name_prefix`, only named namespaces starting with it are candidates: several meshes on
one machine (`ambient_fast.mesh`, parallel tests) reuse pod addresses, and an address found
in more than one candidate is never taken as a pod's (`AmbiguousNetns`).
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


class AmbiguousNetns(LookupError):
    """An address is local to several namespaces: which one is the pod is unknown."""


def _candidates(name_prefix: str | None) -> Iterator[str]:
    with contextlib.suppress(FileNotFoundError):
        for name in sorted(os.listdir(netns.NETNS_RUN_DIR)):
            if name_prefix is None or name.startswith(name_prefix):
                yield netns.named_path(name)
    if name_prefix is None:
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                yield f"/proc/{pid}/ns/net"


class NetnsFinder:
    def __init__(self, name_prefix: str | None = None) -> None:
        self.name_prefix = name_prefix
        self._own = os.stat("/proc/self/ns/net")
        self._by_ip: dict[str, list[str]] = {}

    def find(self, ip: str) -> str | None:
        """A path to the namespace holding `ip`, or None; AmbiguousNetns if several do."""
        paths = self._by_ip.get(ip, [])
        if len(paths) != 1 or ip not in self._addresses(paths[0]):
            self._scan()
            paths = self._by_ip.get(ip, [])
        if len(paths) > 1:
            raise AmbiguousNetns(f"{ip} is local to several namespaces: {', '.join(paths)}")
        return paths[0] if paths else None

    def namespaces(self) -> list[tuple[str, set[str]]]:
        """Every namespace but our own, once each, with its local IPv4 addresses."""
        seen: set[NetnsKey] = {(self._own.st_dev, self._own.st_ino)}
        found = []
        for path in _candidates(self.name_prefix):
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
                self._by_ip.setdefault(ip, []).append(path)

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

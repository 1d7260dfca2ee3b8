"""How the node proxy's in-pod listeners reach the capture programs.

The `ingress` program hands new connections to sockets it finds in the pod's listener map (a
SOCKMAP indexed by `ListenerRole`), and only the node proxy holds its listeners: so the proxy,
having opened them in the pod's namespace, puts them in (`ListenerMap.register`). It finds the
map through the program attached to the pod's loopback ingress (`attached.find`). A closed
socket leaves the map by itself; a restarted or upgraded proxy registers its own (with
SO_REUSEPORT the kernel then picks within the group). A pod without the program is not
eBPF-captured, and nothing happens.
"""

from __future__ import annotations

import os
import socket
import struct
from types import TracebackType

from ambient_fast.bpf import syscall
from ambient_fast.cni.ebpf import attached
from ambient_fast.cni.ebpf.programs import LISTENERS_MAP, ListenerRole

_KEY = struct.Struct("<I")
_SOCKET_FD = struct.Struct("<Q")


class ListenerMap:
    """A pod's listener map, open for the node proxy."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def of_current_netns(cls) -> ListenerMap | None:
        """The map of the calling thread's namespace, None when the pod is not eBPF-captured."""
        map_id = attached.find().maps.get(LISTENERS_MAP)
        return None if map_id is None else cls(syscall.map_fd_by_id(map_id))

    def register(self, role: ListenerRole, listener: socket.socket) -> None:
        syscall.map_update(self.fd, _KEY.pack(role), _SOCKET_FD.pack(listener.fileno()))

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> ListenerMap:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

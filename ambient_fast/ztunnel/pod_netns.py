"""A pod's network namespace as the in-pod proxy uses it: every socket of the pod's proxy is
created inside it, so its listeners are the pod's and its connections leave from the pod.

A socket belongs to the namespace of the thread that created it (`ambient_fast.netns`). The
event loop's thread never changes namespace: `NetnsThread` is one helper thread that steps
into a pod's namespace (setns(2)) for the `socket()`/`bind()`/`listen()` calls and back; the
sockets then live on the loop like any other. The native HBONE pool does the same on its own
threads for its connections (`HbonePool(netns=...)`). Options follow istio/ztunnel's
InPodSocketFactory: SO_MARK 0x539 on every socket, SO_REUSEPORT on listeners (a new proxy
can bind beside the old one during an upgrade), IP_TRANSPARENT on the inbound listeners (TPROXY
capture) and for dialling the pod from the client's IP.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ambient_fast import _native, netns
from ambient_fast.cni.ebpf.listeners import ListenerMap
from ambient_fast.cni.ebpf.programs import ListenerRole
from ambient_fast.hbone.client import HboneClient
from ambient_fast.ztunnel.dns.server import DnsSockets, open_dns_sockets
from ambient_fast.ztunnel.proxy import ProxySockets
from ambient_fast.ztunnel.sockets import (
    PROXY_MARK,
    UpstreamDialer,
    listening_socket_everywhere,
    set_mark,
    set_transparent,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# The process's own namespace (as ztunnel's InpodNetns::current).
OWN_NETNS = "/proc/self/ns/net"


def _inside(netns_fd: int, make: Callable[[], T]) -> T:
    try:
        with netns.entered(netns_fd):
            return make()
    finally:
        os.close(netns_fd)


class NetnsThread:
    """The one thread that enters pods' namespaces, one call at a time."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ztunnel-netns")

    async def run(self, netns_fd: int, make: Callable[[], T]) -> T:
        """`make()` with the helper thread inside the namespace open at `netns_fd`. The thread
        uses its own duplicate: a caller cancelled meanwhile may close `netns_fd` at once."""
        own = os.dup(netns_fd)
        try:
            work = self._executor.submit(_inside, own, make)
        except BaseException:
            os.close(own)
            raise
        try:
            return await asyncio.wrap_future(work)
        finally:
            if work.cancelled():  # it never ran, so the thread never took `own` over
                os.close(own)

    async def check_capable(self) -> None:
        """Raises PermissionError unless this process may enter namespaces (CAP_SYS_ADMIN) and
        mark sockets (CAP_NET_ADMIN), as ztunnel checks before serving pods."""
        own = os.open(OWN_NETNS, os.O_RDONLY | os.O_CLOEXEC)
        try:
            await self.run(own, lambda: None)
        finally:
            os.close(own)
        probe = socket.socket()
        try:
            set_mark(probe)
        finally:
            probe.close()

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _register_for_ebpf_capture(
    outbound: socket.socket, hbone: socket.socket, plaintext: socket.socket
) -> None:
    """A pod the node agent captures with eBPF (`cni/ebpf`; the calling thread in its
    namespace) has a listener map: its programs hand connections only to listeners found
    there. They give the outbound listener connections to any address, which it must answer
    from (IP_TRANSPARENT, as the inbound ones have for TPROXY). Other pods: nothing to do."""
    try:
        listener_map = ListenerMap.of_current_netns()
    except OSError as e:  # no BPF, or no right to look: never in the way of iptables capture
        log.warning("in-pod: cannot look for eBPF capture (%s); if the pod is captured that "
                    "way, its connections find no listener", e)  # fmt: skip
        return
    if listener_map is None:
        return
    with listener_map:
        set_transparent(outbound)
        listener_map.register(ListenerRole.OUTBOUND, outbound)
        listener_map.register(ListenerRole.HBONE, hbone)
        listener_map.register(ListenerRole.PLAINTEXT, plaintext)


class PodNamespace:
    """One pod's namespace, open at `fd` (the fd the node agent sent; owned here)."""

    def __init__(self, fd: int, thread: NetnsThread) -> None:
        self.fd = fd
        self._thread = thread

    async def listener(self, port: int, *, transparent: bool) -> socket.socket:
        def listen() -> socket.socket:
            return listening_socket_everywhere(
                port, transparent=transparent, mark=PROXY_MARK, reuse_port=True
            )

        return await self._thread.run(self.fd, listen)

    async def new_socket(
        self, family: socket.AddressFamily, kind: socket.SocketKind = socket.SOCK_STREAM
    ) -> socket.socket:
        return await self._thread.run(self.fd, lambda: socket.socket(family, kind))

    async def dns_sockets(self, port: int) -> DnsSockets:
        """The DNS proxy's localhost listeners in the pod, and upstream sockets from the pod."""

        def listen() -> DnsSockets:
            return open_dns_sockets(port, mark=PROXY_MARK, reuse_port=True)

        sockets = await self._thread.run(self.fd, listen)
        return DnsSockets(sockets.udp, sockets.tcp, new_socket=self.new_socket)

    async def proxy_sockets(
        self,
        outbound_port: int,
        inbound_port: int,
        plaintext_port: int,
        dns_port: int | None = None,
    ) -> ProxySockets:
        """The pod proxy's listeners (DNS's with a `dns_port`), dialers and HBONE pool; all
        or nothing."""
        opened: list[socket.socket] = []
        dns: DnsSockets | None = None
        try:
            for port, transparent in (
                (outbound_port, False),
                (inbound_port, True),
                (plaintext_port, True),
            ):
                opened.append(await self.listener(port, transparent=transparent))
            await self._thread.run(self.fd, lambda: _register_for_ebpf_capture(*opened))
            if dns_port is not None:
                dns = await self.dns_sockets(dns_port)
            pool = _native.HbonePool(mark=PROXY_MARK, netns=self.fd)
        except BaseException:
            for sock in opened:
                sock.close()
            if dns is not None:
                dns.close()
            raise
        outbound, inbound, plaintext = opened
        return ProxySockets(
            outbound=outbound,
            inbound=inbound,
            plaintext=plaintext,
            hbone=HboneClient(pool),
            inbound_dialer=UpstreamDialer(new_socket=self.new_socket),
            outbound_dialer=UpstreamDialer(transparent=False, new_socket=self.new_socket),
            dns=dns,
        )

    def close(self) -> None:
        os.close(self.fd)

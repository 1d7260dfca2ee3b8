"""The HBONE server API: Python decides once per CONNECT, native code pumps the bytes."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ambient_fast import _native
from ambient_fast.hbone.completions import completions
from ambient_fast.hbone.request import (
    STATUS_BAD_REQUEST,
    STATUS_SERVICE_UNAVAILABLE,
    HboneTarget,
    InvalidAuthority,
    parse_authority,
)
from ambient_fast.pumps import CUT_ERROR, PumpCut

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Accept:
    """Tunnel to `upstream` (a connected socket the handler opened: its options are kept)."""

    upstream: socket.socket
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Reject:
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class InboundTunnel:
    """A CONNECT the server received, as the handler sees it."""

    target: HboneTarget
    peer_identity: str
    peer_addr: tuple[str, int]
    local_addr: tuple[str, int]
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


@dataclass(frozen=True, slots=True)
class TunnelResult:
    """How an accepted tunnel ended; also reported, with its bytes, when its task is cut."""

    tunnel: InboundTunnel
    to_upstream: int
    to_peer: int
    error: str | None


Handler = Callable[[InboundTunnel], Awaitable[Accept | Reject]]
ResultCallback = Callable[[TunnelResult], None]


class HboneServer:
    """Serves HBONE on a listening socket until `drain()`; `handler` decides each CONNECT."""

    def __init__(
        self,
        listener: socket.socket,
        certificates: _native.ServerCertificates,
        handler: Handler,
        on_result: ResultCallback | None = None,
        settings: _native.Http2Settings | None = None,
    ) -> None:
        self.address: tuple[str, int] = listener.getsockname()[:2]
        self._native = _native.HboneServer(listener.detach(), certificates, settings)
        self._handler = handler
        self._on_result = on_result
        self._tunnels: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        """Dispatches CONNECTs (each in its own task) until drained and all connections closed."""
        # Not `while not draining`: CONNECTs accepted before the GOAWAY still need an answer.
        # The native side ends the stream of requests once its last connection has closed.
        while True:
            try:
                request: _native.ConnectRequest = await completions().submit(
                    self._native.next_request
                )
            except _native.HboneError:
                return
            task = asyncio.create_task(self._handle(request))
            self._tunnels.add(task)
            task.add_done_callback(self._tunnels.discard)

    def drain(self) -> None:
        """Stops accepting; connections get GOAWAY; open tunnels run to completion."""
        self._native.drain()

    async def wait_closed(self) -> None:
        while self._tunnels:
            await asyncio.wait(set(self._tunnels))

    async def _handle(self, request: _native.ConnectRequest) -> None:
        peer = f"{request.peer_addr[0]}:{request.peer_addr[1]} ({request.peer_identity})"
        try:
            target = parse_authority(request.authority)
        except InvalidAuthority as e:
            log.warning("hbone: %s: %s: %d", peer, e, STATUS_BAD_REQUEST)
            request.reject(STATUS_BAD_REQUEST)
            return
        tunnel = InboundTunnel(
            target,
            request.peer_identity,
            request.peer_addr,
            request.local_addr,
            tuple(request.headers),
        )
        try:
            decision = await self._handler(tunnel)
        except Exception:
            log.exception("hbone: handler failed for %s -> %s", peer, target)
            request.reject(STATUS_SERVICE_UNAVAILABLE)
            return
        if isinstance(decision, Reject):
            log.info("hbone: %s -> %s: %d %s", peer, target, decision.status, decision.reason)
            request.reject(decision.status)
            return
        error: str | None = None
        to_upstream = to_peer = 0
        cut: PumpCut | None = None
        try:
            fd, headers = decision.upstream.detach(), list(decision.headers)
            to_upstream, to_peer = await completions().pump(
                lambda reactor, token: request.accept(reactor, token, fd, headers)
            )
        except _native.HboneError as e:
            error = str(e)
            to_upstream, to_peer = e.counts
            log.info("hbone: %s -> %s: %s", peer, target, error)
        except PumpCut as e:
            cut, error = e, CUT_ERROR
            to_upstream, to_peer = e.counts
        if self._on_result is not None:
            self._on_result(TunnelResult(tunnel, to_upstream, to_peer, error))
        if cut is not None:
            raise cut

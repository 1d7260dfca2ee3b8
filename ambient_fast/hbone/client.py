"""The HBONE client API: open a CONNECT through the pool, then pump a socket through it."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from ambient_fast import _native
from ambient_fast.hbone.completions import completions
from ambient_fast.hbone.request import STATUS_OK


class HboneRejected(_native.HboneError):
    """The peer answered the CONNECT with a non-200 status."""

    def __init__(self, destination: str, authority: str, status: int) -> None:
        super().__init__(f"CONNECT {authority} via {destination}: status {status}")
        self.status = status


@dataclass(frozen=True, slots=True)
class HboneRoute:
    """Where and as whom to tunnel: the pool key plus the CONNECT's authority."""

    destination: str  # "ip:port" of the peer's HBONE listener (15008)
    identity: _native.TlsIdentity
    expected_identities: tuple[str, ...]
    authority: str
    source_ip: str | None = None


@dataclass(frozen=True, slots=True)
class PumpResult:
    sent: int  # local socket -> tunnel
    received: int  # tunnel -> local socket


class Tunnel:
    """An accepted CONNECT stream, ready to carry one socket."""

    def __init__(self, stream: _native.HboneStream) -> None:
        self._stream = stream
        self.headers = stream.headers

    async def pump(self, sock: socket.socket) -> PumpResult:
        """Moves bytes both ways until both directions close; takes over `sock`. Cancelling
        cuts the tunnel: PumpCut carries (sent, received)."""
        fd = sock.detach()
        sent, received = await completions().pump(
            lambda reactor, token: self._stream.pump(reactor, token, fd)
        )
        return PumpResult(sent, received)

    def close(self) -> None:
        """Resets the stream if it was never pumped."""
        self._stream.close()


class HboneClient:
    """Opens HBONE tunnels over one shared connection pool."""

    def __init__(self, pool: _native.HbonePool | None = None) -> None:
        self.pool = pool if pool is not None else _native.HbonePool()

    async def open(self, route: HboneRoute, headers: list[tuple[str, str]]) -> Tunnel:
        """Opens the CONNECT; raises HboneRejected on a non-200 answer, HboneError otherwise."""
        stream: _native.HboneStream = await completions().submit(
            lambda reactor, token: self.pool.connect(
                reactor,
                token,
                route.destination,
                route.identity,
                list(route.expected_identities),
                route.authority,
                headers,
                route.source_ip,
            )
        )
        if stream.status != STATUS_OK:
            stream.close()
            raise HboneRejected(route.destination, route.authority, stream.status)
        return Tunnel(stream)

    async def tunnel(
        self, sock: socket.socket, route: HboneRoute, headers: list[tuple[str, str]]
    ) -> PumpResult:
        """Tunnels `sock` (taken over, even on error) until both directions close."""
        try:
            tunnel = await self.open(route, headers)
        except BaseException:
            sock.close()
            raise
        return await tunnel.pump(sock)

    def connection_count(self) -> int:
        return self.pool.connection_count()

    def close(self) -> None:
        self.pool.close()

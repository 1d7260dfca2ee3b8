"""The outbound listener (15001): captured pod egress, routed as `routing.route_outbound` says.

Per connection: the original destination (SO_ORIGINAL_DST, or an injected resolver), the source
workload by the client's IP, then one route. HBONE and WAYPOINT routes tunnel through the shared
`HboneClient` pool with the source identity's certificate; DIRECT_TCP and PASSTHROUGH dial the
target with the proxy mark (so the redirect rules let the socket out) and splice; ERROR resets
the client. Every connection that gets a route counts in istio_tcp_* (reporter `source`) and
writes one `connection complete` line; refusals write `connection failed` (ztunnel's
log_early_deny), as istio/ztunnel src/proxy/outbound.rs does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Protocol

from ambient_fast import _native
from ambient_fast.hbone.client import HboneClient, HboneRoute
from ambient_fast.identity.certificate import VerifiedCertificate
from ambient_fast.identity.spiffe import Identity
from ambient_fast.metrics.labels import ConnectionLabels, Reporter, ResponseFlag
from ambient_fast.metrics.traffic import ConnectionMetrics
from ambient_fast.pumps import PumpCut
from ambient_fast.splice import RelayError, SpliceRelay
from ambient_fast.state import StateStore, Workload
from ambient_fast.state.model import DEFAULT_HBONE_PORT, IpAddress
from ambient_fast.ztunnel.accesslog import AccessLog, ConnectionLog, connection_failed
from ambient_fast.ztunnel.connections import ConnectionEntry, ConnectionProtocol, OpenConnections
from ambient_fast.ztunnel.routing import (
    PROXY_PORTS,
    OutboundRoute,
    RandomSource,
    RouteError,
    RouteKind,
    SocketAddress,
    route_outbound,
)
from ambient_fast.ztunnel.sockets import (
    UpstreamDialer,
    original_destination,
    set_stream_options,
)

log = logging.getLogger(__name__)

_LINGER_RESET = struct.pack("ii", 1, 0)

# Where a captured connection was going; an address tuple as sockets give them.
DestinationResolver = Callable[[socket.socket], tuple[str, int]]
# Whose connection it is: the source workload for a client address (None: unknown).
SourceResolver = Callable[[SocketAddress], Workload | None]


def reset(sock: socket.socket) -> None:
    """Closes with an RST (SO_LINGER 0), as ztunnel drops a refused connection."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


class CertificateSource(Protocol):
    """Where the source identity's certificate comes from (`CertificateManager`: RealTime)."""

    async def certificate(self, identity: Identity) -> VerifiedCertificate: ...


@dataclass(frozen=True, slots=True)
class OutboundSettings:
    network: str = ""  # the node's network: workloads and VIPs are looked up on it
    proxy_ips: tuple[IpAddress, ...] = ()  # the proxy's own addresses (loop check)
    proxy_ports: frozenset[int] = PROXY_PORTS  # plus the listener's own port, always
    hbone_port: int = DEFAULT_HBONE_PORT  # where peers serve HBONE
    # A client that is no known workload: passthrough (node proxy), or refused (in-pod: the
    # pod's own workload is not known yet, and nothing leaves the pod without its identity).
    passthrough_unknown_sources: bool = True


class OutboundProxy:
    """Serves one outbound listener until `drain`; each connection runs in its own task."""

    def __init__(
        self,
        listener: socket.socket,
        store: StateStore,
        certificates: CertificateSource,
        hbone: HboneClient,
        relay: SpliceRelay,
        metrics: ConnectionMetrics,
        access_log: AccessLog,
        *,
        settings: OutboundSettings | None = None,
        dialer: UpstreamDialer | None = None,
        destination_of: DestinationResolver = original_destination,
        source_of: SourceResolver | None = None,
        rng: RandomSource | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        listener.setblocking(False)
        self.address: tuple[str, int] = listener.getsockname()[:2]
        self._listener = listener
        self._store = store
        self._certificates = certificates
        self._hbone = hbone
        self._relay = relay
        self._metrics = metrics
        self._access_log = access_log
        self._settings = settings or OutboundSettings()
        # Marked, TCP_NODELAY, keepalive, 10 s timeout; outbound keeps the proxy's own source.
        self._dialer = dialer if dialer is not None else UpstreamDialer(transparent=False)
        self._proxy_ports: Collection[int] = self._settings.proxy_ports | {self.address[1]}
        self._destination_of = destination_of
        self._source_of: SourceResolver = source_of or (
            lambda client: store.workload_by_ip(self._settings.network, client.ip)
        )
        self._rng: RandomSource = rng if rng is not None else random.Random()
        self._clock = clock
        self._connections: set[asyncio.Task[None]] = set()
        self._accepting: asyncio.Task[None] | None = None
        self._draining = False
        self.open = OpenConnections()  # for /config_dump

    @property
    def listening(self) -> bool:
        return self._listener.fileno() != -1

    def active(self) -> int:
        """Connections being handled (routed, dialled or relayed)."""
        return len(self._connections)

    async def serve(self) -> None:
        """Accepts until `drain`; returns once the listener is closed."""
        self._accepting = asyncio.current_task()
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    sock, peer = await loop.sock_accept(self._listener)
                except OSError as e:
                    # EMFILE and friends: the connections we have keep working.
                    log.warning("outbound: accept on %s failed: %s", self.address, e)
                    await asyncio.sleep(0.1)
                    continue
                task = loop.create_task(self._handle(sock, peer))
                self._connections.add(task)
                task.add_done_callback(self._connections.discard)
        except asyncio.CancelledError:
            if self._draining:
                return
            raise
        finally:
            self._listener.close()

    async def drain(self, deadline: float) -> int:
        """Stops accepting, lets open connections finish for up to `deadline` seconds, then
        resets the rest; returns how many were cut."""
        self._draining = True
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
        self._listener.close()
        if self._connections:
            await asyncio.wait(set(self._connections), timeout=deadline)
        cut = list(self._connections)
        for task in cut:
            task.cancel()
        await asyncio.gather(*cut, return_exceptions=True)
        if cut:
            log.info("outbound: drain deadline passed, %d connections reset", len(cut))
        return len(cut)

    # -- one connection ------------------------------------------------------------------

    async def _handle(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        try:
            await self._handle_one(sock, peer)
        except Exception:
            # A bug must cost one connection, never the listener or a leaked socket.
            log.exception("outbound: connection from %s failed", peer)
            reset(sock)

    async def _handle_one(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        client = SocketAddress.of(peer[0], peer[1])
        try:
            sock.setblocking(False)
            set_stream_options(sock)
            target = SocketAddress.of(*self._destination_of(sock)[:2])
        except OSError as e:
            log.warning("outbound: %s: no original destination: %s", client, e)
            reset(sock)
            return
        source = self._source_of(client)
        route = self._route(source, client, target)
        if route.kind is RouteKind.ERROR:
            error = route.error.value if route.error is not None else route.reason
            self._access_log.emit(
                connection_failed(str(client), str(target), Reporter.SOURCE, error)
            )
            log.info("outbound: %s -> %s refused: %s", client, target, route.reason)
            reset(sock)
            return
        await self._proxy(sock, client, source, route)

    def _route(
        self, source: Workload | None, client: SocketAddress, target: SocketAddress
    ) -> OutboundRoute:
        s = self._settings
        if source is not None:
            return route_outbound(
                self._store,
                source,
                (target.ip, target.port),
                s.network,
                client=(client.ip, client.port),
                proxy_ips=s.proxy_ips,
                proxy_ports=self._proxy_ports,
                hbone_port=s.hbone_port,
                rng=self._rng,
            )
        # Not a workload we know: a plain TCP client of this node. It has no identity, so
        # nothing in the mesh is reached on its behalf: passthrough only, as without a mesh
        # (ztunnel's shared mode drops it as an unknown source).
        if not s.passthrough_unknown_sources:
            return OutboundRoute(
                RouteKind.ERROR, target, reason=f"{client}: source workload unknown"
            )
        if target.port in self._proxy_ports and (target.ip.is_loopback or target.ip in s.proxy_ips):
            return OutboundRoute(
                RouteKind.ERROR,
                target,
                error=RouteError.LOOP,
                reason=f"{target} is the proxy's own listener",
            )
        log.info("outbound: %s is no known workload: passthrough to %s", client, target)
        return OutboundRoute(
            RouteKind.PASSTHROUGH, target, dial=target, reason="unknown source: passthrough"
        )

    async def _proxy(
        self,
        sock: socket.socket,
        client: SocketAddress,
        source: Workload | None,
        route: OutboundRoute,
    ) -> None:
        assert route.dial is not None  # every route but ERROR has one
        started = self._clock()
        labels = ConnectionLabels.build(
            Reporter.SOURCE,
            source,
            source.identity if source is not None and route.tunnelled else None,
            route.destination_workload,
            route.destination_service,
            route.tunnelled,
        )
        entry = ConnectionLog.of(
            labels,
            src_addr=str(client),
            dst_addr=str(route.dial),
            hbone_addr=route.authority if route.tunnelled else None,
            source=source,
            destination=route.destination_workload,
        )
        conn = self._metrics.open(labels)
        self._access_log.emit(entry.opened())
        protocol = ConnectionProtocol.HBONE if route.tunnelled else ConnectionProtocol.TCP
        key = object()
        # The access log's addresses, already formatted once for this connection.
        tracked = ConnectionEntry(
            entry.src_addr, str(route.original_destination), entry.dst_addr, protocol
        )
        self.open.add(key, tracked)
        to_upstream = to_downstream = 0
        error: str | None = None
        flag = ResponseFlag.NONE
        try:
            if route.tunnelled:
                assert source is not None  # unknown sources only pass through
                to_upstream, to_downstream = await self._tunnel(sock, source, route)
            else:
                to_upstream, to_downstream = await self._splice(sock, route.dial)
        except _UpstreamFailed as e:
            error, flag = str(e), ResponseFlag.CONNECT
        except (RelayError, _native.HboneError) as e:
            # The pump failed (a reset) after moving these.
            to_upstream, to_downstream = e.counts
            error = str(e)
        except OSError as e:
            error = str(e)
        except asyncio.CancelledError as e:
            # A cut pump (drain deadline) reports what it moved; an earlier cancel moved nothing.
            if isinstance(e, PumpCut):
                to_upstream, to_downstream = e.counts
            error = "drained"
            raise
        finally:
            self.open.remove(key)
            self._metrics.close(
                conn, to_upstream=to_upstream, to_downstream=to_downstream, flag=flag
            )
            self._access_log.emit(
                entry.complete(
                    to_upstream=to_upstream,
                    to_downstream=to_downstream,
                    duration=self._clock() - started,
                    error=error,
                )
            )

    async def _splice(self, sock: socket.socket, target: SocketAddress) -> tuple[int, int]:
        try:
            upstream = await self._dialer.connect((str(target.ip), target.port))
        except BaseException as e:
            reset(sock)
            if isinstance(e, OSError | TimeoutError):
                raise _UpstreamFailed(str(e)) from e
            raise
        result = await self._relay.relay(sock, upstream)
        return result.a_to_b, result.b_to_a

    async def _tunnel(
        self, sock: socket.socket, source: Workload, route: OutboundRoute
    ) -> tuple[int, int]:
        assert route.dial is not None and route.authority is not None
        try:
            certificate = await self._certificates.certificate(source.identity)
            hbone = HboneRoute(
                str(route.dial),
                certificate.tls_identity,
                route.expected_identities,
                route.authority,
            )
            tunnel = await self._hbone.open(hbone, list(route.headers))
        except BaseException as e:
            reset(sock)
            if isinstance(e, Exception):
                raise _UpstreamFailed(f"{route.kind.value} via {route.dial}: {e}") from e
            raise
        result = await tunnel.pump(sock)
        return result.sent, result.received


class _UpstreamFailed(Exception):
    """No upstream connection (dial, certificate, TLS or CONNECT): response flag CONNECT."""

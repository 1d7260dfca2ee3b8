"""Inbound HBONE (15008): decide each CONNECT, open the upstream socket, let native code pump.

`InboundServer` owns an `HboneServer`. Per CONNECT: `decide_inbound` with the local address the
client dialled and the peer's identity; on Accepted an upstream socket to the workload (mark
0x539, the client's IP as source, a PROXY v2 header for a PROXY application tunnel); metrics
(reporter destination) and one access-log line per connection. The server presents each local
workload's certificate, chosen by the destination IP and prefetched (Warmup) as workloads appear:
nothing can be fetched inside a TLS handshake. `LiveConnections` re-checks open connections on
every policy change and cancels the now-denied ones (cancelling the task cuts the native pump,
which still reports the bytes it moved).
Follows istio/ztunnel src/proxy/inbound.rs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

from ambient_fast import _native
from ambient_fast.hbone.headers import Baggage
from ambient_fast.hbone.request import STATUS_SERVICE_UNAVAILABLE
from ambient_fast.hbone.server import Accept, HboneServer, InboundTunnel, Reject, TunnelResult
from ambient_fast.identity.certificate import VerifiedCertificate
from ambient_fast.identity.manager import CertificateManager
from ambient_fast.identity.schedule import Priority
from ambient_fast.identity.spiffe import Identity, InvalidIdentity
from ambient_fast.metrics import (
    ConnectionLabels,
    Metrics,
    OpenConnection,
    PeerBaggage,
    Reporter,
    ResponseFlag,
)
from ambient_fast.pumps import CUT_ERROR
from ambient_fast.state import StateChange, StateStore, Workload
from ambient_fast.ztunnel.accesslog import (
    AccessLog,
    ConnectionLog,
    connection_failed,
    socket_address,
)
from ambient_fast.ztunnel.connections import ConnectionEntry, ConnectionProtocol
from ambient_fast.ztunnel.inbound_decision import (
    Accepted,
    Rejected,
    decide_inbound,
    needs_recheck,
    recheck,
)
from ambient_fast.ztunnel.routing import PROXY_PORTS, SocketAddress
from ambient_fast.ztunnel.sockets import UpstreamDialer

log = logging.getLogger(__name__)

# PROXY protocol v2 (haproxy's proxy-protocol.txt): signature, v2 + PROXY, TCP over v4/v6.
_PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_PROXY_V2_PROXY = 0x21
_TCP4, _TCP6 = 0x11, 0x21
# ztunnel's TLV with the peer's SPIFFE id (src/proxy/inbound.rs PROXY_PROTOCOL_AUTHORITY_TLV).
PROXY_TLV_PEER_IDENTITY = 0xD0


def proxy_v2_header(
    source: SocketAddress, destination: SocketAddress, identity: str | None
) -> bytes:
    """A PROXY v2 header: source = the client, destination = the HBONE target, TLV 0xD0 = the
    client's SPIFFE id. Mixed families are written as IPv6 (v4-mapped)."""
    src, dst = source.ip, destination.ip
    if src.version == 4 and dst.version == 4:
        family, addresses = _TCP4, src.packed + dst.packed
    else:
        family = _TCP6
        addresses = b"".join(
            (ipaddress.IPv6Address(f"::ffff:{ip}") if ip.version == 4 else ip).packed
            for ip in (src, dst)
        )
    body = addresses + struct.pack("!HH", source.port, destination.port)
    if identity:
        value = identity.encode()
        body += struct.pack("!BH", PROXY_TLV_PEER_IDENTITY, len(value)) + value
    return _PROXY_V2_SIGNATURE + struct.pack("!BBH", _PROXY_V2_PROXY, family, len(body)) + body


def policy_error(reason: str) -> str:
    """The access log's error for a policy refusal (ztunnel: "... policy rejection: ...")."""
    return f"connection closed due to policy rejection: {reason}"


@dataclass(eq=False)
class TrackedConnection:
    """One accepted connection from open to close: its metrics series, log fields, and the
    decision to re-check. `finish` counts the close once."""

    metrics: Metrics
    access_log: AccessLog
    labels: ConnectionLabels
    record: ConnectionLog
    accepted: Accepted
    started: float = field(default_factory=time.monotonic)
    denied: str | None = None  # set when a policy change closed it
    opened: OpenConnection | None = None

    def __post_init__(self) -> None:
        self.opened = self.metrics.connections.open(self.labels)
        self.access_log.emit(self.record.opened())

    def finish(self, to_upstream: int, to_downstream: int, error: str | None = None) -> None:
        assert self.opened is not None
        flag = ResponseFlag.NONE
        if self.denied is not None:
            flag, error = ResponseFlag.DENY, policy_error(self.denied)
        if not self.metrics.connections.close(
            self.opened, to_upstream=to_upstream, to_downstream=to_downstream, flag=flag
        ):
            return
        self.access_log.emit(
            self.record.complete(
                to_upstream=to_upstream,
                to_downstream=to_downstream,
                duration=time.monotonic() - self.started,
                error=error,
            )
        )


def record_refusal(
    metrics: Metrics,
    access_log: AccessLog,
    labels: ConnectionLabels,
    record: ConnectionLog,
    flag: ResponseFlag,
    error: str,
) -> None:
    """A connection refused after its labels were known (policy, upstream connect): opened and
    closed with `flag`, one `connection complete` line with the error (as ztunnel)."""
    opened = metrics.connections.open(labels)
    metrics.connections.close(opened, to_upstream=0, to_downstream=0, flag=flag)
    access_log.emit(record.complete(to_upstream=0, to_downstream=0, duration=0.0, error=error))


class LiveConnections:
    """Open inbound connections by the task that serves them; a store change re-checks those it
    can affect and cancels the ones policy now denies. `dump` lists them for /config_dump."""

    def __init__(self, store: StateStore, protocol: ConnectionProtocol) -> None:
        self._store = store
        self._protocol = protocol
        self._live: dict[asyncio.Task[Any], TrackedConnection] = {}
        self._unsubscribe = store.subscribe(self._on_change)

    def __len__(self) -> int:
        return len(self._live)

    def add(self, task: asyncio.Task[Any], connection: TrackedConnection) -> None:
        """Tracks `connection` until `task` ends. A pump that is cut reports its bytes itself;
        a task cancelled without that report is finished with none."""
        self._live[task] = connection

        def ended(done: asyncio.Task[Any]) -> None:
            gone = self._live.pop(done, None)
            if gone is not None:
                gone.finish(0, 0, CUT_ERROR if done.cancelled() else None)

        task.add_done_callback(ended)

    def tasks(self) -> list[asyncio.Task[Any]]:
        return list(self._live)

    def dump(self) -> list[dict[str, str | None]]:
        return [
            ConnectionEntry(
                c.record.src_addr,
                c.accepted.service.hostname if c.accepted.service is not None else None,
                str(c.accepted.target),
                self._protocol,
            ).dump()
            for c in self._live.values()
        ]

    def pop(self, task: asyncio.Task[Any] | None) -> TrackedConnection | None:
        return self._live.pop(task, None) if task is not None else None

    def close(self) -> None:
        self._unsubscribe()

    def _on_change(self, change: StateChange) -> None:
        for task, connection in list(self._live.items()):
            if connection.denied is not None or not needs_recheck(change, connection.accepted):
                continue
            decision = recheck(self._store, connection.accepted)
            if isinstance(decision, Rejected):
                log.info(
                    "inbound: closing %s -> %s: %s",
                    connection.record.src_addr,
                    connection.accepted.target,
                    decision.reason,
                )
                connection.denied = decision.reason
                task.cancel()
            else:
                connection.accepted = decision


class ServedCertificates:
    """Which certificate the HBONE server presents on each local workload IP: the workload's
    own, prefetched (Warmup) when it appears and replaced as the manager rotates it."""

    def __init__(
        self, store: StateStore, manager: CertificateManager, local: Container[str]
    ) -> None:
        self.native = _native.ServerCertificates()
        self._store = store
        self._manager = manager
        self._local = local
        self._by_uid: dict[str, tuple[Identity, tuple[str, ...]]] = {}
        self._served: dict[str, Identity] = {}  # ip -> identity whose certificate it serves
        self._unsubscribe = (
            store.subscribe(self._on_change),
            manager.subscribe(self._on_certificate),
        )
        for workload in store.workloads():
            self.update(workload.uid)

    def ips(self) -> set[str]:
        """IPs with a certificate installed."""
        return set(self._served)

    def update(self, uid: str) -> None:
        """Re-reads one workload (call it when the set of local workloads changes)."""
        workload = self._store.workload_by_uid(uid)
        old = self._by_uid.pop(uid, None)
        if old is not None:
            for ip in old[1]:
                self._served.pop(ip, None)
                self.native.remove(ip)
        if workload is None or workload.uid not in self._local:
            return
        self._add(workload)

    def _add(self, workload: Workload) -> None:
        identity = workload.identity
        ips = tuple(str(ip) for ip in workload.ips)
        self._by_uid[workload.uid] = (identity, ips)
        current = self._manager.current(identity)
        if current is None:
            self._manager.request(identity, Priority.WARMUP)
            return
        for ip in ips:
            self._install(ip, identity, current)

    def _install(self, ip: str, identity: Identity, certificate: VerifiedCertificate) -> None:
        self.native.set(ip, certificate.tls_identity)
        self._served[ip] = identity

    def _on_change(self, change: StateChange) -> None:
        for uid in change.workloads:
            self.update(uid)

    def _on_certificate(self, identity: Identity, certificate: VerifiedCertificate | None) -> None:
        for owner, ips in list(self._by_uid.values()):
            if owner != identity:
                continue
            for ip in ips:
                if certificate is not None:
                    self._install(ip, identity, certificate)
                elif self._served.pop(ip, None) is not None:
                    self.native.remove(ip)

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()


class InboundServer:
    """The node proxy's HBONE listener for the workloads in `local` (uids; a live container the
    caller may change, then calling `certificates.update(uid)`)."""

    def __init__(
        self,
        listener: socket.socket,
        store: StateStore,
        certificates: CertificateManager,
        local: Container[str],
        metrics: Metrics,
        *,
        access_log: AccessLog | None = None,
        dialer: UpstreamDialer | None = None,
        network: str = "",
        proxy_ports: Container[int] = PROXY_PORTS,
        settings: _native.Http2Settings | None = None,
    ) -> None:
        self._store = store
        self._local = local
        self._metrics = metrics
        self._log = access_log or AccessLog()
        self._dialer = dialer or UpstreamDialer()
        self._network = network
        self._proxy_ports = proxy_ports
        self.certificates = ServedCertificates(store, certificates, local)
        self.live = LiveConnections(store, ConnectionProtocol.HBONE)
        self._server = HboneServer(
            listener, self.certificates.native, self._handle, self._on_result, settings
        )
        self.address = self._server.address
        self._serving: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._serving = asyncio.create_task(self._server.serve())

    async def close(self, deadline: float = 10.0) -> None:
        """Drains: no new connections; open ones get `deadline` seconds, then are cancelled."""
        self._server.drain()
        try:
            async with asyncio.timeout(deadline):
                await self._server.wait_closed()
        except TimeoutError:
            tasks = self.live.tasks()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._serving is not None:
            self._serving.cancel()
            await asyncio.gather(self._serving, return_exceptions=True)
        self.live.close()
        self.certificates.close()

    def _labels(self, tunnel: InboundTunnel, accepted: Accepted | None) -> ConnectionLabels:
        source = self._store.workload_by_ip(self._network, tunnel.peer_addr[0])
        try:
            identity: Identity | None = Identity.parse(tunnel.peer_identity)
        except InvalidIdentity:
            identity = None
        baggage_header = tunnel.header("baggage")
        baggage = None
        if baggage_header is not None:
            b = Baggage.decode(baggage_header)
            baggage = PeerBaggage(b.workload_name, b.namespace, b.service_version, b.cluster)
        return ConnectionLabels.build(
            Reporter.DESTINATION,
            source,
            identity,
            accepted.workload if accepted is not None else self._dialled(tunnel),
            accepted.service if accepted is not None else None,
            True,
            baggage=baggage,
        )

    def _record(
        self, tunnel: InboundTunnel, labels: ConnectionLabels, accepted: Accepted | None
    ) -> ConnectionLog:
        return ConnectionLog.of(
            labels,
            src_addr=socket_address(*tunnel.peer_addr),
            dst_addr=socket_address(*tunnel.local_addr),
            hbone_addr=str(tunnel.target),
            source=self._store.workload_by_ip(self._network, tunnel.peer_addr[0]),
            destination=accepted.workload if accepted is not None else self._dialled(tunnel),
        )

    def _dialled(self, tunnel: InboundTunnel) -> Workload | None:
        """The workload at the address the client dialled (labels of a refused connection)."""
        return self._store.workload_by_ip(self._network, tunnel.local_addr[0])

    async def _handle(self, tunnel: InboundTunnel) -> Accept | Reject:
        decision = decide_inbound(
            self._store,
            self._local,
            str(tunnel.target),
            tunnel.local_addr[0],
            tunnel.peer_identity,
            tunnel.peer_addr[0],
            network=self._network,
            proxy_ports=self._proxy_ports,
        )
        if isinstance(decision, Rejected):
            if decision.decision is not None:  # policy: the labels are known, count it
                labels = self._labels(tunnel, None)
                record = self._record(tunnel, labels, None)
                record_refusal(
                    self._metrics,
                    self._log,
                    labels,
                    record,
                    ResponseFlag.DENY,
                    policy_error(decision.reason),
                )
            else:
                self._log.emit(
                    connection_failed(
                        socket_address(*tunnel.peer_addr),
                        socket_address(*tunnel.local_addr),
                        Reporter.DESTINATION,
                        decision.reason,
                    )
                )
            return Reject(decision.status, decision.reason)
        labels = self._labels(tunnel, decision)
        record = self._record(tunnel, labels, decision)
        target = (str(decision.target.ip), decision.target.port)
        try:
            upstream = await self._dialer.connect(target, tunnel.peer_addr[0])
        except (OSError, TimeoutError) as e:
            record_refusal(self._metrics, self._log, labels, record, ResponseFlag.CONNECT, str(e))
            return Reject(STATUS_SERVICE_UNAVAILABLE, f"upstream {e}")
        if decision.proxy_protocol_target is not None:
            header = proxy_v2_header(
                SocketAddress.of(*tunnel.peer_addr),
                decision.proxy_protocol_target,
                tunnel.peer_identity,
            )
            try:
                await asyncio.get_running_loop().sock_sendall(upstream, header)
            except OSError as e:
                upstream.close()
                error = f"PROXY header to {decision.target}: {e}"
                record_refusal(
                    self._metrics, self._log, labels, record, ResponseFlag.CONNECT, error
                )
                return Reject(STATUS_SERVICE_UNAVAILABLE, error)
        task = asyncio.current_task()
        assert task is not None
        # The HBONE server awaits the pump in this same task; cancelling it cuts the pump, whose
        # bytes still arrive through _on_result.
        self.live.add(task, TrackedConnection(self._metrics, self._log, labels, record, decision))
        return Accept(upstream)

    def _on_result(self, result: TunnelResult) -> None:
        connection = self.live.pop(asyncio.current_task())
        if connection is not None:
            connection.finish(result.to_upstream, result.to_peer, result.error)

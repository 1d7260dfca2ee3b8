"""One proxy's listeners, as istio/ztunnel's ProxyFactory builds them: outbound (15001),
inbound HBONE (15008), inbound plaintext (15006), serving a set of local workloads, and the DNS
proxy (localhost:15053) when it is on.

Dedicated mode runs one `WorkloadProxy` on the node's own sockets; in-pod mode runs one per pod,
on sockets opened inside the pod's network namespace (`ztunnel/pod_netns.py`). What all proxies
of a process share (state, certificates, metrics, access log, splice engine) is the
`ProxyContext`; what is a proxy's own (listeners, dialers, HBONE pool) is its `ProxySockets`.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Collection
from dataclasses import dataclass

from ambient_fast.hbone.client import HboneClient
from ambient_fast.identity.manager import CertificateManager
from ambient_fast.metrics import Metrics
from ambient_fast.splice import SpliceRelay
from ambient_fast.state import StateStore, Workload
from ambient_fast.state.model import IpAddress
from ambient_fast.ztunnel.accesslog import AccessLog
from ambient_fast.ztunnel.dns.forwarder import Forwarder, ResolvConf
from ambient_fast.ztunnel.dns.resolver import DnsResolver
from ambient_fast.ztunnel.dns.server import DnsHandler, DnsServer, DnsSockets
from ambient_fast.ztunnel.inbound import InboundServer
from ambient_fast.ztunnel.inbound_passthrough import InboundPlaintextServer
from ambient_fast.ztunnel.outbound import OutboundProxy, OutboundSettings, SourceResolver
from ambient_fast.ztunnel.sockets import UpstreamDialer


@dataclass(frozen=True, slots=True)
class DnsContext:
    """What every proxy's DNS server shares: the mesh's answers and the upstreams."""

    resolver: DnsResolver
    upstream: ResolvConf
    port: int


@dataclass(frozen=True, slots=True)
class ProxyContext:
    store: StateStore
    certificates: CertificateManager
    metrics: Metrics
    access_log: AccessLog
    relay: SpliceRelay
    network: str
    ports: frozenset[int]  # the proxy's own listener ports (loops are refused)
    dns: DnsContext | None = None  # None: the DNS proxy is off


@dataclass(frozen=True, slots=True)
class ProxySockets:
    """A proxy's listeners and the ways it opens connections; the proxy owns them."""

    outbound: socket.socket
    inbound: socket.socket
    plaintext: socket.socket
    hbone: HboneClient
    inbound_dialer: UpstreamDialer  # to the local workload, from the client's IP
    outbound_dialer: UpstreamDialer  # direct and passthrough, from the proxy's own address
    dns: DnsSockets | None = None  # the DNS proxy's listeners, when it is on

    def close(self) -> None:
        """For sockets no proxy took over."""
        for listener in (self.outbound, self.inbound, self.plaintext):
            listener.close()
        if self.dns is not None:
            self.dns.close()
        self.hbone.close()


class WorkloadProxy:
    """Serves the workloads in `local` (uids; a live container the caller keeps current) until
    `drain`. `source_of` picks the outbound source workload (default: by the client's IP);
    `passthrough_unknown_sources` False refuses clients that are no known workload."""

    def __init__(
        self,
        context: ProxyContext,
        sockets: ProxySockets,
        local: Collection[str],
        *,
        proxy_ips: tuple[IpAddress, ...] = (),
        source_of: SourceResolver | None = None,
        passthrough_unknown_sources: bool = True,
    ) -> None:
        self._hbone = sockets.hbone
        self.inbound = InboundServer(
            sockets.inbound,
            context.store,
            context.certificates,
            local,
            context.metrics,
            access_log=context.access_log,
            dialer=sockets.inbound_dialer,
            network=context.network,
            proxy_ports=context.ports,
        )
        self.plaintext = InboundPlaintextServer(
            sockets.plaintext,
            context.store,
            local,
            context.metrics,
            context.relay,
            access_log=context.access_log,
            dialer=sockets.inbound_dialer,
            network=context.network,
            proxy_ports=context.ports,
        )
        self.outbound = OutboundProxy(
            sockets.outbound,
            context.store,
            context.certificates,
            sockets.hbone,
            context.relay,
            context.metrics.connections,
            context.access_log,
            settings=OutboundSettings(
                network=context.network,
                proxy_ips=proxy_ips,
                proxy_ports=context.ports,
                passthrough_unknown_sources=passthrough_unknown_sources,
            ),
            dialer=sockets.outbound_dialer,
            source_of=source_of,
        )
        self.dns: DnsServer | None = None
        if context.dns is not None and sockets.dns is not None:
            forwarder = Forwarder(context.dns.upstream, new_socket=sockets.dns.new_socket)

            # The DNS client is the proxy's own workload, whatever the query's source (ztunnel's
            # local workload: the pod in in-pod mode, PROXY_WORKLOAD_INFO's in dedicated mode).
            def own_workload() -> Workload | None:
                return next(
                    (w for uid in local if (w := context.store.workload_by_uid(uid)) is not None),
                    None,
                )

            handler = DnsHandler(context.dns.resolver, forwarder, own_workload, context.metrics.dns)
            self.dns = DnsServer(sockets.dns, handler)
        elif sockets.dns is not None:
            sockets.dns.close()
        self._sockets = sockets
        self._serving: asyncio.Task[None] | None = None
        self._drained = False

    def connections(self) -> dict[str, list[dict[str, str | None]]]:
        """ztunnel's connection manager dump: open inbound (15008 and 15006) and outbound."""
        return {
            "inbound": self.inbound.live.dump() + self.plaintext.live.dump(),
            "outbound": self.outbound.open.dump(),
        }

    async def start(self) -> None:
        """Serves from here on; if the DNS server cannot start, every socket is closed and
        the proxy is done."""
        if self.dns is not None:
            try:
                await self.dns.start()
            except BaseException:
                self._drained = True
                self._sockets.close()
                raise
        self.inbound.start()
        self.plaintext.start()
        self._serving = asyncio.create_task(self.outbound.serve())

    async def drain(self, deadline: float) -> None:
        """Stops accepting; open connections get `deadline` seconds (0: cut now), then the
        listeners, connections and the HBONE pool are closed. Later calls do nothing."""
        if self._drained:
            return
        self._drained = True
        await asyncio.gather(
            self.outbound.drain(deadline),
            self.inbound.close(deadline),
            self.plaintext.close(deadline),
            *([self.dns.close(deadline)] if self.dns is not None else []),
            return_exceptions=True,
        )
        if self._serving is not None:
            await asyncio.gather(self._serving, return_exceptions=True)
        self._hbone.close()

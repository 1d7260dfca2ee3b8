"""Inbound plaintext (15006): connections captured on their way into a local pod, no mTLS.

`InboundPlaintextServer` accepts, reads the original destination (SO_ORIGINAL_DST, or the local
address of a TPROXY'd or not redirected socket), runs `decide_plaintext` (policy with no peer
identity: anything requiring one refuses it), connects to the pod from the client's IP (mark
0x539) and hands both sockets to the splice engine. Metrics and the access log as on 15008,
with connection_security_policy `unknown`. Follows istio/ztunnel
src/proxy/inbound_passthrough.rs.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Container

from ambient_fast.metrics import ConnectionLabels, Metrics, Reporter, ResponseFlag
from ambient_fast.pumps import CUT_ERROR, PumpCut
from ambient_fast.splice import RelayError, SpliceRelay
from ambient_fast.state import StateStore, Workload
from ambient_fast.ztunnel.accesslog import (
    AccessLog,
    ConnectionLog,
    connection_failed,
    socket_address,
)
from ambient_fast.ztunnel.connections import ConnectionProtocol
from ambient_fast.ztunnel.inbound import (
    LiveConnections,
    TrackedConnection,
    policy_error,
    record_refusal,
)
from ambient_fast.ztunnel.inbound_decision import Accepted, Rejected, decide_plaintext
from ambient_fast.ztunnel.routing import PROXY_PORTS, canonical_ip
from ambient_fast.ztunnel.sockets import UpstreamDialer, original_destination, set_stream_options

log = logging.getLogger(__name__)


class InboundPlaintextServer:
    """Serves a (transparent) listener for the workloads in `local` (uids) until `close()`."""

    def __init__(
        self,
        listener: socket.socket,
        store: StateStore,
        local: Container[str],
        metrics: Metrics,
        relay: SpliceRelay,
        *,
        access_log: AccessLog | None = None,
        dialer: UpstreamDialer | None = None,
        network: str = "",
        proxy_ports: Container[int] = PROXY_PORTS,
    ) -> None:
        self._listener = listener
        self._store = store
        self._local = local
        self._metrics = metrics
        self._relay = relay
        self._log = access_log or AccessLog()
        self._dialer = dialer or UpstreamDialer()
        self._network = network
        self._proxy_ports = proxy_ports
        self.address: tuple[str, int] = listener.getsockname()[:2]
        self.live = LiveConnections(store, ConnectionProtocol.TCP)
        self._connections: set[asyncio.Task[None]] = set()
        self._accepting: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._accepting = asyncio.create_task(self._accept_forever())

    async def close(self, deadline: float = 10.0) -> None:
        """Stops accepting; open connections get `deadline` seconds, then are cancelled."""
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
        self._listener.close()
        if self._connections:
            _, pending = await asyncio.wait(set(self._connections), timeout=deadline)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self.live.close()

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, peer = await loop.sock_accept(self._listener)
            except OSError as e:
                # EMFILE and friends: keep serving the connections we have.
                log.warning("inbound plaintext: accept on %s failed: %r", self.address, e)
                await asyncio.sleep(0.1)
                continue
            # A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; the store, policy and
            # the transparent source bind know them as a.b.c.d.
            peer_ip = str(canonical_ip(peer[0]))
            task = asyncio.create_task(self._connection(client, (peer_ip, int(peer[1]))))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    def _labels(self, source: Workload | None, destination: Workload | None) -> ConnectionLabels:
        return ConnectionLabels.build(Reporter.DESTINATION, source, None, destination, None, False)

    async def _connection(self, client: socket.socket, peer: tuple[str, int]) -> None:
        try:
            client.setblocking(False)
            set_stream_options(client)
            dst = original_destination(client)
        except OSError as e:
            log.warning("inbound plaintext: %s: %s", socket_address(*peer), e)
            client.close()
            return
        src_addr, dst_addr = socket_address(*peer), socket_address(*dst)
        decision = decide_plaintext(
            self._store,
            self._local,
            dst,
            peer[0],
            network=self._network,
            proxy_ports=self._proxy_ports,
        )
        source = self._store.workload_by_ip(self._network, peer[0])
        if isinstance(decision, Rejected):
            client.close()
            if decision.decision is None:
                self._log.emit(
                    connection_failed(src_addr, dst_addr, Reporter.DESTINATION, decision.reason)
                )
                return
            destination = self._store.workload_by_ip(self._network, dst[0])
            labels = self._labels(source, destination)
            record = ConnectionLog.of(
                labels, src_addr=src_addr, dst_addr=dst_addr, source=source, destination=destination
            )
            error = policy_error(decision.reason)
            log.info("inbound plaintext: %s -> %s refused: %s", src_addr, dst_addr, decision.reason)
            record_refusal(self._metrics, self._log, labels, record, ResponseFlag.DENY, error)
            return
        await self._forward(client, peer, decision, source, src_addr, dst_addr)

    async def _forward(
        self,
        client: socket.socket,
        peer: tuple[str, int],
        accepted: Accepted,
        source: Workload | None,
        src_addr: str,
        dst_addr: str,
    ) -> None:
        labels = self._labels(source, accepted.workload)
        record = ConnectionLog.of(
            labels,
            src_addr=src_addr,
            dst_addr=dst_addr,
            source=source,
            destination=accepted.workload,
        )
        target = (str(accepted.target.ip), accepted.target.port)
        try:
            upstream = await self._dialer.connect(target, peer[0])
        except (OSError, TimeoutError) as e:
            client.close()
            record_refusal(self._metrics, self._log, labels, record, ResponseFlag.CONNECT, str(e))
            return
        except BaseException:
            client.close()
            raise
        task = asyncio.current_task()
        assert task is not None
        connection = TrackedConnection(self._metrics, self._log, labels, record, accepted)
        self.live.add(task, connection)
        try:
            result = await self._relay.relay(client, upstream)
        except RelayError as e:
            if self.live.pop(task) is not None:
                connection.finish(*e.counts, str(e))
            return
        except OSError as e:
            if self.live.pop(task) is not None:
                connection.finish(0, 0, str(e))
            return
        except PumpCut as cut:
            if self.live.pop(task) is not None:
                connection.finish(*cut.counts, CUT_ERROR)
            raise
        if self.live.pop(task) is not None:
            connection.finish(result.a_to_b, result.b_to_a)

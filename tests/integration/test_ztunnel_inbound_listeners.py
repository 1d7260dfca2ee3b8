"""The node proxy's inbound listeners on loopback: a real HBONE client (MeshCA identity, rustls,
HTTP/2) to InboundServer (15008) and plain TCP to InboundPlaintextServer (15006), with a
StateStore filled through apply() as the xDS client fills it. Runs as root (marks,
IP_TRANSPARENT)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from access_events import AccessEvents
from google.protobuf.empty_pb2 import Empty
from hbone_harness import dial, finish, recv_exactly, recv_to_eof, reset, sendall
from sockets import tcp_pair
from waits import DEADLINE, wait_until

from ambient_fast.hbone import HboneClient, HboneRejected, HboneRoute, TlsIdentity
from ambient_fast.hbone.client import PumpResult
from ambient_fast.identity.ca import MeshCA
from ambient_fast.identity.issuer import SelfSignedCa
from ambient_fast.identity.manager import CertificateManager
from ambient_fast.metrics import Metrics
from ambient_fast.splice import SpliceRelay
from ambient_fast.state import StateStore
from ambient_fast.xds.proto import authorization_pb2 as apb
from ambient_fast.xds.proto import workload_pb2 as wpb
from ambient_fast.xds.resources import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL
from ambient_fast.ztunnel import inbound_passthrough
from ambient_fast.ztunnel.accesslog import ACCESS_LOGGER
from ambient_fast.ztunnel.inbound import PROXY_TLV_PEER_IDENTITY, InboundServer
from ambient_fast.ztunnel.inbound_passthrough import InboundPlaintextServer
from ambient_fast.ztunnel.sockets import (
    PROXY_MARK,
    UpstreamDialer,
    listening_socket,
    original_destination,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="marks and IP_TRANSPARENT need root")

ECHO_IP = "127.0.0.2"  # the local workload
CLIENT_IP = "127.0.0.3"  # a client pod on another node
OTHER_IP = "127.0.0.4"  # a workload whose certificate is served but which is not ours
TUNNEL_IP = "127.0.0.6"  # a local workload behind a PROXY application tunnel
CLIENT_ID = "spiffe://cluster.local/ns/apps/sa/client"
ECHO_ID = "spiffe://cluster.local/ns/apps/sa/echo"
OTHER_ID = "spiffe://cluster.local/ns/apps/sa/other"
TUNNEL_ID = "spiffe://cluster.local/ns/apps/sa/tunnelled"


def uid(name: str) -> str:
    return f"Kubernetes//Pod/apps/{name}"


def pod(name: str, ip: str, proxy_tunnel_port: int | None = None) -> wpb.Address:
    tunnel = None
    if proxy_tunnel_port is not None:
        tunnel = wpb.ApplicationTunnel(protocol=wpb.ApplicationTunnel.PROXY, port=proxy_tunnel_port)
    return wpb.Address(
        workload=wpb.Workload(
            uid=uid(name),
            name=name,
            namespace="apps",
            addresses=[ipaddress.ip_address(ip).packed],
            tunnel_protocol=wpb.HBONE,
            service_account=name,
            status=wpb.HEALTHY,
            canonical_name=name,
            canonical_revision="v1",
            workload_name=name,
            workload_type=wpb.DEPLOYMENT,
            application_tunnel=tunnel,
        )
    )


def apply(store: StateStore, *addresses: wpb.Address) -> None:
    applied = store.apply(ADDRESS_TYPE_URL, {a.workload.uid: a for a in addresses})
    assert not applied.rejected, applied.rejected


def deny_client(name: str = "no-client") -> apb.Authorization:
    return apb.Authorization(
        name=name,
        namespace="apps",
        scope=apb.NAMESPACE,
        action=apb.DENY,
        rules=[
            apb.Rule(
                clauses=[
                    apb.Clause(
                        matches=[apb.Match(principals=[apb.StringMatch(exact=CLIENT_ID[9:])])]
                    )
                ]
            )
        ],
    )


def strict_mtls() -> apb.Authorization:
    """PeerAuthentication STRICT as istiod sends it: DENY when there is no principal."""
    presence = apb.StringMatch(presence=Empty())
    return apb.Authorization(
        name="strict",
        namespace="apps",
        scope=apb.NAMESPACE,
        action=apb.DENY,
        rules=[apb.Rule(clauses=[apb.Clause(matches=[apb.Match(not_principals=[presence])])])],
    )


def set_policies(
    store: StateStore, *policies: apb.Authorization, removed: tuple[str, ...] = ()
) -> None:
    applied = store.apply(
        AUTHORIZATION_TYPE_URL, {f"{p.namespace}/{p.name}": p for p in policies}, removed
    )
    assert not applied.rejected, applied.rejected


@dataclass
class Backend:
    """A loopback echo server that records who connected and what arrived first."""

    listener: socket.socket
    peers: list[tuple[str, int]] = field(default_factory=list)
    prefixes: list[bytes] = field(default_factory=list)
    prefix_len: int = 0

    @property
    def port(self) -> int:
        port: int = self.listener.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def echo_backend(ip: str, prefix_len: int = 0) -> AsyncIterator[Backend]:
    backend = Backend(listening_socket((ip, 0)), prefix_len=prefix_len)
    loop = asyncio.get_running_loop()
    echoes: set[asyncio.Task[None]] = set()

    async def echo(sock: socket.socket) -> None:
        # A connection the proxy cuts is reset on this side too.
        with sock, contextlib.suppress(ConnectionResetError):
            if backend.prefix_len:
                backend.prefixes.append(await recv_exactly(sock, backend.prefix_len))
            while data := await loop.sock_recv(sock, 65536):
                await loop.sock_sendall(sock, data)
            sock.shutdown(socket.SHUT_WR)

    async def accept() -> None:
        while True:
            sock, peer = await loop.sock_accept(backend.listener)
            backend.peers.append(peer[:2])
            sock.setblocking(False)
            task = asyncio.create_task(echo(sock))
            echoes.add(task)
            task.add_done_callback(echoes.discard)

    accepting = asyncio.create_task(accept())
    try:
        yield backend
    finally:
        accepting.cancel()
        for task in list(echoes):
            task.cancel()
        await asyncio.gather(accepting, *echoes, return_exceptions=True)
        backend.listener.close()


@dataclass
class Node:
    ca: MeshCA
    store: StateStore
    local: set[str]
    metrics: Metrics
    server: InboundServer
    backend: Backend
    client: HboneClient
    access: AccessEvents
    cleanup: contextlib.AsyncExitStack

    def route(
        self,
        dst_ip: str = ECHO_IP,
        authority: str | None = None,
        expected: str = ECHO_ID,
    ) -> HboneRoute:
        return HboneRoute(
            f"{dst_ip}:{self.server.address[1]}",
            tls_identity(self.ca, CLIENT_ID),
            (expected,),
            authority or f"{ECHO_IP}:{self.backend.port}",
            source_ip=CLIENT_IP,
        )

    async def open(
        self, route: HboneRoute | None = None
    ) -> tuple[socket.socket, asyncio.Task[PumpResult]]:
        tunnel = await self.client.open(route or self.route(), [])
        app, far = tcp_pair()
        self.cleanup.callback(app.close)
        pumping = asyncio.create_task(tunnel.pump(far))
        self.cleanup.push_async_callback(finish, pumping)
        return app, pumping

    async def open_live(self, moved: int) -> tuple[socket.socket, asyncio.Task[PumpResult]]:
        """A tunnel that has echoed `moved` bytes each way and is live on the server."""
        app, pumping = await self.open()
        payload = os.urandom(moved)
        await sendall(app, payload)
        assert await recv_exactly(app, moved) == payload
        await wait_until(lambda: len(self.server.live) == 1, "the connection to be live")
        return app, pumping

    def counter(self, family: str, **labels: str) -> int:
        metric = getattr(self.metrics.connections, family).to_metric()
        return sum(
            int(s.value)
            for s in metric.samples
            if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items())
        )


def unused_port(ip: str) -> int:
    with socket.socket() as sock:
        sock.bind((ip, 0))
        port: int = sock.getsockname()[1]
        return port


def tls_identity(ca: MeshCA, spiffe_id: str) -> TlsIdentity:
    cert = ca.issue(spiffe_id)
    return TlsIdentity(cert.chain_pem, cert.key_pem, ca.root_pem)


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    ca = MeshCA.create()
    access = AccessEvents()
    access_logger = logging.getLogger(ACCESS_LOGGER)
    access_logger.addHandler(access)
    old_level = access_logger.level
    access_logger.setLevel(logging.DEBUG)
    async with contextlib.AsyncExitStack() as cleanup:
        cleanup.callback(access_logger.setLevel, old_level)
        cleanup.callback(access_logger.removeHandler, access)
        manager = await cleanup.enter_async_context(
            CertificateManager(SelfSignedCa.from_pem(ca.root_pem, ca.key_pem), ca.root_pem)
        )
        backend = await cleanup.enter_async_context(echo_backend(ECHO_IP))
        store = StateStore()
        local = {uid("echo"), uid("other")}
        apply(store, pod("client", CLIENT_IP), pod("echo", ECHO_IP), pod("other", OTHER_IP))
        metrics = Metrics(process=False)
        server = InboundServer(
            listening_socket(("0.0.0.0", 0)),
            store,
            manager,
            local,
            metrics,
            dialer=UpstreamDialer(mark=PROXY_MARK, transparent=True),
        )
        server.start()
        cleanup.push_async_callback(server.close, DEADLINE)
        client = HboneClient()
        cleanup.callback(client.close)
        # Prefetched as the workloads appeared: served before any client asks.
        await wait_until(
            lambda: server.certificates.ips() >= {ECHO_IP, OTHER_IP}, "workload certificates"
        )
        yield Node(ca, store, local, metrics, server, backend, client, access, cleanup)


async def test_an_allowed_tunnel_reaches_the_pod_from_the_clients_ip(node: Node) -> None:
    app, pumping = await node.open()
    payload = os.urandom(256 * 1024)
    await sendall(app, payload)
    assert await recv_exactly(app, len(payload)) == payload
    app.shutdown(socket.SHUT_WR)
    assert await recv_to_eof(app) == b""
    await asyncio.wait_for(pumping, DEADLINE)

    assert [peer[0] for peer in node.backend.peers] == [CLIENT_IP]  # IP_TRANSPARENT source
    await wait_until(lambda: node.access.lines() != [], "the access log line")
    [line] = node.access.lines()
    assert line["src.addr"].startswith(f"{CLIENT_IP}:")  # type: ignore[union-attr]
    assert line["dst.hbone_addr"] == f"{ECHO_IP}:{node.backend.port}"
    assert (line["src.identity"], line["dst.identity"]) == (CLIENT_ID, ECHO_ID)
    assert (line["dst.workload"], line["direction"]) == ("echo", "inbound")
    assert (line["bytes_sent"], line["bytes_recv"]) == (len(payload), len(payload))
    assert "error" not in line
    labels = {"reporter": "destination", "destination_workload": "echo"}
    assert node.counter("opened", **labels, source_workload="client") == 1
    assert node.counter("closed", **labels, response_flags="-") == 1
    assert node.counter("received_bytes", **labels) == len(payload)
    assert node.counter("sent_bytes", **labels) == len(payload)


async def test_a_deny_policy_answers_401_and_logs_the_policy(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    set_policies(node.store, deny_client())
    with caplog.at_level(logging.INFO, logger="ambient_fast.hbone"):
        with pytest.raises(HboneRejected) as refused:
            await node.client.open(node.route(), [])
    assert refused.value.status == 401
    assert "apps/no-client" in caplog.text
    assert node.backend.peers == []
    [line] = node.access.lines()
    assert "apps/no-client" in str(line["error"])
    assert line["dst.workload"] == "echo"
    assert node.counter("closed", response_flags="DENY", destination_workload="echo") == 1


async def test_an_authority_for_another_ip_is_400(node: Node) -> None:
    route = node.route(authority=f"{OTHER_IP}:{node.backend.port}")
    with pytest.raises(HboneRejected) as refused:
        await node.client.open(route, [])
    assert refused.value.status == 400
    [line] = node.access.lines("connection failed")
    assert "ip mismatch" in str(line["error"])


async def test_a_workload_that_is_not_local_is_503(node: Node) -> None:
    node.local.discard(uid("other"))  # its certificate is still served (a race with a move)
    route = node.route(OTHER_IP, f"{OTHER_IP}:{node.backend.port}", OTHER_ID)
    with pytest.raises(HboneRejected) as refused:
        await node.client.open(route, [])
    assert refused.value.status == 503
    assert "unknown local workload" in str(node.access.lines("connection failed")[0]["error"])


@pytest.mark.parametrize("moved", [0, 100_000], ids=["idle", "moved"])
async def test_a_policy_change_closes_a_live_connection_and_counts_its_bytes(
    node: Node, moved: int
) -> None:
    app, pumping = await node.open_live(moved)

    set_policies(node.store, deny_client("closes-live"))

    with contextlib.suppress(ConnectionResetError):
        assert await recv_to_eof(app) == b""
    await wait_until(lambda: len(node.server.live) == 0, "the connection to be closed")
    await wait_until(lambda: node.access.lines() != [], "the access log line")
    [line] = node.access.lines()
    assert str(line["error"]).startswith("connection closed due to policy rejection: ")
    assert "apps/closes-live" in str(line["error"])
    assert (line["bytes_sent"], line["bytes_recv"]) == (moved, moved)
    assert node.counter("closed", response_flags="DENY") == 1
    assert node.counter("received_bytes") == node.counter("sent_bytes") == moved
    await asyncio.gather(pumping, return_exceptions=True)


@pytest.mark.parametrize("moved", [0, 100_000], ids=["idle", "moved"])
async def test_a_reset_connection_is_counted_with_its_bytes_and_the_error(
    node: Node, moved: int
) -> None:
    app, pumping = await node.open_live(moved)

    reset(app)  # the client's pump resets the stream: the server's pump fails

    await wait_until(lambda: node.access.lines() != [], "the access log line")
    [line] = node.access.lines()
    assert str(line["error"]).startswith("hbone stream: ")
    assert (line["bytes_sent"], line["bytes_recv"]) == (moved, moved)
    assert node.counter("closed", response_flags="-") == 1
    assert node.counter("received_bytes") == node.counter("sent_bytes") == moved
    await asyncio.gather(pumping, return_exceptions=True)


async def test_the_drain_deadline_cuts_a_live_connection_and_counts_its_bytes(
    node: Node,
) -> None:
    payload = os.urandom(100_000)
    app, pumping = await node.open()
    await sendall(app, payload)
    assert await recv_exactly(app, len(payload)) == payload
    await wait_until(lambda: len(node.server.live) == 1, "the connection to be live")

    await asyncio.wait_for(node.server.close(deadline=0.05), DEADLINE)

    with contextlib.suppress(ConnectionResetError):
        assert await recv_to_eof(app) == b""
    [line] = node.access.lines()
    assert line["error"] == "cancelled"
    assert (line["bytes_sent"], line["bytes_recv"]) == (len(payload), len(payload))
    assert node.counter("closed", response_flags="-") == 1
    assert node.counter("received_bytes") == node.counter("sent_bytes") == len(payload)
    await asyncio.gather(pumping, return_exceptions=True)


async def test_certificates_follow_the_store(node: Node) -> None:
    apply(node.store, pod("late", "127.0.0.7"))
    node.local.add(uid("late"))
    node.server.certificates.update(uid("late"))
    await wait_until(lambda: "127.0.0.7" in node.server.certificates.ips(), "a prefetched cert")
    node.store.apply(ADDRESS_TYPE_URL, {}, [uid("late")])
    assert "127.0.0.7" not in node.server.certificates.ips()


async def test_a_proxy_application_tunnel_gets_a_proxy_v2_header(node: Node) -> None:
    async with echo_backend(TUNNEL_IP, prefix_len=16 + 12 + 3 + len(CLIENT_ID)) as tunnelled:
        apply(node.store, pod("tunnelled", TUNNEL_IP, proxy_tunnel_port=tunnelled.port))
        node.local.add(uid("tunnelled"))
        node.server.certificates.update(uid("tunnelled"))
        await wait_until(lambda: TUNNEL_IP in node.server.certificates.ips(), "its certificate")
        route = node.route(TUNNEL_IP, f"{TUNNEL_IP}:8080", TUNNEL_ID)
        app, pumping = await node.open(route)
        await sendall(app, b"hello")
        assert await recv_exactly(app, 5) == b"hello"
        [header] = tunnelled.prefixes
        assert header[:12] == b"\r\n\r\n\x00\r\nQUIT\n"
        assert header[12:14] == b"\x21\x11"
        assert socket.inet_ntoa(header[16:20]) == CLIENT_IP
        assert socket.inet_ntoa(header[20:24]) == TUNNEL_IP
        assert int.from_bytes(header[26:28], "big") == 8080
        assert header[28] == PROXY_TLV_PEER_IDENTITY
        assert header[31:].decode() == CLIENT_ID
        app.shutdown(socket.SHUT_WR)
        assert await recv_to_eof(app) == b""
        await asyncio.wait_for(pumping, DEADLINE)


async def test_plaintext_is_refused_where_policy_requires_an_identity(node: Node) -> None:
    relay = SpliceRelay()
    node.cleanup.callback(relay.close)
    # Bound on the workload's own address: no SO_ORIGINAL_DST, getsockname() is the target.
    plaintext = InboundPlaintextServer(
        listening_socket((ECHO_IP, 0)), node.store, node.local, node.metrics, relay
    )
    plaintext.start()
    node.cleanup.push_async_callback(plaintext.close, DEADLINE)
    set_policies(node.store, strict_mtls())

    sock = await dial(ECHO_IP, plaintext.address[1])
    with sock, contextlib.suppress(ConnectionResetError):
        assert await recv_to_eof(sock) == b""
    await wait_until(lambda: node.access.lines() != [], "the access log line")
    [line] = node.access.lines()
    assert "apps/strict" in str(line["error"])
    assert "src.identity" not in line
    assert node.counter("closed", response_flags="DENY", connection_security_policy="unknown") == 1
    assert node.backend.peers == []


def plaintext_to_backend(node: Node, monkeypatch: pytest.MonkeyPatch) -> InboundPlaintextServer:
    """A started 15006 listener whose connections are "redirected" to the backend (the
    listener's own address is no workload port)."""
    target = (ECHO_IP, node.backend.port)
    monkeypatch.setattr(inbound_passthrough, "original_destination", lambda _: target)
    relay = SpliceRelay()
    node.cleanup.callback(relay.close)
    plaintext = InboundPlaintextServer(
        listening_socket((ECHO_IP, 0)), node.store, node.local, node.metrics, relay
    )
    plaintext.start()
    node.cleanup.push_async_callback(plaintext.close, DEADLINE)
    return plaintext


@pytest.mark.parametrize("cut", ["policy", "drain"])
@pytest.mark.parametrize("moved", [0, 100_000], ids=["idle", "moved"])
async def test_a_cut_plaintext_connection_counts_its_bytes(
    node: Node, monkeypatch: pytest.MonkeyPatch, cut: str, moved: int
) -> None:
    plaintext = plaintext_to_backend(node, monkeypatch)
    payload = os.urandom(moved)
    sock = await dial(ECHO_IP, plaintext.address[1])
    with sock:
        await sendall(sock, payload)
        assert await recv_exactly(sock, moved) == payload
        await wait_until(lambda: len(plaintext.live) == 1, "the connection to be live")

        if cut == "policy":
            set_policies(node.store, strict_mtls())
        else:
            await asyncio.wait_for(plaintext.close(deadline=0.05), DEADLINE)

        with pytest.raises(ConnectionResetError):
            await recv_to_eof(sock)
    await wait_until(lambda: node.access.lines() != [], "the access log line")
    [line] = node.access.lines()
    if cut == "policy":
        assert "apps/strict" in str(line["error"])
        assert node.counter("closed", response_flags="DENY") == 1
    else:
        assert line["error"] == "cancelled"
        assert node.counter("closed", response_flags="-") == 1
    assert (line["bytes_sent"], line["bytes_recv"]) == (moved, moved)
    assert node.counter("received_bytes") == node.counter("sent_bytes") == moved


@pytest.mark.parametrize("moved", [0, 100_000], ids=["idle", "moved"])
async def test_a_reset_plaintext_connection_is_counted_with_its_bytes_and_the_error(
    node: Node, monkeypatch: pytest.MonkeyPatch, moved: int
) -> None:
    plaintext = plaintext_to_backend(node, monkeypatch)
    payload = os.urandom(moved)
    sock = await dial(ECHO_IP, plaintext.address[1])
    await sendall(sock, payload)
    assert await recv_exactly(sock, moved) == payload
    await wait_until(lambda: len(plaintext.live) == 1, "the connection to be live")

    reset(sock)

    await wait_until(lambda: node.access.lines() != [], "the access log line")
    [line] = node.access.lines()
    assert "Connection reset by peer" in str(line["error"])
    assert (line["bytes_sent"], line["bytes_recv"]) == (moved, moved)
    assert node.counter("closed", response_flags="-") == 1
    assert node.counter("received_bytes") == node.counter("sent_bytes") == moved


async def test_upstream_sockets_carry_the_mark_and_the_clients_source(node: Node) -> None:
    dialer = UpstreamDialer()
    sock = await dialer.connect((ECHO_IP, node.backend.port), CLIENT_IP)
    with sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == PROXY_MARK
        assert sock.getsockname()[0] == CLIENT_IP
        assert original_destination(sock) == sock.getsockname()[:2]  # not redirected
    with pytest.raises(OSError, match=f"connect to {ECHO_IP}:"):
        await dialer.connect((ECHO_IP, unused_port(ECHO_IP)))

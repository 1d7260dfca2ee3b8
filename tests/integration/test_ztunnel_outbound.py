"""The outbound listener on loopback: real sockets, real HBONE servers with MeshCA identities,
the original destination given by an injected resolver (no iptables here; tests/netns has it).

Pods are loopback addresses (127.0.0.0/8 is all local), so each "pod" can have its own HBONE
server on the same port, as pods on a node do.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from access_events import AccessEvents
from google.protobuf.wrappers_pb2 import UInt32Value
from hbone_harness import (
    dial,
    dial_target,
    finish,
    recv_exactly,
    recv_to_eof,
    reset,
    sendall,
    tls_identity,
)
from waits import DEADLINE, wait_until

from ambient_fast.hbone import (
    Accept,
    HboneClient,
    HboneServer,
    InboundTunnel,
    Reject,
    ServerCertificates,
)
from ambient_fast.identity.ca import MeshCA
from ambient_fast.identity.issuer import SelfSignedCa
from ambient_fast.identity.manager import CertificateManager
from ambient_fast.metrics import ConnectionMetrics
from ambient_fast.metrics.families import Family
from ambient_fast.splice import SpliceRelay
from ambient_fast.state import StateStore
from ambient_fast.xds.proto import workload_pb2 as wpb
from ambient_fast.xds.resources import ADDRESS_TYPE_URL
from ambient_fast.ztunnel.accesslog import AccessLog
from ambient_fast.ztunnel.outbound import OutboundProxy, OutboundSettings
from ambient_fast.ztunnel.routing import eligible_endpoints, pick_weighted

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="SO_MARK needs CAP_NET_ADMIN")

SLEEP_IP = "127.0.0.10"  # the client workload
STRANGER_IP = "127.0.0.99"  # a client the store does not know
ECHO_IP = "127.0.0.20"  # captured pod `echo`
IMPOSTOR_IP = "127.0.0.21"  # captured pod `echo-2`, whose server presents another identity
WAYPOINT_IP = "127.0.0.40"  # the waypoint of service `reviews`
REVIEWS_VIP = "10.96.0.20"
WEB_A_IP, WEB_B_IP = "127.0.0.30", "127.0.0.31"  # service `web`, not captured
WEB_VIP = "10.96.0.10"


def spiffe(service_account: str) -> str:
    return f"spiffe://cluster.local/ns/apps/sa/{service_account}"


def pod(
    name: str,
    ip: str,
    *,
    service_account: str = "",
    captured: bool = True,
    services: dict[str, dict[int, int]] | None = None,
    capacity: int | None = None,
) -> wpb.Address:
    return wpb.Address(
        workload=wpb.Workload(
            uid=f"Kubernetes//Pod/apps/{name}",
            name=name,
            namespace="apps",
            addresses=[ipaddress.ip_address(ip).packed],
            tunnel_protocol=wpb.HBONE if captured else wpb.NONE,
            service_account=service_account or name,
            services={
                f"apps/{host}": wpb.PortList(
                    ports=[wpb.Port(service_port=p, target_port=t) for p, t in ports.items()]
                )
                for host, ports in (services or {}).items()
            },
            status=wpb.HEALTHY,
            capacity=UInt32Value(value=capacity) if capacity is not None else None,
            canonical_name=name,
            canonical_revision="v1",
            workload_name=name,
            workload_type=wpb.DEPLOYMENT,
        )
    )


def service(name: str, vip: str, ports: dict[int, int]) -> wpb.Address:
    return wpb.Address(
        service=wpb.Service(
            name=name,
            namespace="apps",
            hostname=f"{name}.apps.svc.cluster.local",
            addresses=[wpb.NetworkAddress(address=ipaddress.ip_address(vip).packed)],
            ports=[wpb.Port(service_port=p, target_port=t) for p, t in ports.items()],
        )
    )


def listener(host: str, port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def backend(host: str, greeting: bytes = b"") -> AsyncIterator[int]:
    """A server on `host`: sends `greeting`, then echoes until EOF and half-closes."""
    sock = listener(host)
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def serve(conn: socket.socket) -> None:
        # A connection the proxy cuts is reset on this side too.
        with conn, contextlib.suppress(ConnectionResetError):
            if greeting:
                await loop.sock_sendall(conn, greeting)
            while data := await loop.sock_recv(conn, 65536):
                await loop.sock_sendall(conn, data)
            conn.shutdown(socket.SHUT_WR)

    async def accept() -> None:
        while True:
            conn, _ = await loop.sock_accept(sock)
            conn.setblocking(False)
            task = asyncio.create_task(serve(conn))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    accepting = asyncio.create_task(accept())
    try:
        yield sock.getsockname()[1]
    finally:
        accepting.cancel()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(accepting, *tasks, return_exceptions=True)
        sock.close()


def count(family: Family, **labels: str) -> int:
    """The sum of a family's series whose labels include `labels`."""
    return sum(
        int(s.value)
        for s in family.to_metric().samples
        if all(s.labels.get(k) == v for k, v in labels.items())
    )


@dataclass
class Node:
    """One node proxy's outbound side and the pods around it."""

    ca: MeshCA
    store: StateStore
    proxy: OutboundProxy
    metrics: ConnectionMetrics
    log: AccessEvents
    hbone_port: int
    destinations: dict[tuple[str, int], tuple[str, int]]
    servers: dict[str, list[InboundTunnel]] = field(default_factory=dict)
    # What an HBONE server dials for a CONNECT target (host, port); others: the target itself.
    forward: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)

    async def connect(self, src_ip: str, original_dst: tuple[str, int]) -> socket.socket:
        """A client on `src_ip` whose connection was "redirected" from `original_dst`."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.bind((src_ip, 0))
        self.destinations[sock.getsockname()[:2]] = original_dst
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(sock, self.proxy.address), DEADLINE
            )
        except BaseException:
            sock.close()
            raise
        return sock

    async def closed(self, n: int) -> list[dict[str, str | int]]:
        """The first `n` `connection complete` lines, once written."""
        await wait_until(
            lambda: len(self.log.lines("connection complete")) >= n, f"{n} complete lines"
        )
        return self.log.lines("connection complete")[:n]


async def exchange(sock: socket.socket, payload: bytes) -> bytes:
    """Sends `payload`, half-closes, reads the answer to EOF."""
    reader = asyncio.create_task(recv_to_eof(sock))
    try:
        await sendall(sock, payload)
        sock.shutdown(socket.SHUT_WR)
        return await reader
    finally:
        await finish(reader)


async def expect_reset(sock: socket.socket) -> None:
    """The proxy resets `sock` without waiting for anything from the client."""
    with pytest.raises(ConnectionResetError):
        await recv_to_eof(sock)


@contextlib.asynccontextmanager
async def node(rng: random.Random | None = None) -> AsyncIterator[Node]:
    ca = MeshCA.create()
    store = StateStore()
    applied = store.apply(
        ADDRESS_TYPE_URL,
        {
            "Kubernetes//Pod/apps/sleep": pod("sleep", SLEEP_IP),
            "Kubernetes//Pod/apps/echo": pod("echo", ECHO_IP),
            "Kubernetes//Pod/apps/echo-2": pod("echo-2", IMPOSTOR_IP, service_account="echo"),
            "Kubernetes//Pod/apps/waypoint": pod("waypoint", WAYPOINT_IP),
        },
    )
    assert not applied.rejected, applied.rejected
    async with contextlib.AsyncExitStack() as stack:
        certificates = CertificateManager(
            SelfSignedCa.from_pem(ca.root_pem, ca.key_pem), ca.root_pem
        )
        stack.push_async_callback(certificates.aclose)
        hbone = HboneClient()
        stack.callback(hbone.close)
        relay = SpliceRelay()
        stack.callback(relay.close)
        metrics = ConnectionMetrics()
        events = AccessEvents()
        logger = logging.getLogger(f"test.outbound.{id(events)}")
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        logger.addHandler(events)
        stack.callback(logger.removeHandler, events)
        destinations: dict[tuple[str, int], tuple[str, int]] = {}

        # The "pods" serve HBONE on one port, as every pod's node proxy does.
        echo_hbone = listener(ECHO_IP)
        hbone_port = echo_hbone.getsockname()[1]
        servers: dict[str, list[InboundTunnel]] = {}
        forward: dict[tuple[str, int], tuple[str, int]] = {}
        for ip, sock, presented in (
            (ECHO_IP, echo_hbone, spiffe("echo")),
            (IMPOSTOR_IP, listener(IMPOSTOR_IP, hbone_port), spiffe("other")),
            (WAYPOINT_IP, listener(WAYPOINT_IP, hbone_port), spiffe("waypoint")),
        ):
            seen = servers[ip] = []

            async def handler(
                tunnel: InboundTunnel, seen: list[InboundTunnel] = seen
            ) -> Accept | Reject:
                seen.append(tunnel)
                target = forward.get((tunnel.target.host, tunnel.target.port))
                if target is None:
                    return await dial_target(tunnel)
                return Accept(await dial(*target))

            certs = ServerCertificates()
            certs.set(None, tls_identity(ca, presented))
            server = HboneServer(sock, certs, handler)
            serving = asyncio.create_task(server.serve())
            stack.push_async_callback(finish, serving)
            stack.callback(server.drain)

        proxy = OutboundProxy(
            listener("127.0.0.1"),
            store,
            certificates,
            hbone,
            relay,
            metrics,
            AccessLog(logger),
            settings=OutboundSettings(hbone_port=hbone_port),
            destination_of=lambda sock: destinations[sock.getpeername()[:2]],
            rng=rng,
        )
        serving_proxy = asyncio.create_task(proxy.serve())

        async def stop() -> None:
            await proxy.drain(0)
            await finish(serving_proxy)

        stack.push_async_callback(stop)
        yield Node(ca, store, proxy, metrics, events, hbone_port, destinations, servers, forward)


async def test_unknown_destination_passes_through_with_bytes_intact() -> None:
    payload = os.urandom(1 << 20)
    async with node() as n, backend("127.0.0.1") as port:
        sock = await n.connect(SLEEP_IP, ("127.0.0.1", port))
        with sock:
            assert await exchange(sock, payload) == payload
        [line] = await n.closed(1)
    assert line["src.addr"] == f"{SLEEP_IP}:{sock_port(line)}"
    assert line["dst.addr"] == f"127.0.0.1:{port}"
    assert line["src.workload"] == "sleep"
    assert line["direction"] == "outbound"
    assert (line["bytes_sent"], line["bytes_recv"]) == (len(payload), len(payload))
    assert "dst.hbone_addr" not in line and "error" not in line
    opened = n.metrics.opened
    assert count(opened, reporter="source", source_workload="sleep") == 1
    assert count(opened, destination_workload="unknown", connection_security_policy="unknown") == 1
    assert count(n.metrics.received_bytes, source_workload="sleep") == len(payload)
    assert count(n.metrics.sent_bytes, source_workload="sleep") == len(payload)
    assert count(n.metrics.closed, response_flags="-") == 1
    assert not n.servers[ECHO_IP]


def sock_port(line: dict[str, str | int]) -> str:
    return str(line["src.addr"]).rpartition(":")[2]


async def test_unknown_source_only_passes_through_even_to_a_captured_pod() -> None:
    async with node() as n, backend(ECHO_IP) as port:
        sock = await n.connect(STRANGER_IP, (ECHO_IP, port))
        with sock:
            assert await exchange(sock, b"hello") == b"hello"
        [line] = await n.closed(1)
    assert not n.servers[ECHO_IP], "an unknown client must not get a mesh identity"
    assert "src.workload" not in line and "dst.hbone_addr" not in line
    assert count(n.metrics.opened, source_workload="unknown", reporter="source") == 1


async def test_captured_pod_is_reached_over_hbone_as_the_source_identity() -> None:
    payload = os.urandom(256 * 1024)
    async with node() as n, backend(ECHO_IP) as port:
        sock = await n.connect(SLEEP_IP, (ECHO_IP, port))
        client_port = sock.getsockname()[1]
        with sock:
            assert await exchange(sock, payload) == payload
        [line] = await n.closed(1)
        [tunnel] = n.servers[ECHO_IP]
    assert tunnel.peer_identity == spiffe("sleep")
    assert (tunnel.target.host, tunnel.target.port) == (ECHO_IP, port)
    assert tunnel.header("forwarded") == f'for="{SLEEP_IP}:{client_port}"'
    assert "k8s.deployment.name=sleep" in (tunnel.header("baggage") or "")
    assert line["dst.addr"] == f"{ECHO_IP}:{n.hbone_port}"
    assert line["dst.hbone_addr"] == f"{ECHO_IP}:{port}"
    assert (line["src.identity"], line["dst.identity"]) == (spiffe("sleep"), spiffe("echo"))
    assert (line["bytes_sent"], line["bytes_recv"]) == (len(payload), len(payload))
    mtls = {"connection_security_policy": "mutual_tls", "reporter": "source"}
    assert count(n.metrics.opened, source_principal=spiffe("sleep"), **mtls) == 1
    assert count(n.metrics.closed, destination_workload="echo", response_flags="-", **mtls) == 1
    assert count(n.metrics.received_bytes, destination_principal=spiffe("echo")) == len(payload)


async def test_a_peer_with_the_wrong_identity_fails_and_the_client_sees_a_reset() -> None:
    async with node() as n, backend(IMPOSTOR_IP) as port:
        sock = await n.connect(SLEEP_IP, (IMPOSTOR_IP, port))
        with sock:
            await expect_reset(sock)
        [line] = await n.closed(1)
    assert not n.servers[IMPOSTOR_IP], "no CONNECT may reach a server with the wrong identity"
    assert f'is not one of the expected ["{spiffe("echo")}"]' in str(line["error"])
    assert count(n.metrics.closed, response_flags="CONNECT", destination_workload="echo-2") == 1
    assert count(n.metrics.received_bytes) == 0


async def test_service_vip_picks_endpoints_by_capacity_with_the_seeded_random() -> None:
    async with (
        node(random.Random(1234)) as n,
        backend(WEB_A_IP, b"web-a") as port_a,
        backend(WEB_B_IP, b"web-b") as port_b,
    ):
        host = "web.apps.svc.cluster.local"
        applied = n.store.apply(
            ADDRESS_TYPE_URL,
            {
                f"apps/{host}": service("web", WEB_VIP, {80: 8080}),
                "Kubernetes//Pod/apps/web-a": pod(
                    "web-a", WEB_A_IP, captured=False, services={host: {80: port_a}}, capacity=1
                ),
                "Kubernetes//Pod/apps/web-b": pod(
                    "web-b", WEB_B_IP, captured=False, services={host: {80: port_b}}, capacity=3
                ),
            },
        )
        assert not applied.rejected, applied.rejected
        web = n.store.service_by_vip("", WEB_VIP)
        sleep = n.store.workload_by_ip("", SLEEP_IP)
        assert web is not None and sleep is not None
        twin = random.Random(1234)
        endpoints = eligible_endpoints(n.store.endpoints(web, 80), web, sleep)
        expected = []
        for _ in range(24):
            chosen = pick_weighted(endpoints, twin)
            assert chosen is not None
            expected.append(chosen.workload.name)
        reached = []
        for _ in range(24):
            with await n.connect(SLEEP_IP, (WEB_VIP, 80)) as sock:
                reached.append((await exchange(sock, b"")).decode())
        lines = await n.closed(24)
    assert reached == expected
    assert {"web-a", "web-b"} == set(reached) and reached.count("web-b") > reached.count("web-a")
    assert {line["dst.service"] for line in lines} == {host}
    for name in ("web-a", "web-b"):
        assert count(
            n.metrics.opened,
            destination_workload=name,
            destination_service=host,
            connection_security_policy="unknown",
        ) == reached.count(name)


async def test_a_service_with_a_waypoint_is_tunnelled_to_the_waypoint_with_the_vip() -> None:
    host = "reviews.apps.svc.cluster.local"
    async with node() as n, backend(WAYPOINT_IP) as port:
        waypoint = wpb.GatewayAddress(
            address=wpb.NetworkAddress(address=ipaddress.ip_address(WAYPOINT_IP).packed),
            hbone_mtls_port=n.hbone_port,
        )
        reviews = service("reviews", REVIEWS_VIP, {9080: 9080})
        reviews.service.waypoint.CopyFrom(waypoint)
        assert not n.store.apply(ADDRESS_TYPE_URL, {f"apps/{host}": reviews}).rejected
        n.forward[(REVIEWS_VIP, 9080)] = (WAYPOINT_IP, port)  # the waypoint's own routing
        with await n.connect(SLEEP_IP, (REVIEWS_VIP, 9080)) as sock:
            assert await exchange(sock, b"review?") == b"review?"
        [line] = await n.closed(1)
        [tunnel] = n.servers[WAYPOINT_IP]
    assert (tunnel.target.host, tunnel.target.port) == (REVIEWS_VIP, 9080)
    assert tunnel.peer_identity == spiffe("sleep")
    assert f";host={host}" in (tunnel.header("forwarded") or "")
    assert line["dst.addr"] == f"{WAYPOINT_IP}:{n.hbone_port}"
    assert line["dst.hbone_addr"] == f"{REVIEWS_VIP}:9080"
    assert (line["dst.service"], line["dst.identity"]) == (host, spiffe("waypoint"))
    assert count(n.metrics.opened, destination_workload="waypoint", destination_service=host) == 1


@pytest.mark.parametrize("target", ["proxy", "15008"])
async def test_a_loop_to_the_proxy_itself_is_refused_with_a_reset(target: str) -> None:
    async with node() as n:
        dst = n.proxy.address if target == "proxy" else (SLEEP_IP, 15008)
        sock = await n.connect(SLEEP_IP, dst)
        with sock:
            await expect_reset(sock)
        await wait_until(lambda: bool(n.log.lines("connection failed")), "a failed line")
    [failed] = n.log.lines("connection failed")
    assert failed["error"] == "loop" and failed["direction"] == "outbound"
    assert failed["dst.addr"] == "{}:{}".format(*dst)
    assert count(n.metrics.opened) == 0 and not n.log.lines("connection complete")


async def test_drain_refuses_new_connections_and_lets_open_ones_finish() -> None:
    async with node() as n, backend("127.0.0.1") as port:
        open_sock = await n.connect(SLEEP_IP, ("127.0.0.1", port))
        await sendall(open_sock, b"before ")
        await wait_until(lambda: n.proxy.active() == 1, "the connection to be relayed")
        draining = asyncio.create_task(n.proxy.drain(DEADLINE))
        await wait_until(lambda: not n.proxy.listening, "the listener to close")
        with pytest.raises(ConnectionRefusedError):
            await n.connect(SLEEP_IP, ("127.0.0.1", port))
        with open_sock:
            assert await exchange(open_sock, b"after") == b"before after"
        assert await asyncio.wait_for(draining, DEADLINE) == 0
        [line] = await n.closed(1)
    assert "error" not in line


@pytest.mark.parametrize("moved", [0, 100_000], ids=["idle", "moved"])
@pytest.mark.parametrize("target_ip", ["127.0.0.1", ECHO_IP], ids=["splice", "hbone"])
async def test_drain_deadline_resets_connections_and_counts_what_they_moved(
    target_ip: str, moved: int
) -> None:
    payload = os.urandom(moved)
    async with node() as n, backend(target_ip) as port:
        sock = await n.connect(SLEEP_IP, (target_ip, port))
        with sock:
            await wait_until(lambda: n.proxy.active() == 1, "the connection to be relayed")
            await sendall(sock, payload)
            assert await recv_exactly(sock, moved) == payload
            assert await asyncio.wait_for(n.proxy.drain(0.05), DEADLINE) == 1
            await expect_reset(sock)
        [line] = await n.closed(1)
    assert line["error"] == "drained"
    assert (line["bytes_sent"], line["bytes_recv"]) == (moved, moved)
    assert count(n.metrics.closed) == 1
    assert count(n.metrics.received_bytes) == count(n.metrics.sent_bytes) == moved


@pytest.mark.parametrize("moved", [0, 100_000], ids=["idle", "moved"])
@pytest.mark.parametrize("target_ip", ["127.0.0.1", ECHO_IP], ids=["splice", "hbone"])
async def test_a_reset_connection_is_counted_with_its_bytes_and_the_error(
    target_ip: str, moved: int
) -> None:
    payload = os.urandom(moved)
    async with node() as n, backend(target_ip) as port:
        sock = await n.connect(SLEEP_IP, (target_ip, port))
        await wait_until(lambda: n.proxy.active() == 1, "the connection to be relayed")
        await sendall(sock, payload)
        assert await recv_exactly(sock, moved) == payload
        reset(sock)
        [line] = await n.closed(1)
    assert "reset by peer" in str(line["error"])
    assert (line["bytes_sent"], line["bytes_recv"]) == (moved, moved)
    assert count(n.metrics.closed) == 1
    assert count(n.metrics.received_bytes) == count(n.metrics.sent_bytes) == moved


async def test_an_upstream_that_refuses_resets_the_client_and_is_flagged_connect() -> None:
    async with node() as n:
        with socket.create_server(("127.0.0.1", 0)) as bound:
            dead = bound.getsockname()[:2]  # closed on exit: nothing listens there any more
        sock = await n.connect(SLEEP_IP, dead)
        with sock:
            await expect_reset(sock)
        [line] = await n.closed(1)
    address = "{}:{}".format(*dead)
    assert f"connect to {address}" in str(line["error"]) and line["dst.addr"] == address
    assert count(n.metrics.closed, response_flags="CONNECT", reporter="source") == 1

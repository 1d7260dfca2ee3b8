"""In-pod (shared) mode in real network namespaces: `Ztunnel` runs in this process (its own
endpoints on loopback), pods are namespaces of a one-node topology, and the node agent is either
a hand-written fake (to send exactly the requests a case needs) or the real one
(`cni.ztunnel_server`). Everything is deleted on exit, also on failure."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from access_events import AccessEvents

from ambient_fast.cni.rules import PolicyRoute, capture_rules
from ambient_fast.cni.ztunnel_server import PodHandoff, ZtunnelServer
from ambient_fast.netns import named_path
from ambient_fast.topology import NodeSpec, PodSpec, Topology, build
from ambient_fast.topology.commands import in_netns, run
from ambient_fast.xds.proto import zds_pb2
from ambient_fast.ztunnel.accesslog import ACCESS_LOGGER
from ambient_fast.ztunnel.app import Ztunnel
from ambient_fast.ztunnel.config import ProxyMode, WorkloadInfo, ZtunnelConfig
from ambient_fast.ztunnel.zds import AddPod, DelPod, KeepPod, Request, SnapshotSent, encode_request

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("iptables-restore")),
    reason="needs root, iproute2 and iptables",
)

DEADLINE = 10.0
LOOPBACK = "127.0.0.1"
NODE = NodeSpec("node-a", "10.244.1.0/24")
SLEEP = PodSpec("apps/sleep", "node-a", "10.244.1.10")
ECHO = PodSpec("apps/echo", "node-a", "10.244.1.11")
ECHO_PORT = 8080
HBONE, PLAINTEXT, OUTBOUND = 15008, 15006, 15001


def local_xds() -> str:
    """Both pods as captured workloads, as istiod would send them."""

    def workload(spec: PodSpec) -> str:
        name = spec.name.split("/")[1]
        return f"""\
- uid: Kubernetes//Pod/apps/{name}
  name: {name}
  namespace: apps
  serviceAccount: {name}
  workloadIps: ["{spec.ip}"]
  protocol: HBONE
  node: node-a
"""

    return "workloads:\n" + workload(SLEEP) + workload(ECHO)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind((LOOPBACK, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def shared_config(uds: Path) -> ZtunnelConfig:
    admin, stats, readiness = free_ports(3)
    return ZtunnelConfig(
        proxy_mode=ProxyMode.SHARED,
        fake_ca=True,
        local_xds=local_xds(),
        inpod_uds=uds,
        admin_port=admin,
        stats_port=stats,
        readiness_port=readiness,
        drain_deadline=1.0,
    )


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), DEADLINE)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


@contextlib.asynccontextmanager
async def running(config: ZtunnelConfig) -> AsyncIterator[Ztunnel]:
    app = Ztunnel(config, bind=LOOPBACK)
    task = asyncio.create_task(app.run())
    try:
        await wait_for(lambda: app.zds is not None or task.done(), "the ZDS client")
        assert not task.done(), task
        yield app
    finally:
        app.stop()
        assert await asyncio.wait_for(task, DEADLINE) == 0


async def connects(topology: Topology, namespace: str, port: int, ip: str = LOOPBACK) -> bool:
    """Whether a TCP connection to ip:port from inside `namespace` is accepted."""
    with topology.entered(namespace):
        sock = socket.socket()
    with sock:
        sock.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (ip, port)), 2)
        except ConnectionRefusedError:
            return False
    return True


def fds_holding(namespace: str) -> int:
    """How many of this process's fds hold the namespace (no leaks: 0 once it is let go)."""
    target = os.stat(named_path(namespace))
    held = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            st = os.stat(f"/proc/self/fd/{fd}")
            held += (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino)
    return held


async def closes(topology: Topology, namespace: str, port: int) -> bool:
    """Whether the listener goes away: the native HBONE server drops its listener on its own
    threads just after a stop (ztunnel too acks a del before the drain has run)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while await connects(topology, namespace, port):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


class FakeAgent:
    """The CNI node agent's end by hand: listens on the socket, sends one request at a time
    (an add with its fds as SCM_RIGHTS) and returns the ack's error."""

    def __init__(self, path: Path) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(str(path))
        self.listener.listen(4)
        self.listener.setblocking(False)
        self.conn: socket.socket | None = None

    async def accept(self) -> None:
        """Waits for ztunnel and its hello."""
        loop = asyncio.get_running_loop()
        conn, _ = await asyncio.wait_for(loop.sock_accept(self.listener), DEADLINE)
        conn.setblocking(False)
        self.conn = conn
        hello = zds_pb2.ZdsHello.FromString(await asyncio.wait_for(loop.sock_recv(conn, 1024), 5))
        assert hello.version == zds_pb2.V1

    async def send(self, request: Request, fds: tuple[int, ...] = ()) -> str:
        assert self.conn is not None
        socket.send_fds(self.conn, [encode_request(request)], list(fds))
        loop = asyncio.get_running_loop()
        ack = await asyncio.wait_for(loop.sock_recv(self.conn, 1024), DEADLINE)
        return zds_pb2.WorkloadResponse.FromString(ack).ack.error

    async def add(self, topology: Topology, uid: str, spec: PodSpec) -> str:
        fd = topology.open_netns(topology.pods[spec.name].netns)
        try:
            return await self.send(AddPod(uid, info_of(spec), -1), (fd,))
        finally:
            os.close(fd)  # the message carried its own reference

    def disconnect(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def close(self) -> None:
        self.disconnect()
        self.listener.close()


def info_of(spec: PodSpec) -> WorkloadInfo:
    namespace, name = spec.name.split("/")
    return WorkloadInfo(namespace, name, name)


@contextlib.contextmanager
def fake_agent(path: Path) -> Iterator[FakeAgent]:
    agent = FakeAgent(path)
    try:
        yield agent
    finally:
        agent.close()


async def test_pods_get_listeners_in_their_netns_and_lose_them_on_del_and_reconcile(
    tmp_path: Path,
) -> None:
    uds = tmp_path / "ztunnel.sock"
    config = shared_config(uds)
    with build([NODE], [SLEEP, ECHO]) as topology, fake_agent(uds) as agent:
        sleep_ns, echo_ns = (topology.pods[s.name].netns for s in (SLEEP, ECHO))
        async with running(config) as app:
            await agent.accept()
            # Config is in, but no snapshot from the agent yet: not ready (as ztunnel).
            assert (await http_get(config.readiness_port, "/healthz/ready"))[0] == 503
            assert await agent.send(SnapshotSent()) == ""
            await wait_for(app.ready, "readiness after the snapshot")
            assert (await http_get(config.readiness_port, "/healthz/ready"))[0] == 200

            assert await agent.add(topology, "uid-sleep", SLEEP) == ""
            for port in (HBONE, PLAINTEXT, OUTBOUND):
                assert await connects(topology, sleep_ns, port), port
                assert await connects(topology, sleep_ns, port, SLEEP.ip), port
            assert not await connects(topology, echo_ns, HBONE)  # only where it was added
            status, body = await http_get(config.admin_port, "/config_dump")
            assert status == 200
            [(uid, pod)] = json.loads(body)["workloadState"].items()
            assert (uid, pod["state"], pod["info"]) == (
                "uid-sleep", "Up", {"name": "sleep", "namespace": "apps", "serviceAccount": "sleep"}
            )  # fmt: skip
            assert set(pod["connections"]) == {"inbound", "outbound"}  # the probes' may be open
            metrics = (await http_get(config.stats_port, "/metrics"))[1]
            assert "workload_manager_active_proxy_count 1" in metrics

            assert fds_holding(sleep_ns) == 2  # the proxy's, and its HBONE pool's
            assert await agent.send(DelPod("uid-sleep")) == ""
            assert not await connects(topology, sleep_ns, OUTBOUND)
            assert await closes(topology, sleep_ns, HBONE)
            assert fds_holding(sleep_ns) == 0
            assert await agent.add(topology, "uid-sleep", SLEEP) == ""
            assert await agent.add(topology, "uid-echo", ECHO) == ""

            # The agent restarts: ztunnel reconnects, keeps the pods it is told to keep and
            # drops the rest once the snapshot is complete; not ready in between.
            agent.disconnect()
            await agent.accept()
            assert not app.ready()
            assert await connects(topology, echo_ns, HBONE)  # untouched until the snapshot
            assert await agent.send(KeepPod("uid-sleep")) == ""
            assert await agent.send(SnapshotSent()) == ""
            assert await closes(topology, echo_ns, HBONE)
            assert await connects(topology, sleep_ns, HBONE)
            await wait_for(app.ready, "readiness after the second snapshot")
            metrics = (await http_get(config.stats_port, "/metrics"))[1]
            assert "workload_manager_proxies_started_total 3" in metrics
            assert "workload_manager_proxies_stopped_total 2" in metrics
        # Shut down: the remaining pod's listeners are gone too, and every netns fd closed.
        assert await closes(topology, sleep_ns, HBONE)
        assert fds_holding(sleep_ns) == fds_holding(echo_ns) == 0


async def test_bad_adds_are_refused_by_name_and_the_proxy_serves_on(tmp_path: Path) -> None:
    uds = tmp_path / "ztunnel.sock"
    config = shared_config(uds)
    with build([NODE], [SLEEP]) as topology, fake_agent(uds) as agent:
        sleep_ns = topology.pods[SLEEP.name].netns
        async with running(config) as app:
            await agent.accept()
            assert await agent.send(SnapshotSent()) == ""
            not_a_netns = os.open("/dev/null", os.O_RDONLY)
            try:
                error = await agent.send(AddPod("uid-bad", info_of(SLEEP), -1), (not_a_netns,))
            finally:
                os.close(not_a_netns)
            assert error.startswith("add uid-bad (apps/sleep): ") and "setns" in error, error
            error = await agent.send(AddPod("uid-nofd", info_of(SLEEP), -1))
            assert "add uid-nofd: expected exactly 1 netns fd, got none" in error
            assert "keep uid-sleep: only allowed before snapshot_sent" in await agent.send(
                KeepPod("uid-sleep")
            )
            assert not await connects(topology, sleep_ns, HBONE)  # nothing half-installed
            assert fds_holding(sleep_ns) == 0
            assert await agent.add(topology, "uid-sleep", SLEEP) == ""
            assert await connects(topology, sleep_ns, HBONE)
            assert app.ready()


@contextlib.asynccontextmanager
async def echo_server(topology: Topology, spec: PodSpec) -> AsyncIterator[None]:
    with topology.entered(topology.pods[spec.name].netns):
        listener = socket.create_server(("0.0.0.0", ECHO_PORT))

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, sock=listener)
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()


def capture(topology: Topology, spec: PodSpec) -> None:
    """istio-cni's in-pod rules (TPROXY variant) and local route, as the agent installs them."""
    namespace = topology.pods[spec.name].netns
    in_netns(namespace, "iptables-restore", "--noflush", stdin=capture_rules())
    route = PolicyRoute()
    run("ip", "-n", namespace, "rule", "add", *route.rule)
    run("ip", "-n", namespace, "route", "add", *route.route)


async def test_pod_to_pod_traffic_crosses_both_in_pod_proxies_over_hbone(tmp_path: Path) -> None:
    uds = tmp_path / "ztunnel.sock"
    config = shared_config(uds)
    events = AccessEvents()
    access = logging.getLogger(ACCESS_LOGGER)
    access.addHandler(events)
    old_level = access.level
    access.setLevel(logging.INFO)
    agent = ZtunnelServer(uds)
    payload = os.urandom(128 * 1024)
    loop = asyncio.get_running_loop()
    try:
        with build([NODE], [SLEEP, ECHO]) as topology:
            for spec in (SLEEP, ECHO):
                capture(topology, spec)
            await agent.start()
            async with running(config) as app, echo_server(topology, ECHO):
                for uid, spec in (("uid-sleep", SLEEP), ("uid-echo", ECHO)):
                    namespace, name = spec.name.split("/")
                    netns = named_path(topology.pods[spec.name].netns)
                    await agent.add(PodHandoff(uid, name, namespace, name, netns))
                await wait_for(app.ready, "readiness")
                with topology.entered(topology.pods[SLEEP.name].netns):
                    client = socket.socket()
                with client:
                    client.setblocking(False)
                    # The pod dials the echo pod; its rules send that to its in-pod 15001.
                    await asyncio.wait_for(loop.sock_connect(client, (ECHO.ip, ECHO_PORT)), 5)
                    await asyncio.wait_for(loop.sock_sendall(client, payload), DEADLINE)
                    client.shutdown(socket.SHUT_WR)
                    echoed = bytearray()
                    while chunk := await asyncio.wait_for(loop.sock_recv(client, 65536), 5):
                        echoed += chunk
                assert echoed == payload
                await wait_for(lambda: len(events.lines()) >= 2, "both access log lines")
                metrics = (await http_get(config.stats_port, "/metrics"))[1]
    finally:
        await agent.close()
        access.removeHandler(events)
        access.setLevel(old_level)
    lines = {line["direction"]: line for line in events.lines()}
    outbound, inbound = lines["outbound"], lines["inbound"]
    assert outbound["src.workload"] == "sleep" and outbound["dst.workload"] == "echo"
    assert outbound["dst.hbone_addr"] == f"{ECHO.ip}:{ECHO_PORT}"
    assert outbound["dst.identity"] == "spiffe://cluster.local/ns/apps/sa/echo"
    assert inbound["src.identity"] == "spiffe://cluster.local/ns/apps/sa/sleep"
    assert str(inbound["src.addr"]).startswith(f"{SLEEP.ip}:")  # the tunnel left from the pod
    for line in (outbound, inbound):
        assert (line["bytes_sent"], line["bytes_recv"]) == (len(payload), len(payload))
    opened = [m for m in metrics.splitlines() if m.startswith("istio_tcp_connections_opened")]
    for reporter in ("source", "destination"):
        assert any(f'reporter="{reporter}"' in m and "mutual_tls" in m for m in opened), opened

"""The node proxy's xDS client against our control plane on loopback: TLS with the mesh root,
node token, initial sync, pushed edits, and a control plane killed and restarted while the
client keeps serving its state and resumes with the versions it holds."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from google.protobuf.message import Message
from waits import wait_until

from ambient_fast.controlplane.ca import Authority
from ambient_fast.controlplane.model import ModelWatcher
from ambient_fast.controlplane.run import ControlPlane
from ambient_fast.controlplane.serving import (
    ISTIOD_DNS_NAMES,
    CertificateAuthority,
    serving_context,
)
from ambient_fast.controlplane.translate import TranslateOptions
from ambient_fast.policy import Request
from ambient_fast.state import Applied, StateStore
from ambient_fast.xds.client import XdsClient, XdsClientConfig, control_plane_tls, token_file
from ambient_fast.xds.proto import workload_pb2 as wpb
from ambient_fast.xds.resources import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, ResourceStore
from ambient_fast.xds.server import XdsServer
from ambient_fast.xds.subscription import NodeIdentity

MESH = """
apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: echo, namespace: apps, labels: {app: echo, version: VERSION}}
spec: {nodeName: node-a, serviceAccountName: echo, containers: [{name: echo, image: echo}]}
status: {podIP: 10.244.1.10}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: apps}
spec:
  clusterIP: 10.96.0.10
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-9999, namespace: apps}
spec:
  action: DENY
  rules: [{to: [{operation: {ports: ["9999"]}}]}]
"""
DOOMED = """
---
apiVersion: v1
kind: Pod
metadata: {name: doomed, namespace: apps, labels: {app: doomed}}
spec: {nodeName: node-a, containers: [{name: c, image: c}]}
status: {podIP: 10.244.1.11}
"""
ECHO = "Kubernetes//Pod/apps/echo"
DOOMED_UID = "Kubernetes//Pod/apps/doomed"
ECHO_SERVICE = "apps/echo.apps.svc.cluster.local"
NODE = NodeIdentity("10.0.0.1", "ztunnel-a", "istio-system", "node-a")


@dataclass
class RecordingStore:
    """The state store, with a log of what each response applied (to see diffs)."""

    store: StateStore = field(default_factory=StateStore)
    log: list[tuple[str, frozenset[str], frozenset[str]]] = field(default_factory=list)

    def apply(
        self, type_url: str, upserts: Mapping[str, Message], removals: Collection[str]
    ) -> Applied:
        self.log.append((type_url, frozenset(upserts), frozenset(removals)))
        return self.store.apply(type_url, upserts, removals)


class Relay:
    """A TCP relay in front of the control plane; `cut()` aborts every connection through it
    (RST both ways), as a killed process or a lost node looks to the client."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.WriteTransport] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        for transport in self._transports:
            transport.abort()
        self._transports.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()  # nothing listening: refuse as the kernel would
            return
        self._transports |= {writer.transport, upstream.transport}
        await asyncio.gather(
            self._pipe(reader, upstream),
            self._pipe(upstream_reader, writer),
            return_exceptions=True,
        )

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


@dataclass
class ControlPlaneOnLoopback:
    plane: ControlPlane
    mesh_file: Path
    state: Path
    authority: Authority
    ca: CertificateAuthority
    server: XdsServer | None = None
    port: int = 0
    relay: Relay | None = None

    async def start(self) -> None:
        tls = serving_context(self.authority, self.state, "cluster.local")
        self.server = XdsServer(self.plane.store, ssl=tls, services=[self.ca.service])
        await self.server.start("127.0.0.1", self.port)  # the same port after a restart
        self.port = self.server.port

    async def stop(self) -> None:
        """Closes the server: it ends each stream with UNAVAILABLE."""
        assert self.server is not None
        await self.server.close()
        self.server = None

    async def relay_in_front(self) -> None:
        """Clients configured from now on connect through a relay that `kill` can cut."""
        self.relay = Relay(self.port)
        await self.relay.start()

    async def kill(self) -> None:
        """Connections die without a word (cut at the relay), then the server goes."""
        assert self.relay is not None, "kill() needs relay_in_front() first"
        self.relay.cut()
        await self.stop()

    def edit(self, text: str) -> None:
        self.mesh_file.write_text(text)
        self.plane.watcher.poll()

    def client_config(self, **overrides: object) -> XdsClientConfig:
        settings: dict[str, object] = {
            "address": f"https://127.0.0.1:{self.relay.port if self.relay else self.port}",
            "node": NODE,
            "tls": control_plane_tls(self.authority.roots_pem),
            # Dialled by IP: the certificate is checked against istiod's DNS name.
            "server_name": ISTIOD_DNS_NAMES[0],
            "token": token_file(self.state / "node-tokens" / "node-a.token"),
            "initial_backoff": 0.01,
            "max_backoff": 0.2,
            **overrides,
        }
        return XdsClientConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture
async def control_plane(tmp_path: Path) -> AsyncIterator[ControlPlaneOnLoopback]:
    (tmp_path / "mesh").mkdir()
    mesh_file = tmp_path / "mesh" / "mesh.yaml"
    mesh_file.write_text(MESH.replace("VERSION", "v1") + DOOMED)
    state = tmp_path / "state"
    authority = Authority.self_signed(state)
    ca = CertificateAuthority(authority, state, "cluster.local")
    plane = ControlPlane(ModelWatcher([tmp_path / "mesh"]), TranslateOptions(), ca)
    plane.watcher.poll()
    running = ControlPlaneOnLoopback(plane, mesh_file, state, authority, ca)
    await running.start()
    try:
        yield running
    finally:
        if running.relay is not None:
            await running.relay.close()
        if running.server is not None:
            await running.stop()


def revision(store: StateStore, uid: str = ECHO) -> str | None:
    workload = store.workload_by_uid(uid)
    return workload.canonical_revision if workload is not None else None


async def test_initial_sync_over_tls_with_the_node_token(
    control_plane: ControlPlaneOnLoopback,
) -> None:
    sink = RecordingStore()
    async with XdsClient(control_plane.client_config(), sink) as client:
        await wait_until(client.ready.is_set, "the first response of both types")
        store = sink.store
        echo = store.workload_by_ip("", "10.244.1.10")
        assert echo is not None and echo.uid == ECHO and echo.captured
        assert str(echo.identity) == "spiffe://cluster.local/ns/apps/sa/echo"
        service = store.service_by_vip("", "10.96.0.10")
        assert service is not None and service.key == ECHO_SERVICE
        assert [(e.workload.uid, e.target_port) for e in store.endpoints(service, 80)] == [
            (ECHO, 8080)
        ]
        # The L4 policy arrived compiled: port 9999 is denied, 8080 allowed.
        source = ipaddress.ip_address("10.244.2.1")
        assert not store.authorize(echo, Request(source, echo.ips[0], 9999)).allowed
        assert store.authorize(echo, Request(source, echo.ips[0], 8080)).allowed

        view = control_plane.server.clients()[0] if control_plane.server else None
        assert view is not None and view.node_id == NODE.node_id
        await wait_until(lambda: view_in_flight(control_plane) == 0, "both ACKs")
        assert client.stats.nacks == 0


def view_in_flight(control_plane: ControlPlaneOnLoopback) -> int:
    assert control_plane.server is not None
    return sum(view.in_flight for view in control_plane.server.clients())


async def test_a_pushed_edit_arrives_alone(control_plane: ControlPlaneOnLoopback) -> None:
    sink = RecordingStore()
    async with XdsClient(control_plane.client_config(), sink) as client:
        await wait_until(client.ready.is_set, "the first response of both types")
        before = len(sink.log)
        control_plane.edit(MESH.replace("VERSION", "v2") + DOOMED)
        await wait_until(lambda: revision(sink.store) == "v2", "the edited pod")
        assert sink.log[before:] == [(ADDRESS_TYPE_URL, frozenset({ECHO}), frozenset())]


@pytest.mark.parametrize("death", ["killed", "stopped"])
async def test_restart_keeps_the_state_and_resumes_with_the_versions_held(
    control_plane: ControlPlaneOnLoopback, death: str
) -> None:
    if death == "killed":
        await control_plane.relay_in_front()
    sink = RecordingStore()
    store = sink.store
    async with XdsClient(control_plane.client_config(), sink) as client:
        await wait_until(client.ready.is_set, "the first response of both types")
        held = {t: len(client.subscription.held(t)) for t in client.subscription.type_urls}
        # echo, doomed, the echo service; one policy.
        assert held == {ADDRESS_TYPE_URL: 3, AUTHORIZATION_TYPE_URL: 1}
        await wait_until(lambda: view_in_flight(control_plane) == 0, "both ACKs")

        if death == "killed":
            await control_plane.kill()
        else:
            await control_plane.stop()
        await wait_until(lambda: not client.connected, "the client to notice")
        stopped = "gRPC UNAVAILABLE: control plane shutting down"
        assert (client.stats.last_error == stopped) == (death == "stopped")
        # While the control plane is away: an edit it will only serve after its restart,
        # and the client keeps answering from what it has.
        control_plane.edit(MESH.replace("VERSION", "v2"))  # echo changed, doomed deleted
        assert revision(store) == "v1"
        assert store.workload_by_ip("", "10.244.1.11") is not None
        service = store.service_by_vip("", "10.96.0.10")
        assert service is not None and len(store.endpoints(service, 80)) == 1

        # Reconnect attempts fail (and back off) while it is away; the state stays.
        attempts = client.stats.attempts
        await wait_until(lambda: client.stats.attempts >= attempts + 3, "failed reconnects")
        assert client.ready.is_set() and revision(store) == "v1"
        streams = client.stats.streams
        log_before = len(sink.log)
        await control_plane.start()
        await wait_until(lambda: revision(store) == "v2", "the edit after the reconnect")
        await wait_until(lambda: store.workload_by_uid(DOOMED_UID) is None, "the removal")
        assert client.stats.streams > streams

        # The server saw the versions the client held...
        assert control_plane.server is not None
        views = control_plane.server.clients()
        assert [dict(v.resumed) for v in views] == [held]
        # ...and sent only the difference: echo's new version and doomed's removal.
        resumed = sink.log[log_before:]
        assert (ADDRESS_TYPE_URL, frozenset({ECHO}), frozenset({DOOMED_UID})) in resumed
        assert all(not upserts for t, upserts, _ in resumed if t == AUTHORIZATION_TYPE_URL)
        applied = {name for _, upserts, _ in resumed for name in upserts}
        assert applied == {ECHO}
        assert client.subscription.held(ADDRESS_TYPE_URL).keys() == {ECHO, ECHO_SERVICE}
        assert client.stats.nacks == 0


async def test_a_certificate_without_the_dialled_name_is_refused(
    control_plane: ControlPlaneOnLoopback,
) -> None:
    sink = RecordingStore()
    config = control_plane.client_config(server_name="istiod.other-namespace.svc")
    async with XdsClient(config, sink) as client:
        await wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in client.stats.last_error, "refusal")
        assert not client.ready.is_set() and not sink.log


async def test_an_invalid_push_is_nacked_by_name_and_the_rest_applied() -> None:
    served = ResourceStore()
    good = wpb.Address(workload=wpb.Workload(uid="good", addresses=[bytes([10, 0, 0, 1])]))
    bad = wpb.Address(workload=wpb.Workload(uid="bad", addresses=[bytes([10, 0, 0])]))
    served.update(ADDRESS_TYPE_URL, {"good": good, "bad": bad})
    sink = RecordingStore()
    async with XdsServer(served, ssl=None) as server:
        await server.start("127.0.0.1", 0)
        config = XdsClientConfig(f"127.0.0.1:{server.port}", NODE, tls=None)
        async with XdsClient(config, sink) as client:
            # Ready even so: what was valid is in force, and the bad version will not come back.
            await wait_until(client.ready.is_set, "the first response of both types")
            assert client.stats.nacks == 1
            assert sink.store.workload_by_ip("", "10.0.0.1") is not None
            assert sink.store.workload_by_uid("bad") is None
            assert client.subscription.held(ADDRESS_TYPE_URL).keys() == {"good"}
            await wait_until(lambda: server.clients()[0].in_flight == 0, "the NACK")

            fixed = wpb.Address(workload=wpb.Workload(uid="bad", addresses=[bytes(16)]))
            served.update(ADDRESS_TYPE_URL, {"bad": fixed})
            await wait_until(lambda: sink.store.workload_by_uid("bad") is not None, "the fix")
            assert client.stats.nacks == 1

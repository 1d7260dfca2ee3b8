"""The control plane end to end on loopback: YAML files -> watcher -> translation -> delta xDS
to a real gRPC client; edits are pushed, a broken edit keeps the last good config."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf.struct_pb2 import Struct
from grpclib.client import Channel
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError
from xds_harness import AdsClient, ads_client

from ambient_fast.controlplane.ca import Authority
from ambient_fast.controlplane.model import ModelWatcher
from ambient_fast.controlplane.run import ControlPlane
from ambient_fast.controlplane.serving import CertificateAuthority, serving_context
from ambient_fast.controlplane.translate import TranslateOptions
from ambient_fast.identity.csr import new_csr
from ambient_fast.xds.proto.citadel_grpc import IstioCertificateServiceStub
from ambient_fast.xds.proto.citadel_pb2 import IstioCertificateRequest, IstioCertificateResponse
from ambient_fast.xds.proto.discovery_pb2 import DeltaDiscoveryResponse
from ambient_fast.xds.proto.workload_pb2 import Address
from ambient_fast.xds.resources import ADDRESS_TYPE_URL
from ambient_fast.xds.server import XdsServer

MESH = """
apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: echo, namespace: apps, labels: {app: echo, version: VERSION}}
spec: {containers: [{name: echo, image: echo}]}
"""
ECHO_UID = "Kubernetes//Pod/apps/echo"


@dataclass
class Running:
    plane: ControlPlane
    file: Path
    client: AdsClient


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    file = tmp_path / "mesh.yaml"
    file.write_text(MESH.replace("VERSION", "v1"))
    plane = ControlPlane(ModelWatcher([tmp_path]), TranslateOptions())
    plane.watcher.poll()
    server = XdsServer(plane.store, ssl=None)
    await server.start("127.0.0.1", 0)
    try:
        async with ads_client(server.port) as client:
            yield Running(plane, file, client)
    finally:
        await server.close()


def revisions(response: DeltaDiscoveryResponse) -> dict[str, str]:
    out = {}
    for resource in response.resources:
        address = Address.FromString(resource.resource.value)
        out[resource.name] = address.workload.canonical_revision
    return out


async def test_an_edit_is_pushed_to_a_connected_proxy(running: Running) -> None:
    await running.client.request(ADDRESS_TYPE_URL)
    first = await running.client.recv()
    assert revisions(first) == {ECHO_UID: "v1"}
    await running.client.ack(first)

    running.file.write_text(MESH.replace("VERSION", "v2"))
    running.plane.watcher.poll()
    pushed = await running.client.recv()
    assert revisions(pushed) == {ECHO_UID: "v2"}  # only what changed
    await running.client.ack(pushed)


async def test_a_broken_edit_keeps_the_last_good_config_and_a_fix_resumes(
    running: Running,
) -> None:
    await running.client.request(ADDRESS_TYPE_URL)
    await running.client.ack(await running.client.recv())
    version = running.plane.store.system_version

    running.file.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: [unclosed\n")
    running.plane.watcher.poll()
    assert running.plane.store.system_version == version  # nothing published
    assert running.plane.watcher.report is not None
    assert any("YAML syntax error" in str(p) for p in running.plane.watcher.report.problems)

    running.file.write_text(MESH.replace("VERSION", "v3"))
    running.plane.watcher.poll()
    assert revisions(await running.client.recv()) == {ECHO_UID: "v3"}


NODE_MESH = """
apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: on-a, namespace: apps}
spec: {nodeName: node-a, serviceAccountName: alpha, containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Pod
metadata: {name: on-b, namespace: apps}
spec: {nodeName: node-b, serviceAccountName: beta, containers: [{name: c, image: i}]}
"""


async def test_tls_xds_and_the_node_scoped_ca_on_one_port(tmp_path: Path) -> None:
    (tmp_path / "mesh").mkdir()
    (tmp_path / "mesh" / "mesh.yaml").write_text(NODE_MESH)
    state = tmp_path / "state"
    authority = Authority.self_signed(state)
    ca = CertificateAuthority(authority, state, "cluster.local")
    plane = ControlPlane(ModelWatcher([tmp_path / "mesh"]), TranslateOptions(), ca)
    plane.watcher.poll()
    server = XdsServer(
        plane.store, ssl=serving_context(authority, state, "cluster.local"), services=[ca.service]
    )
    await server.start("127.0.0.1", 0)
    # A node proxy trusts the mesh root and checks istiod's DNS name.
    client_tls = ssl.create_default_context(cadata=authority.roots_pem.decode())
    client_tls.set_alpn_protocols(["h2"])
    token = (state / "node-tokens" / "node-a.token").read_text().strip()
    # Dialled by name: the serving certificate carries istiod's DNS names (and localhost).
    channel = Channel("localhost", server.port, ssl=client_tls)
    try:
        stub = IstioCertificateServiceStub(channel)

        async def ask(identity: str) -> IstioCertificateResponse | None:
            metadata = Struct()
            metadata.update({"ImpersonatedIdentity": identity})
            request = IstioCertificateRequest(
                csr=new_csr(identity).csr_pem, validity_duration=3600, metadata=metadata
            )
            return await stub.CreateCertificate(
                request, metadata={"authorization": f"Bearer {token}"}
            )

        granted = await ask("spiffe://cluster.local/ns/apps/sa/alpha")
        assert granted is not None and len(granted.cert_chain) == 2
        with pytest.raises(GRPCError) as refused:
            await ask("spiffe://cluster.local/ns/apps/sa/beta")  # runs on node-b only
        assert refused.value.status is GrpcStatus.PERMISSION_DENIED
        by_address = ssl.create_default_context(cadata=authority.roots_pem.decode())
        by_address.check_hostname = False  # the harness dials 127.0.0.1; the chain still counts
        by_address.set_alpn_protocols(["h2"])
        async with ads_client(server.port, by_address) as client:
            await client.request(ADDRESS_TYPE_URL)
            assert len((await client.recv()).resources) == 2
    finally:
        channel.close()
        await server.close()

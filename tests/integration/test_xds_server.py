"""The delta ADS server with a real grpclib client over loopback: what a node proxy sees."""

from __future__ import annotations

import asyncio
import os
import ssl
import tempfile
import time
from collections.abc import AsyncIterator

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream
from waits import DEADLINE, wait_until
from xds_harness import NODE_ID, RawBytes, ads_client, raw_ads_stream

from ambient_fast.identity.ca import MeshCA
from ambient_fast.xds.proto.authorization_pb2 import Authorization
from ambient_fast.xds.proto.citadel_grpc import (
    IstioCertificateServiceBase,
    IstioCertificateServiceStub,
)
from ambient_fast.xds.proto.citadel_pb2 import IstioCertificateRequest, IstioCertificateResponse
from ambient_fast.xds.proto.discovery_pb2 import DeltaDiscoveryResponse
from ambient_fast.xds.proto.workload_pb2 import Address, Workload
from ambient_fast.xds.resources import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, ResourceStore
from ambient_fast.xds.server import XdsServer

ISTIOD = "spiffe://cluster.local/ns/istio-system/sa/istiod"


def address(uid: str, last_octet: int = 1) -> Address:
    return Address(workload=Workload(uid=uid, name=uid, addresses=[bytes([10, 0, 0, last_octet])]))


def names(response: DeltaDiscoveryResponse) -> set[str]:
    return {resource.name for resource in response.resources}


def versions(response: DeltaDiscoveryResponse) -> dict[str, str]:
    return {resource.name: resource.version for resource in response.resources}


@pytest.fixture
def store() -> ResourceStore:
    store = ResourceStore()
    store.update(ADDRESS_TYPE_URL, {uid: address(uid, i + 1) for i, uid in enumerate("abc")})
    store.update(AUTHORIZATION_TYPE_URL, {"ns/deny": Authorization(name="deny", namespace="ns")})
    return store


@pytest.fixture
async def server(store: ResourceStore) -> AsyncIterator[XdsServer]:
    async with XdsServer(store) as server:
        await server.start("127.0.0.1", 0)
        yield server


async def test_wildcard_subscription_gets_everything_then_only_changes(
    store: ResourceStore, server: XdsServer
) -> None:
    async with ads_client(server.port) as client:
        await client.request(ADDRESS_TYPE_URL)
        first = await client.recv()
        assert names(first) == {"a", "b", "c"}
        await client.request(AUTHORIZATION_TYPE_URL, nonce="")
        policies = await client.recv()
        assert names(policies) == {"ns/deny"}
        await client.ack(first)
        await client.ack(policies)
        await wait_until(lambda: server.clients()[0].in_flight == 0, "both ACKs processed")
        assert server.clients()[0].node_id == NODE_ID

        store.update(ADDRESS_TYPE_URL, {"b": address("b", 42)})
        pushed = await client.recv()
        assert names(pushed) == {"b"} and pushed.type_url == ADDRESS_TYPE_URL
        workload = Address()
        assert pushed.resources[0].resource.Unpack(workload)
        assert workload.workload.addresses == [bytes([10, 0, 0, 42])]


async def test_removal_is_pushed_after_store_update(
    store: ResourceStore, server: XdsServer
) -> None:
    async with ads_client(server.port) as client:
        await client.request()
        await client.ack(await client.recv())
        await wait_until(lambda: server.clients()[0].in_flight == 0, "the ACK")
        store.update(ADDRESS_TYPE_URL, removals=["c"])
        removal = await client.recv()
        assert list(removal.removed_resources) == ["c"] and not removal.resources


async def test_nack_is_logged_and_the_stream_keeps_going(
    store: ResourceStore, server: XdsServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with ads_client(server.port) as client:
        await client.request()
        await client.ack(await client.recv())
        await wait_until(lambda: server.clients()[0].in_flight == 0, "the ACK")
        store.update(ADDRESS_TYPE_URL, {"a": address("a", 99)})
        bad = await client.recv()
        await client.nack(bad, "workload a: address 10.0.0.99 clashes")
        await wait_until(lambda: "NACK" in caplog.text, "the NACK log line")
        assert "workload a: address 10.0.0.99 clashes" in caplog.text
        assert NODE_ID in caplog.text and f"nonce={bad.nonce}" in caplog.text

        # The rejected version is not resent; the next change is delivered.
        store.update(ADDRESS_TYPE_URL, {"b": address("b", 50)})
        after = await client.recv()
        assert names(after) == {"b"}


async def test_reconnect_with_initial_versions_gets_only_the_difference(
    store: ResourceStore, server: XdsServer
) -> None:
    async with ads_client(server.port) as client:
        await client.request()
        first = await client.recv()
        await client.ack(first)
    held = versions(first)
    store.update(ADDRESS_TYPE_URL, {"a": address("a", 11), "d": address("d", 4)}, removals=["b"])
    async with ads_client(server.port) as client:
        await client.request(initial=held)
        diff = await client.recv()
        assert names(diff) == {"a", "d"}
        assert list(diff.removed_resources) == ["b"]


async def test_on_demand_subscription_of_one_name(store: ResourceStore, server: XdsServer) -> None:
    async with ads_client(server.port) as client:
        await client.request(subscribe=("b",))
        only_b = await client.recv()
        assert names(only_b) == {"b"}
        await client.request(nonce=only_b.nonce, subscribe=("c",))
        assert names(await client.recv()) == {"c"}


async def test_unknown_type_url_fails_only_that_stream(
    store: ResourceStore, server: XdsServer, caplog: pytest.LogCaptureFixture
) -> None:
    cluster_type = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    async with ads_client(server.port) as healthy:
        await healthy.request()
        await healthy.ack(await healthy.recv())
        # grpclib's client may see the trailers' status only when the stream closes.
        with pytest.raises(GRPCError) as failed:
            async with ads_client(server.port) as confused:
                await confused.request(cluster_type)
                await confused.recv()
        assert failed.value.status is Status.INVALID_ARGUMENT
        assert cluster_type in (failed.value.message or "")
        assert cluster_type in caplog.text and NODE_ID in caplog.text

        await wait_until(lambda: len(server.clients()) == 1, "the failed stream to go")
        await wait_until(lambda: server.clients()[0].in_flight == 0, "the ACK")
        store.update(ADDRESS_TYPE_URL, {"a": address("a", 77)})
        assert names(await healthy.recv()) == {"a"}


async def test_malformed_request_is_invalid_argument_and_logged(
    server: XdsServer, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(GRPCError) as failed:
        async with raw_ads_stream(server.port) as stream:
            # Field 1 (node), length-delimited, length 127 with 1 byte present.
            await stream.send_message(RawBytes(b"\x0a\x7f\x00"))
            await asyncio.wait_for(stream.recv_message(), DEADLINE)
    assert failed.value.status is Status.INVALID_ARGUMENT
    assert "malformed DeltaDiscoveryRequest" in (failed.value.message or "")
    assert "malformed DeltaDiscoveryRequest" in caplog.text and "peer=127.0.0.1:" in caplog.text


async def test_client_that_never_acks_costs_one_mark_per_resource(
    store: ResourceStore, server: XdsServer
) -> None:
    async with ads_client(server.port) as client:
        await client.request()
        first = await client.recv()  # and never ACKed while the store churns
        for round_ in range(1000):
            store.update(ADDRESS_TYPE_URL, {f"w{round_ % 20}": address("w", round_ % 250 + 1)})
        view = server.clients()[0]
        assert view.in_flight == 1 and view.queued == 0
        assert view.pending == 20  # one mark per changed name, not one per update

        await client.ack(first)
        coalesced = await client.recv()
        assert names(coalesced) == {f"w{i}" for i in range(20)}
        await client.ack(coalesced)
        await wait_until(lambda: server.clients()[0].pending == 0, "the queue to drain")


async def test_push_latency_of_one_changed_resource(
    store: ResourceStore, server: XdsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    store.update(
        ADDRESS_TYPE_URL, {f"pod-{i}": address(f"pod-{i}", i % 250 + 1) for i in range(2000)}
    )
    async with ads_client(server.port) as client:
        await client.request()
        response = await client.recv()
        await client.ack(response)
        await wait_until(lambda: server.clients()[0].in_flight == 0, "the initial ACK")
        samples = []
        for i in range(20):
            started = time.perf_counter()
            store.update(ADDRESS_TYPE_URL, {"pod-7": address("pod-7", 100 + i)})
            pushed = await client.recv()
            samples.append((time.perf_counter() - started) * 1000)
            assert names(pushed) == {"pod-7"}
            await client.ack(pushed)
            await wait_until(lambda: server.clients()[0].in_flight == 0, "the ACK")
    samples.sort()
    with capsys.disabled():
        print(
            f"\nxds push latency, one changed workload of 2003, 20 pushes: "
            f"median {samples[10]:.2f} ms, max {samples[-1]:.2f} ms (goal <= 50 ms)"
        )


def _server_tls(ca: MeshCA) -> ssl.SSLContext:
    cert = ca.issue(ISTIOD)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as directory:
        chain, key = os.path.join(directory, "c.pem"), os.path.join(directory, "k.pem")
        with open(chain, "wb") as f:
            f.write(cert.chain_pem)
        with open(key, "wb") as f:
            f.write(cert.key_pem)
        context.load_cert_chain(chain, key)
    return context


def _client_tls(ca: MeshCA) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # the certificate names a SPIFFE id, not a DNS name
    context.load_verify_locations(cadata=ca.root_pem.decode())
    context.set_alpn_protocols(["h2"])
    return context


async def test_tls_with_the_mesh_root(store: ResourceStore) -> None:
    ca = MeshCA.create()
    async with XdsServer(store, ssl=_server_tls(ca)) as server:
        await server.start("127.0.0.1", 0)
        async with ads_client(server.port, _client_tls(ca)) as client:
            await client.request()
            assert names(await client.recv()) == {"a", "b", "c"}
        # A client trusting another mesh's root never gets a response.
        with pytest.raises(ssl.SSLCertVerificationError):
            async with ads_client(server.port, _client_tls(MeshCA.create())) as stranger:
                await stranger.request()


class FixedCertificates(IstioCertificateServiceBase):
    """A stand-in CA: enough to show another service shares the xDS port."""

    async def CreateCertificate(
        self, stream: Stream[IstioCertificateRequest, IstioCertificateResponse]
    ) -> None:
        request = await stream.recv_message()
        assert request is not None
        await stream.send_message(IstioCertificateResponse(cert_chain=[request.csr, "root"]))


async def test_other_services_share_the_port(store: ResourceStore) -> None:
    async with XdsServer(store, services=[FixedCertificates()]) as server:
        await server.start("127.0.0.1", 0)
        channel = Channel("127.0.0.1", server.port)
        try:
            ca = IstioCertificateServiceStub(channel)
            reply = await asyncio.wait_for(
                ca.CreateCertificate(IstioCertificateRequest(csr="csr-pem")), DEADLINE
            )
            assert list(reply.cert_chain) == ["csr-pem", "root"]
            async with ads_client(server.port) as client:
                await client.request()
                assert names(await client.recv()) == {"a", "b", "c"}
        finally:
            channel.close()

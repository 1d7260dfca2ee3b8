"""The CA on the xDS port with a real grpclib client over TLS: what a node proxy sees."""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store
from google.protobuf.struct_pb2 import Struct
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from waits import DEADLINE

from ambient_fast.controlplane.ca import (
    Authority,
    CertificateService,
    InMemoryNodeDirectory,
    NodeAuthorizer,
    NodeTokens,
    node_proxy_identity,
)
from ambient_fast.identity import Identity
from ambient_fast.identity.csr import new_csr
from ambient_fast.xds.proto.citadel_grpc import IstioCertificateServiceStub
from ambient_fast.xds.proto.citadel_pb2 import IstioCertificateRequest, IstioCertificateResponse
from ambient_fast.xds.resources import ResourceStore
from ambient_fast.xds.server import XdsServer

ISTIOD = "spiffe://cluster.local/ns/istio-system/sa/istiod"
SLEEP = Identity.of("default", "sleep")
HTTPBIN = Identity.of("default", "httpbin")


def csr(identity: Identity) -> str:
    """What ztunnel sends: a P-256 key, empty subject, one critical URI SAN."""
    return new_csr(identity).csr_pem


def server_tls(authority: Authority, directory: Path) -> ssl.SSLContext:
    served = authority.signer.issue(ISTIOD)
    cert, key = served.write(directory, "istiod")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def client_tls(authority: Authority) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # the server certificate names a SPIFFE id, not a DNS name
    context.load_verify_locations(cadata=authority.roots_pem.decode())
    context.set_alpn_protocols(["h2"])
    return context


@dataclass
class ControlPlane:
    """What `ambient-fast controlplane` wires up: state dir, root, tokens, CA on the xDS port."""

    authority: Authority
    tokens: NodeTokens
    directory: InMemoryNodeDirectory
    server: XdsServer

    def token(self, node: str) -> str:
        return self.tokens.token_path(node).read_text().strip()


@asynccontextmanager
async def control_plane(
    state: Path, directory: InMemoryNodeDirectory
) -> AsyncIterator[ControlPlane]:
    authority = Authority.self_signed(state)
    tokens = NodeTokens.open(state)
    tokens.ensure("node-a", node_proxy_identity())
    tokens.ensure("node-b", node_proxy_identity())
    service = CertificateService(authority, tokens, NodeAuthorizer(directory))
    tls = server_tls(authority, state / "serving")
    async with XdsServer(ResourceStore(), ssl=tls, services=[service]) as server:
        await server.start("127.0.0.1", 0)
        yield ControlPlane(authority, tokens, directory, server)


class NodeProxy:
    """A node proxy's CA client: one TLS connection, `authorization: Bearer <node token>`."""

    def __init__(self, channel: Channel, authorization: str | None) -> None:
        self._ca = IstioCertificateServiceStub(channel)
        self._authorization = authorization

    async def fetch(
        self, identity: Identity, *, validity: int = 0, impersonate: bool = True, pem: str = ""
    ) -> IstioCertificateResponse:
        metadata = Struct()
        if impersonate:
            metadata.update({"ImpersonatedIdentity": str(identity)})
        request = IstioCertificateRequest(
            csr=pem or csr(identity), validity_duration=validity, metadata=metadata
        )
        headers = {"authorization": self._authorization} if self._authorization else None
        return await asyncio.wait_for(
            self._ca.CreateCertificate(request, metadata=headers), DEADLINE
        )

    async def refused(
        self, identity: Identity, *, impersonate: bool = True, pem: str = ""
    ) -> GRPCError:
        with pytest.raises(GRPCError) as caught:
            await self.fetch(identity, impersonate=impersonate, pem=pem)
        return caught.value


@asynccontextmanager
async def node_proxy(plane: ControlPlane, authorization: str | None) -> AsyncIterator[NodeProxy]:
    channel = Channel("127.0.0.1", plane.server.port, ssl=client_tls(plane.authority))
    try:
        yield NodeProxy(channel, authorization)
    finally:
        channel.close()


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    # sleep runs on node-a, httpbin on node-b.
    directory = InMemoryNodeDirectory([("node-a", SLEEP), ("node-b", HTTPBIN)])
    async with control_plane(tmp_path / "state", directory) as plane:
        yield plane


def verified_leaf(
    response: IstioCertificateResponse, roots: tuple[x509.Certificate, ...]
) -> x509.Certificate:
    """Verifies the chain as a TLS peer would (leaf first, roots last); returns the leaf."""
    certs = [x509.load_pem_x509_certificate(pem.encode()) for pem in response.cert_chain]
    verifier = PolicyBuilder().store(Store(list(roots))).build_client_verifier()
    verifier.verify(certs[0], certs[1:])
    assert certs[-1] in roots
    return certs[0]


async def test_node_proxy_gets_a_certificate_for_a_pod_on_its_node(plane: ControlPlane) -> None:
    async with node_proxy(plane, f"Bearer {plane.token('node-a')}") as ztunnel:
        response = await ztunnel.fetch(SLEEP, validity=3600)
    leaf = verified_leaf(response, plane.authority.roots)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(SLEEP)]
    lifetime = leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(minutes=59) < lifetime <= datetime.timedelta(hours=1)


async def test_own_identity_needs_no_impersonation_and_gives_nothing_else(
    plane: ControlPlane,
) -> None:
    async with node_proxy(plane, f"Bearer {plane.token('node-a')}") as ztunnel:
        own = await ztunnel.fetch(node_proxy_identity(), impersonate=False)
        error = await ztunnel.refused(SLEEP, impersonate=False)
    leaf = verified_leaf(own, plane.authority.roots)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(node_proxy_identity())]
    assert error.status == Status.PERMISSION_DENIED and "its own identity" in str(error.message)


async def test_eight_concurrent_fetches_on_one_connection(plane: ControlPlane) -> None:
    # ztunnel runs at most 8 CA fetches at once (reference 02).
    plane.directory.add_pod("node-a", HTTPBIN)
    async with node_proxy(plane, f"Bearer {plane.token('node-a')}") as ztunnel:
        responses = await asyncio.gather(*(ztunnel.fetch(i) for i in [SLEEP, HTTPBIN] * 4))
    for response in responses:
        verified_leaf(response, plane.authority.roots)


async def test_other_nodes_identity_is_permission_denied(
    plane: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    async with node_proxy(plane, f"Bearer {plane.token('node-a')}") as ztunnel:
        with caplog.at_level(logging.WARNING, "ambient_fast.controlplane.ca"):
            error = await ztunnel.refused(HTTPBIN)
        assert error.status == Status.PERMISSION_DENIED
        assert str(HTTPBIN) in str(error.message) and "node-a" in str(error.message)
        assert any(
            "PERMISSION_DENIED" in r.getMessage() and "caller=node node-a" in r.getMessage()
            for r in caplog.records
        )
        # The same connection still gets what it may have; node-b gets its own pods.
        verified_leaf(await ztunnel.fetch(SLEEP), plane.authority.roots)
    async with node_proxy(plane, f"Bearer {plane.token('node-b')}") as other:
        verified_leaf(await other.fetch(HTTPBIN), plane.authority.roots)


async def test_csr_for_another_identity_than_impersonated_is_refused(
    plane: ControlPlane,
) -> None:
    async with node_proxy(plane, f"Bearer {plane.token('node-a')}") as ztunnel:
        error = await ztunnel.refused(SLEEP, pem=csr(HTTPBIN))
    assert error.status == Status.INVALID_ARGUMENT and str(HTTPBIN) in str(error.message)


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (None, "missing authorization metadata"),
        ("Bearer bm90LWEtdG9rZW4", "unknown or revoked node token"),
        ("Basic dXNlcjpwYXNz", "not 'Bearer <node token>'"),
    ],
)
async def test_unknown_caller_is_unauthenticated(
    plane: ControlPlane, authorization: str | None, reason: str
) -> None:
    async with node_proxy(plane, authorization) as stranger:
        error = await stranger.refused(SLEEP)
    assert error.status == Status.UNAUTHENTICATED and reason in str(error.message)


async def test_revoked_token_is_unauthenticated(plane: ControlPlane) -> None:
    authorization = f"Bearer {plane.token('node-a')}"
    plane.tokens.revoke("node-a")
    async with node_proxy(plane, authorization) as ztunnel:
        assert (await ztunnel.refused(SLEEP)).status == Status.UNAUTHENTICATED


async def test_malformed_csr_is_invalid_argument(plane: ControlPlane) -> None:
    async with node_proxy(plane, f"Bearer {plane.token('node-a')}") as ztunnel:
        error = await ztunnel.refused(SLEEP, pem="-----BEGIN CERTIFICATE REQUEST-----\ngarbage")
        assert error.status == Status.INVALID_ARGUMENT
        assert str(error.message).startswith("malformed CSR:")
        verified_leaf(await ztunnel.fetch(SLEEP), plane.authority.roots)


async def test_persisted_root_and_tokens_are_reused_after_restart(tmp_path: Path) -> None:
    directory = InMemoryNodeDirectory([("node-a", SLEEP)])
    async with control_plane(tmp_path, directory) as first:
        token = first.token("node-a")
        async with node_proxy(first, f"Bearer {token}") as ztunnel:
            before = await ztunnel.fetch(SLEEP)
        root = first.authority.roots_pem
    async with control_plane(tmp_path, directory) as restarted:
        assert restarted.authority.roots_pem == root
        assert restarted.token("node-a") == token
        async with node_proxy(restarted, f"Bearer {token}") as ztunnel:
            after = await ztunnel.fetch(SLEEP)
        # Certificates from before the restart still chain to the (same) root, and new ones too.
        verified_leaf(before, restarted.authority.roots)
        verified_leaf(after, restarted.authority.roots)
        assert before.cert_chain[-1] == after.cert_chain[-1]

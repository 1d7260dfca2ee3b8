"""The node side of the CA against our control plane's CA on loopback: TLS to istiod's name,
node tokens, impersonation, refusals, backoff, and rotation of 10 s certificates."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from grpclib.const import Status
from waits import DEADLINE, wait_until

from ambient_fast.controlplane.ca import (
    Authority,
    CertificateService,
    InMemoryNodeDirectory,
    NodeAuthorizer,
    NodeTokens,
    ValidityBounds,
    node_proxy_identity,
)
from ambient_fast.controlplane.serving import serving_context
from ambient_fast.identity import Identity
from ambient_fast.identity.ca_client import CaClient, TokenFile
from ambient_fast.identity.certificate import VerifiedCertificate
from ambient_fast.identity.csr import new_csr
from ambient_fast.identity.issuer import CaRefused, CaUnavailable
from ambient_fast.identity.manager import CertificateManager, CertificateUnavailable
from ambient_fast.identity.schedule import Backoff
from ambient_fast.xds.resources import ResourceStore
from ambient_fast.xds.server import XdsServer

SLEEP = Identity.of("apps", "sleep")  # runs on node-a
HTTPBIN = Identity.of("apps", "httpbin")  # runs on node-b only


@dataclass
class Plane:
    authority: Authority
    tokens: NodeTokens
    state: Path
    port: int

    def token_file(self, node: str) -> TokenFile:
        return TokenFile(self.tokens.token_path(node))

    def client(
        self,
        node: str = "node-a",
        *,
        validity: datetime.timedelta = datetime.timedelta(hours=24),
        server_name: str | None = None,
    ) -> CaClient:
        # Dialled by address; the serving certificate is checked for istiod's DNS name.
        return CaClient(
            f"127.0.0.1:{self.port}",
            self.authority.roots_pem,
            self.token_file(node),
            validity=validity,
            server_name=server_name,
        )


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    state = tmp_path / "state"
    authority = Authority.self_signed(state)
    tokens = NodeTokens.open(state)
    for node in ("node-a", "node-b"):
        tokens.ensure(node, node_proxy_identity())
    directory = InMemoryNodeDirectory([("node-a", SLEEP), ("node-b", HTTPBIN)])
    # The CA's default minimum lifetime is 10 min; rotation tests ask for 10 s.
    bounds = ValidityBounds(minimum=datetime.timedelta(seconds=5))
    service = CertificateService(authority, tokens, NodeAuthorizer(directory), bounds)
    tls = serving_context(authority, state, "cluster.local")
    async with XdsServer(ResourceStore(), ssl=tls, services=[service]) as server:
        await server.start("127.0.0.1", 0)
        yield Plane(authority, tokens, state, server.port)


async def test_a_pod_on_this_node_gets_its_certificate(plane: Plane) -> None:
    client = plane.client(validity=datetime.timedelta(hours=1))
    try:
        async with CertificateManager(client, plane.authority.roots_pem) as manager:
            cert = await asyncio.wait_for(manager.certificate(SLEEP), DEADLINE)
    finally:
        client.close()
    assert cert.tls_identity.spiffe_id == str(SLEEP)
    leaf = x509.load_pem_x509_certificate(cert.chain_pem)
    lifetime = leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(minutes=59) < lifetime <= datetime.timedelta(hours=1)
    assert cert.roots_pem == plane.authority.roots_pem


async def test_another_nodes_identity_is_refused_and_backed_off(
    plane: Plane, caplog: pytest.LogCaptureFixture
) -> None:
    client = plane.client()
    try:
        with pytest.raises(CaRefused) as refused:
            await client.create_certificate(HTTPBIN, new_csr(HTTPBIN).csr_pem)
        assert refused.value.status is Status.PERMISSION_DENIED
        assert str(HTTPBIN) in str(refused.value) and "node-a" in str(refused.value)
        assert "PERMISSION_DENIED" in str(refused.value)

        backoff = Backoff(initial=0.2, jitter=0.0)
        async with CertificateManager(client, plane.authority.roots_pem, backoff=backoff) as m:
            with caplog.at_level(logging.WARNING, "ambient_fast.identity"):
                with pytest.raises(CertificateUnavailable) as caught:
                    await asyncio.wait_for(m.certificate(HTTPBIN), DEADLINE)
                assert "PERMISSION_DENIED" in str(caught.value)
                assert str(HTTPBIN) in str(caught.value)
                # The manager keeps asking, ever more slowly: 0.2 s, then 0.4 s, then 0.8 s.
                await wait_until(lambda: m.status()[0].failures >= 3, "three refusals")
            [status] = m.status()
            assert status.state == "Unavailable" and m.current(HTTPBIN) is None
            retries = [r.getMessage() for r in caplog.records if "retry in" in r.getMessage()]
            assert [r.split("retry in ")[1].split(" s")[0] for r in retries[:3]] == [
                "0.2",
                "0.4",
                "0.8",
            ]
            # Its own pod's identity is unaffected on the same connection.
            assert (await asyncio.wait_for(m.certificate(SLEEP), DEADLINE)).identity == SLEEP
    finally:
        client.close()


async def test_unknown_token_is_unauthenticated_and_a_reissued_token_is_picked_up(
    plane: Plane,
) -> None:
    client = plane.client()
    try:
        await client.create_certificate(SLEEP, new_csr(SLEEP).csr_pem)
        plane.tokens.revoke("node-a")
        plane.tokens.token_path("node-a").write_text("not-a-token\n")
        with pytest.raises(CaRefused) as caught:
            await client.create_certificate(SLEEP, new_csr(SLEEP).csr_pem)
        assert caught.value.status is Status.UNAUTHENTICATED
        plane.tokens.issue("node-a", node_proxy_identity())  # rewrites the token file
        chain = await client.create_certificate(SLEEP, new_csr(SLEEP).csr_pem)
        assert len(chain) == 2
    finally:
        client.close()


async def test_a_ca_that_is_not_istiod_is_not_trusted(plane: Plane) -> None:
    client = plane.client(server_name="not-istiod.example")
    try:
        with pytest.raises(CaUnavailable) as caught:
            await client.create_certificate(SLEEP, new_csr(SLEEP).csr_pem)
        assert str(SLEEP) in str(caught.value) and "not-istiod.example" in str(caught.value)
    finally:
        client.close()


async def test_a_missing_token_file_is_a_clear_error(plane: Plane) -> None:
    client = CaClient(
        f"127.0.0.1:{plane.port}", plane.authority.roots_pem, TokenFile(plane.state / "nope")
    )
    with pytest.raises(CaUnavailable, match="token"):
        await client.create_certificate(SLEEP, new_csr(SLEEP).csr_pem)
    client.close()


async def test_rotation_of_10s_certificates_keeps_a_valid_certificate(plane: Plane) -> None:
    client = plane.client(validity=datetime.timedelta(seconds=10))
    installed: list[tuple[VerifiedCertificate, float]] = []
    gaps: list[str] = []

    def changed(_: Identity, cert: VerifiedCertificate | None) -> None:
        if cert is None:
            gaps.append(f"certificate withdrawn at {time.time()}")
        else:
            installed.append((cert, time.time()))

    try:
        async with CertificateManager(client, plane.authority.roots_pem) as manager:
            manager.subscribe(changed)
            first = await asyncio.wait_for(manager.certificate(SLEEP), DEADLINE)
            assert 9 < first.not_after - time.time() <= 10  # the 10 s asked for, not clamped

            async def sample() -> None:
                # What the data path would pick up, every 10 ms: always a valid certificate.
                while True:
                    cert, now = manager.current(SLEEP), time.time()
                    if cert is None or cert.not_after <= now:
                        gaps.append(f"no valid certificate at {now}")
                    await asyncio.sleep(0.01)

            sampler = asyncio.create_task(sample())
            try:
                # Refreshed at half-life, about every 5 s: two rotations within ~10 s.
                await wait_until(lambda: len(installed) >= 3, "two rotations", within=20)
            finally:
                sampler.cancel()
    finally:
        client.close()
    assert gaps == []
    assert len({cert.serial for cert, _ in installed}) == 3
    for (old, _), (_, replaced_at) in itertools.pairwise(installed):
        # Each replacement came around the middle of its predecessor's 10 s, not at the end.
        assert 3.5 < old.not_after - replaced_at < 6

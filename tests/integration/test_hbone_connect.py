"""What an HBONE server answers: 200, 400 for malformed CONNECTs, 401 on policy denial, 503
when the upstream is unreachable. Malformed requests come from a hand-driven HTTP/2 client
(Python's ssl + the h2 package) holding a valid mesh certificate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import h2.errors
import pytest
from hbone_harness import (
    CLIENT_ID,
    SERVER_ID,
    Answer,
    Loopback,
    RawH2,
    client_tls_context,
    connect_headers,
    loopback,
    unused_port,
)
from waits import DEADLINE, wait_until

from ambient_fast.hbone import (
    Accept,
    HboneRejected,
    HboneRoute,
    InboundTunnel,
    Reject,
)


@pytest.fixture
async def raw(mesh: Loopback) -> AsyncIterator[RawH2]:
    context = client_tls_context(mesh.ca.root_pem, mesh.ca.issue(CLIENT_ID))
    raw = await RawH2.connect(mesh.server.server.address, context)
    try:
        yield raw
    finally:
        await raw.close()


async def test_hand_driven_connect_is_accepted(mesh: Loopback, raw: RawH2) -> None:
    # The baseline for the 400s below: the same client, a well-formed CONNECT.
    host, port = mesh.backend_address
    assert await raw.request(connect_headers(f"{host}:{port}")) == Answer(status=200)
    [inbound] = mesh.server.tunnels
    assert inbound.peer_identity == CLIENT_ID


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(connect_headers("127.0.0.1:80", method="GET"), id="GET"),
        pytest.param(connect_headers("127.0.0.1:80", method="POST"), id="POST"),
        pytest.param(connect_headers("foo"), id="no-port"),
        pytest.param(connect_headers("127.0.0.1:0"), id="port-0"),
        pytest.param(connect_headers("1.2.3.4:99999"), id="port-99999"),
        pytest.param(connect_headers("bad_host:80"), id="bad-hostname"),
    ],
)
async def test_malformed_connect_gets_400(
    mesh: Loopback, raw: RawH2, headers: list[tuple[str, str]]
) -> None:
    assert await raw.request(headers) == Answer(status=400)
    assert mesh.server.tunnels == []  # never reached the handler, so nothing was dialled


async def test_400_names_the_bad_authority_and_keeps_the_connection(
    mesh: Loopback, raw: RawH2, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    assert await raw.request(connect_headers("foo")) == Answer(status=400)
    assert await raw.request(connect_headers("1.2.3.4:99999")) == Answer(status=400)
    assert any("'foo'" in r.getMessage() and "400" in r.getMessage() for r in caplog.records)
    # A bad request is the stream's problem, not the connection's.
    host, port = mesh.backend_address
    assert await raw.request(connect_headers(f"{host}:{port}")) == Answer(status=200)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([(":method", "CONNECT")], id="no-authority"),
        pytest.param(connect_headers("fd00::1:80"), id="unbracketed-v6"),
        pytest.param(connect_headers("a b:80"), id="space"),
    ],
)
async def test_connect_the_http2_layer_finds_malformed_is_refused(
    mesh: Loopback, raw: RawH2, headers: list[tuple[str, str]]
) -> None:
    # The h2 crate resets these (RFC 9113 8.1.1 malformed request) before our code sees them.
    answer = await raw.request(headers)
    assert answer in (Answer(status=400), Answer(reset=h2.errors.ErrorCodes.PROTOCOL_ERROR))
    assert mesh.server.tunnels == []
    host, port = mesh.backend_address
    assert await raw.request(connect_headers(f"{host}:{port}")) == Answer(status=200)


async def test_policy_denial_is_401_at_the_client() -> None:
    async def deny(tunnel: InboundTunnel) -> Accept | Reject:
        return Reject(401, f"{tunnel.peer_identity} may not reach {tunnel.target}")

    async with loopback(handler=deny) as mesh:
        with pytest.raises(HboneRejected) as caught:
            await mesh.client.open(mesh.route(), [])
        assert caught.value.status == 401
        assert "401" in str(caught.value)
        assert "{}:{}".format(*mesh.backend_address) in str(caught.value)
        # The pool connection survives a rejected stream.
        assert mesh.client.connection_count() == 1


async def test_unreachable_upstream_is_503(mesh: Loopback) -> None:
    closed = f"127.0.0.1:{unused_port()}"
    route = HboneRoute(mesh.server.destination, mesh.client_identity, (SERVER_ID,), closed)
    with pytest.raises(HboneRejected) as caught:
        await mesh.client.open(route, [])
    assert caught.value.status == 503
    assert closed in str(caught.value)
    # The handler saw the CONNECT, its dial failed, and no tunnel was ever pumped.
    await wait_until(lambda: len(mesh.server.tunnels) == 1, "the CONNECT to reach the handler")
    assert mesh.server.results == []


async def test_handler_failure_is_503_not_a_hang() -> None:
    async def broken(tunnel: InboundTunnel) -> Accept | Reject:
        raise RuntimeError("policy store unavailable")

    async with loopback(handler=broken) as mesh:
        with pytest.raises(HboneRejected) as caught:
            await asyncio.wait_for(mesh.client.open(mesh.route(), []), DEADLINE)
        assert caught.value.status == 503

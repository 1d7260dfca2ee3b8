"""Who may talk HBONE: SPIFFE verification on both sides, and peers that are not HBONE at all
(no certificate, garbage, plaintext HTTP, a stalled handshake) are dropped while the server
keeps serving everyone else.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator

import pytest
from hbone_harness import (
    CLIENT_ID,
    SERVER_ID,
    Loopback,
    RawH2,
    client_tls_context,
    connect_headers,
    loopback,
    recv_exactly,
    recv_to_eof,
    sendall,
    tls_identity,
    tunnel_server,
)
from waits import DEADLINE, wait_until

from ambient_fast.hbone import HboneError, HboneRoute, Http2Settings
from ambient_fast.identity.ca import MeshCA

OTHER_TD_SERVER = "spiffe://evil.example/ns/server/sa/echo"
OTHER_TD_CLIENT = "spiffe://evil.example/ns/client/sa/sleep"
NATIVE_LOGGER = "ambient_fast_native"


async def still_serves(mesh: Loopback) -> None:
    """A well-behaved client still gets a working tunnel."""
    tunnel = await mesh.open()
    await sendall(tunnel.app, b"ping")
    assert await recv_exactly(tunnel.upstream, 4) == b"ping"
    await sendall(tunnel.upstream, b"pong")
    assert await recv_exactly(tunnel.app, 4) == b"pong"


def native_warning_about(caplog: pytest.LogCaptureFixture, peer: str, words: str) -> bool:
    return any(
        r.name.startswith(NATIVE_LOGGER)
        and r.levelno >= logging.WARNING
        and peer in r.getMessage()
        and words in r.getMessage()
        for r in caplog.records
    )


# --- the client verifies the server -------------------------------------------------------


async def test_client_refuses_a_server_with_another_identity(mesh: Loopback) -> None:
    expected = "spiffe://cluster.local/ns/server/sa/not-echo"
    with pytest.raises(HboneError) as caught:
        await mesh.client.open(mesh.route(expected=(expected,)), [])
    assert expected in str(caught.value)  # the error names what was expected
    assert mesh.server.tunnels == []
    assert mesh.client.connection_count() == 0
    await still_serves(mesh)


async def test_client_refuses_a_server_from_another_ca(mesh: Loopback) -> None:
    # Same SPIFFE id, but signed by a CA this mesh does not trust.
    impostor = tls_identity(MeshCA.create(), SERVER_ID)
    async with tunnel_server(impostor) as rogue:
        route = HboneRoute(rogue.destination, mesh.client_identity, (SERVER_ID,), "127.0.0.1:9")
        with pytest.raises(HboneError, match="invalid peer certificate"):
            await mesh.client.open(route, [])
        assert rogue.tunnels == []


async def test_client_refuses_a_server_from_another_trust_domain(mesh: Loopback) -> None:
    # Signed by our own CA, but the identity is in another trust domain.
    async with tunnel_server(tls_identity(mesh.ca, OTHER_TD_SERVER)) as rogue:
        route = HboneRoute(rogue.destination, mesh.client_identity, (SERVER_ID,), "127.0.0.1:9")
        with pytest.raises(HboneError) as caught:
            await mesh.client.open(route, [])
        assert OTHER_TD_SERVER in str(caught.value)
        assert rogue.tunnels == []


# --- the server verifies the client -------------------------------------------------------


@pytest.mark.parametrize(
    ("issuer", "spiffe_id", "reason"),
    [
        pytest.param("mesh", OTHER_TD_CLIENT, "not in trust domain", id="other-trust-domain"),
        pytest.param("rogue", OTHER_TD_CLIENT, "invalid peer certificate", id="other-ca"),
        pytest.param("rogue", CLIENT_ID, "invalid peer certificate", id="other-ca-our-identity"),
    ],
)
async def test_server_refuses_a_client_outside_the_mesh(
    mesh: Loopback, caplog: pytest.LogCaptureFixture, issuer: str, spiffe_id: str, reason: str
) -> None:
    # The outsider trusts our root, so it is the server that must say no.
    outsider = tls_identity(mesh.ca if issuer == "mesh" else MeshCA.create(), spiffe_id, mesh.ca)
    with pytest.raises(HboneError, match="alert"):
        await mesh.client.open(mesh.route(identity=outsider), [])
    assert mesh.server.tunnels == []
    await wait_until(
        lambda: native_warning_about(caplog, "127.0.0.1:", reason),
        f"the server to log the refused handshake ({reason})",
    )
    await still_serves(mesh)
    assert [t.peer_identity for t in mesh.server.tunnels] == [CLIENT_ID]


async def test_server_refuses_a_client_without_certificate(
    mesh: Loopback, caplog: pytest.LogCaptureFixture
) -> None:
    context = client_tls_context(mesh.ca.root_pem, cert=None)
    host, port = mesh.backend_address
    sock = socket.create_connection(mesh.server.server.address, timeout=DEADLINE)
    peer = "{}:{}".format(*sock.getsockname())
    with pytest.raises((ssl.SSLError, ConnectionError)):
        raw = await RawH2.connect(mesh.server.server.address, context, sock)
        try:
            await raw.request(connect_headers(f"{host}:{port}"))
        finally:
            await raw.close()
    sock.close()
    await wait_until(
        lambda: native_warning_about(caplog, peer, "TLS handshake"),
        f"a log line naming {peer}",
    )
    assert mesh.server.tunnels == []
    await still_serves(mesh)


# --- not HBONE at all ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "junk",
    [
        pytest.param(b"\x00\xff garbage \x16\x03" * 100, id="garbage"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", id="plaintext-http"),
        pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", id="cleartext-h2-preface"),
    ],
)
async def test_non_tls_bytes_are_closed_while_a_tunnel_keeps_working(
    mesh: Loopback, junk: bytes
) -> None:
    tunnel = await mesh.open()  # opened first: must survive the junk on its port
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, mesh.server.server.address)
        await sendall(sock, junk)
        # At most a TLS alert record (content type 21), then the server closes.
        answer = await recv_to_eof(sock)
        assert answer == b"" or answer[0] == 21, answer[:64]
        assert b"HTTP" not in answer
    await sendall(tunnel.app, b"still here")
    assert await recv_exactly(tunnel.upstream, 10) == b"still here"
    await sendall(tunnel.upstream, b"me too")
    assert await recv_exactly(tunnel.app, 6) == b"me too"
    assert mesh.server.tunnels[1:] == []


HANDSHAKE_TIMEOUT = 0.5


@pytest.fixture
async def impatient() -> AsyncIterator[Loopback]:
    async with loopback(settings=Http2Settings(handshake_timeout=HANDSHAKE_TIMEOUT)) as mesh:
        yield mesh


async def test_stalled_tcp_peer_is_dropped_after_the_handshake_timeout(
    impatient: Loopback, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    with socket.socket() as staller:
        staller.setblocking(False)
        started = time.monotonic()
        await loop.sock_connect(staller, impatient.server.server.address)
        peer = "{}:{}".format(*staller.getsockname())
        # Others are served while the staller holds its connection open.
        await still_serves(impatient)
        assert await recv_to_eof(staller) == b""
        elapsed = time.monotonic() - started
    assert HANDSHAKE_TIMEOUT * 0.8 <= elapsed < DEADLINE
    await wait_until(
        lambda: native_warning_about(caplog, peer, "timed out"), f"a log line naming {peer}"
    )


async def test_peer_stalling_after_tls_is_dropped_after_the_handshake_timeout(
    impatient: Loopback, caplog: pytest.LogCaptureFixture
) -> None:
    # TLS completes with a valid certificate, then no HTTP/2 preface ever comes.
    context = client_tls_context(impatient.ca.root_pem, impatient.ca.issue(CLIENT_ID))
    started = time.monotonic()
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(*impatient.server.server.address, ssl=context), DEADLINE
    )
    try:
        peer = "{}:{}".format(*writer.get_extra_info("sockname"))
        await still_serves(impatient)
        with pytest.raises((ConnectionError, ssl.SSLError)):
            while True:  # the server's SETTINGS may come first; then it must close
                if not await asyncio.wait_for(reader.read(65536), DEADLINE):
                    raise ConnectionResetError("EOF")
        elapsed = time.monotonic() - started
    finally:
        writer.close()
    assert HANDSHAKE_TIMEOUT * 0.8 <= elapsed < DEADLINE
    await wait_until(
        lambda: native_warning_about(caplog, peer, "timed out"), f"a log line naming {peer}"
    )
    assert any(CLIENT_ID in r.getMessage() for r in caplog.records if peer in r.getMessage())

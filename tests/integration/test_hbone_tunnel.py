"""HBONE tunnels on loopback with real certificates: identity, headers, half-close, resets
and integrity. Each test holds both plaintext ends: client app <-> mTLS HTTP/2 <-> upstream.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
import socket
import time
from typing import Any

import pytest
from hbone_harness import (
    CLIENT_ID,
    Loopback,
    TunnelEnds,
    dial,
    dial_target,
    listening_socket,
    loopback,
    recv_exactly,
    recv_to_eof,
    reset,
    sendall,
)
from waits import DEADLINE

from ambient_fast.hbone import Accept, HboneError, InboundTunnel, Reject
from ambient_fast.hbone.headers import Baggage, forwarded, traceparent
from ambient_fast.pumps import PumpCut
from ambient_fast.splice import SpliceRelay


async def pump_counts(tunnel: TunnelEnds) -> tuple[int, int]:
    """The client side's (app -> tunnel, tunnel -> app) byte counts, once the tunnel ends."""
    result = await asyncio.wait_for(tunnel.pumping, DEADLINE)
    return result.sent, result.received


async def test_round_trip_with_real_certificates(mesh: Loopback) -> None:
    tunnel = await mesh.open()
    await sendall(tunnel.app, b"ping")
    assert await recv_exactly(tunnel.upstream, 4) == b"ping"
    await sendall(tunnel.upstream, b"pong!")
    assert await recv_exactly(tunnel.app, 5) == b"pong!"
    tunnel.app.shutdown(socket.SHUT_WR)
    assert await recv_to_eof(tunnel.upstream) == b""
    tunnel.upstream.close()
    assert await recv_to_eof(tunnel.app) == b""
    # (app -> tunnel, tunnel -> app) on the client, (to upstream, to peer) on the server.
    assert await pump_counts(tunnel) == (4, 5)
    [result] = await mesh.server.result_count(1)
    assert (result.to_upstream, result.to_peer, result.error) == (4, 5, None)


async def test_server_sees_the_client_spiffe_identity(mesh: Loopback) -> None:
    await mesh.open()
    [inbound] = mesh.server.tunnels
    assert inbound.peer_identity == CLIENT_ID == mesh.client_identity.spiffe_id
    assert (inbound.target.host, inbound.target.port) == mesh.backend_address
    assert inbound.peer_addr[0] == "127.0.0.1"
    assert inbound.local_addr == mesh.server.server.address


async def test_hbone_headers_arrive_at_the_server(mesh: Loopback) -> None:
    baggage = Baggage("Kubernetes", "client", "deployment", "sleep", "sleep", "v1")
    trace = traceparent()
    await mesh.open(
        [
            ("baggage", baggage.encode()),
            ("forwarded", forwarded("10.1.2.3", 40000, "echo.server.svc.cluster.local")),
            ("traceparent", trace),
        ]
    )
    [inbound] = mesh.server.tunnels
    assert Baggage.decode(inbound.header("baggage") or "") == baggage
    forwarded_header = inbound.header("forwarded")
    assert forwarded_header == 'for="10.1.2.3:40000";host=echo.server.svc.cluster.local'
    assert inbound.header("traceparent") == trace


@pytest.mark.parametrize("first", ["client", "server"])
async def test_half_close_keeps_the_other_direction_open(mesh: Loopback, first: str) -> None:
    tunnel = await mesh.open()
    # `closer` sends FIN first; `other` keeps writing after seeing it.
    closer, other = (
        (tunnel.app, tunnel.upstream) if first == "client" else (tunnel.upstream, tunnel.app)
    )
    await sendall(closer, b"request")
    closer.shutdown(socket.SHUT_WR)
    assert await recv_to_eof(other) == b"request"
    # Written after the peer's FIN, in two pieces with a round trip between: still delivered.
    await sendall(other, b"late ")
    assert await recv_exactly(closer, 5) == b"late "
    await sendall(other, b"reply")
    assert await recv_exactly(closer, 5) == b"reply"
    other.shutdown(socket.SHUT_WR)
    assert await recv_to_eof(closer) == b""
    client_counts = await pump_counts(tunnel)
    [result] = await mesh.server.result_count(1)
    assert result.error is None
    if first == "client":
        assert client_counts == (7, 10)
        assert (result.to_upstream, result.to_peer) == (7, 10)
    else:
        assert client_counts == (10, 7)
        assert (result.to_upstream, result.to_peer) == (10, 7)


async def test_both_sides_close_at_once(mesh: Loopback) -> None:
    tunnel = await mesh.open()
    await asyncio.gather(sendall(tunnel.app, b"a" * 1000), sendall(tunnel.upstream, b"b" * 2000))
    tunnel.app.shutdown(socket.SHUT_WR)
    tunnel.upstream.shutdown(socket.SHUT_WR)
    assert await recv_to_eof(tunnel.upstream) == b"a" * 1000
    assert await recv_to_eof(tunnel.app) == b"b" * 2000
    assert await pump_counts(tunnel) == (1000, 2000)


async def test_reset_by_the_client_resets_the_upstream(mesh: Loopback) -> None:
    tunnel = await mesh.open()
    await sendall(tunnel.app, b"hello")
    assert await recv_exactly(tunnel.upstream, 5) == b"hello"
    reset(tunnel.app)
    with pytest.raises(ConnectionResetError):
        await recv_to_eof(tunnel.upstream)
    with pytest.raises(HboneError):
        await pump_counts(tunnel)
    [result] = await mesh.server.result_count(1)
    assert result.error is not None


async def test_reset_by_the_upstream_resets_the_client(mesh: Loopback) -> None:
    tunnel = await mesh.open()
    await sendall(tunnel.upstream, b"hello")
    assert await recv_exactly(tunnel.app, 5) == b"hello"
    reset(tunnel.upstream)
    with pytest.raises(ConnectionResetError):
        await recv_to_eof(tunnel.app)
    with pytest.raises(HboneError, match="hbone stream"):
        await pump_counts(tunnel)
    [result] = await mesh.server.result_count(1)
    assert result.error is not None


@pytest.mark.parametrize("moved", [0, 300_000], ids=["idle", "moved"])
async def test_a_reset_fails_both_pumps_with_the_bytes_they_moved(
    mesh: Loopback, moved: int
) -> None:
    tunnel = await mesh.open()
    payload = random.randbytes(moved)
    await sendall(tunnel.app, payload)
    assert await recv_exactly(tunnel.upstream, moved) == payload
    await sendall(tunnel.upstream, payload[: moved // 2])
    assert await recv_exactly(tunnel.app, moved // 2) == payload[: moved // 2]
    reset(tunnel.upstream)
    with pytest.raises(ConnectionResetError):
        await recv_to_eof(tunnel.app)
    with pytest.raises(HboneError, match="hbone stream") as failure:
        await pump_counts(tunnel)
    assert failure.value.counts == (moved, moved // 2)  # (sent, received)
    [result] = await mesh.server.result_count(1)
    assert result.error is not None and result.error.startswith("plaintext socket")
    assert (result.to_upstream, result.to_peer) == (moved, moved // 2)


async def test_a_vanishing_hbone_peer_resets_both_plaintext_ends(mesh: Loopback) -> None:
    # The client reaches the HBONE server through a relay we can cut with a reset.
    loop = asyncio.get_running_loop()
    relay = SpliceRelay()
    cuttable = listening_socket()
    server_host, server_port = mesh.server.server.address

    async def forward() -> None:
        near, _ = await loop.sock_accept(cuttable)
        await relay.relay(near, await dial(server_host, server_port))

    forwarding = asyncio.create_task(forward())
    try:
        via_relay = dataclasses.replace(
            mesh.route(), destination="{}:{}".format(*cuttable.getsockname())
        )
        tunnel = await mesh.open(route=via_relay)
        await sendall(tunnel.app, b"before the cut")
        assert await recv_exactly(tunnel.upstream, 14) == b"before the cut"
        forwarding.cancel()  # the HBONE connection dies with an RST, mid-stream
        with pytest.raises(ConnectionResetError):
            await recv_to_eof(tunnel.app)
        with pytest.raises(ConnectionResetError):
            await recv_to_eof(tunnel.upstream)
        with pytest.raises(HboneError):
            await pump_counts(tunnel)
    finally:
        forwarding.cancel()
        cuttable.close()
        relay.close()


async def test_upstream_reset_after_its_fin_fails_the_client_writes(mesh: Loopback) -> None:
    # The upstream finished sending (FIN), then aborts: what the client still sends must fail
    # loudly (reset), not vanish.
    tunnel = await mesh.open()
    tunnel.upstream.shutdown(socket.SHUT_WR)
    assert await recv_to_eof(tunnel.app) == b""
    await sendall(tunnel.app, b"still talking")
    assert await recv_exactly(tunnel.upstream, 13) == b"still talking"
    reset(tunnel.upstream)
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:  # the first writes land before the RST comes back
            await sendall(tunnel.app, b"x" * 1024)
            await asyncio.sleep(0.01)
    with pytest.raises(HboneError):
        await pump_counts(tunnel)
    [result] = await mesh.server.result_count(1)
    assert result.error is not None


async def test_cancelling_the_client_pump_cuts_the_tunnel_and_counts_the_bytes(
    mesh: Loopback,
) -> None:
    tunnel = await mesh.open()
    await sendall(tunnel.app, b"ping")
    assert await recv_exactly(tunnel.upstream, 4) == b"ping"
    await sendall(tunnel.upstream, b"pong!")
    assert await recv_exactly(tunnel.app, 5) == b"pong!"
    tunnel.pumping.cancel()
    with pytest.raises(PumpCut) as cut:
        await tunnel.pumping
    assert cut.value.counts == (4, 5)  # (sent, received)
    assert tunnel.pumping.cancelled()
    with pytest.raises(ConnectionResetError):
        await recv_to_eof(tunnel.app)
    with pytest.raises(ConnectionResetError):  # the stream reset reaches the far end too
        await recv_to_eof(tunnel.upstream)


@pytest.mark.parametrize("moved", [0, 300_000], ids=["idle", "moved"])
async def test_cancelling_a_server_tunnel_cuts_it_and_reports_its_bytes(moved: int) -> None:
    serving: list[asyncio.Task[Any]] = []

    async def handler(tunnel: InboundTunnel) -> Accept | Reject:
        task = asyncio.current_task()  # the server's task for this CONNECT, pump included
        assert task is not None
        serving.append(task)
        return await dial_target(tunnel)

    async with loopback(handler) as mesh:
        tunnel = await mesh.open()
        payload = random.randbytes(moved)
        await sendall(tunnel.app, payload)
        assert await recv_exactly(tunnel.upstream, moved) == payload
        await sendall(tunnel.upstream, payload[: moved // 2])
        assert await recv_exactly(tunnel.app, moved // 2) == payload[: moved // 2]
        [task] = serving
        task.cancel()
        [result] = await mesh.server.result_count(1)
        assert (result.to_upstream, result.to_peer) == (moved, moved // 2)
        assert result.error == "cancelled"
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()
        with pytest.raises(ConnectionResetError):
            await recv_to_eof(tunnel.upstream)
        with pytest.raises(ConnectionResetError):
            await recv_to_eof(tunnel.app)


GIB = 1 << 30
MAX_CHUNK = 64 * 1024


async def send_random(sock: socket.socket, total: int, seed: int) -> str:
    """Writes `total` pseudo-random bytes in random short writes; returns their SHA-256."""
    rng = random.Random(seed)
    pattern = memoryview(rng.randbytes(4 * 1024 * 1024 + MAX_CHUNK))
    digest = hashlib.sha256()
    loop = asyncio.get_running_loop()
    sent = 0
    while sent < total:
        n = min(total - sent, rng.choice((rng.randint(1, 64), rng.randint(1, MAX_CHUNK))))
        offset = rng.randrange(0, len(pattern) - MAX_CHUNK)
        chunk = pattern[offset : offset + n]
        digest.update(chunk)
        await loop.sock_sendall(sock, chunk)
        sent += n
    sock.shutdown(socket.SHUT_WR)
    return digest.hexdigest()


async def recv_hashed(sock: socket.socket, seed: int) -> tuple[int, str]:
    """Reads to EOF in random short reads; returns the byte count and SHA-256."""
    rng = random.Random(seed)
    digest = hashlib.sha256()
    loop = asyncio.get_running_loop()
    received = 0
    while chunk := await loop.sock_recv(sock, rng.choice((rng.randint(1, 64), MAX_CHUNK))):
        digest.update(chunk)
        received += len(chunk)
    return received, digest.hexdigest()


@pytest.mark.slow
async def test_one_gib_each_way_arrives_intact(mesh: Loopback) -> None:
    tunnel = await mesh.open()
    up_sent, up_received, down_sent, down_received = await asyncio.wait_for(
        asyncio.gather(
            send_random(tunnel.app, GIB, seed=1),
            recv_hashed(tunnel.upstream, seed=2),
            send_random(tunnel.upstream, GIB, seed=3),
            recv_hashed(tunnel.app, seed=4),
        ),
        timeout=120,  # about 5 s on a 2-core box; only a hang takes longer
    )
    assert up_received == (GIB, up_sent)
    assert down_received == (GIB, down_sent)
    assert await pump_counts(tunnel) == (GIB, GIB)
    [result] = await mesh.server.result_count(1)
    assert (result.to_upstream, result.to_peer, result.error) == (GIB, GIB, None)

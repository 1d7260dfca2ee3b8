"""The outbound pool (multiplexing, keys, limits, idle release) and server drain, on loopback."""

from __future__ import annotations

import asyncio
import os
import random
import socket

import pytest
from hbone_harness import (
    SERVER_ID,
    Loopback,
    TunnelEnds,
    dial_target,
    echo_backend,
    loopback,
    recv_exactly,
    recv_to_eof,
    sendall,
    tls_identity,
    tunnel_server,
)
from sockets import tcp_pair
from waits import DEADLINE, wait_until

from ambient_fast import _native
from ambient_fast.hbone import (
    Accept,
    HboneClient,
    HboneError,
    HboneRoute,
    InboundTunnel,
    PumpResult,
    Reject,
)
from ambient_fast.hbone.client import Tunnel

CANARY_ID = "spiffe://cluster.local/ns/server/sa/echo-canary"
OTHER_CLIENT_ID = "spiffe://cluster.local/ns/client/sa/batch"


async def exchange(tunnel: TunnelEnds, data: bytes) -> None:
    """Bytes go both ways through `tunnel`."""
    await sendall(tunnel.app, data)
    assert await recv_exactly(tunnel.upstream, len(data)) == data
    await sendall(tunnel.upstream, data[::-1])
    assert await recv_exactly(tunnel.app, len(data)) == data[::-1]


async def test_streams_for_the_same_key_share_one_connection(mesh: Loopback) -> None:
    first = await mesh.open()
    second = await mesh.open()
    # Duplicated expected identities are the same key.
    third = await mesh.open(route=mesh.route(expected=(SERVER_ID, SERVER_ID)))
    assert mesh.client.connection_count() == 1
    assert len({t.peer_addr for t in mesh.server.tunnels}) == 1
    for i, tunnel in enumerate((first, second, third)):
        await exchange(tunnel, f"stream {i}".encode())


async def test_different_expected_identities_get_their_own_connection(mesh: Loopback) -> None:
    plain = await mesh.open()
    # Accepting the canary too is another pool key (verified against another identity list),
    # so its streams get a connection of their own, never the plain route's.
    widened = await mesh.open(route=mesh.route(expected=(CANARY_ID, SERVER_ID)))
    assert mesh.client.connection_count() == 2
    plain_in, widened_in = mesh.server.tunnels
    assert plain_in.peer_addr != widened_in.peer_addr
    await exchange(plain, b"plain")
    await exchange(widened, b"widened")


async def test_different_source_identities_never_share_a_connection(mesh: Loopback) -> None:
    await mesh.open()
    other = tls_identity(mesh.ca, OTHER_CLIENT_ID)
    tunnel = await mesh.open(route=mesh.route(identity=other))
    assert mesh.client.connection_count() == 2
    # The server attributes each stream to the identity that opened it.
    assert [t.peer_identity for t in mesh.server.tunnels] == [
        mesh.client_identity.spiffe_id,
        OTHER_CLIENT_ID,
    ]
    await exchange(tunnel, b"batch job")


async def test_the_peers_stream_limit_opens_another_connection() -> None:
    # The server allows 2 concurrent streams: the pool uses min(100, 2) per connection.
    async with loopback(settings=_native.Http2Settings(max_concurrent_streams=2)) as mesh:
        tunnels = [await mesh.open() for _ in range(5)]
        assert mesh.client.connection_count() == 3
        for i, tunnel in enumerate(tunnels):
            await exchange(tunnel, f"stream {i}".encode())


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_MARK needs CAP_NET_ADMIN")
async def test_pool_sockets_carry_the_configured_mark() -> None:
    # ztunnel marks its own sockets 0x539 so that the pod's redirect rules skip them.
    client = HboneClient(_native.HbonePool(mark=0x539))
    async with loopback(client=client) as mesh:
        await exchange(await mesh.open(), b"marked")
        port = mesh.server.destination.rsplit(":", 1)[1]
        ss = await asyncio.create_subprocess_exec(
            "ss",
            "-tnHe",
            "state",
            "established",
            f"( dport = :{port} )",
            stdout=asyncio.subprocess.PIPE,
        )
        sockets = (await ss.communicate())[0].decode()
        assert "fwmark:0x539" in sockets, sockets


async def test_idle_connections_are_released() -> None:
    client = HboneClient(_native.HbonePool(idle_timeout=0.2))
    async with loopback(client=client) as mesh:
        tunnel = await mesh.open()
        await exchange(tunnel, b"short-lived")
        tunnel.app.shutdown(socket.SHUT_WR)
        tunnel.upstream.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(tunnel.pumping, DEADLINE)
        assert mesh.client.connection_count() == 1
        await wait_until(lambda: mesh.client.connection_count() == 0, "the idle connection")
        # A new stream simply opens a new connection.
        await exchange(await mesh.open(), b"again")
        assert mesh.client.connection_count() == 1


STREAMS = 1000
PER_CONNECTION = 100
PAYLOAD = 16 * 1024


async def echo_through(tunnel: Tunnel, payload: bytes) -> tuple[bytes, PumpResult]:
    app, far = tcp_pair()
    with app, far:
        pumping = asyncio.create_task(tunnel.pump(far))
        try:
            await sendall(app, payload)
            app.shutdown(socket.SHUT_WR)
            echoed = await recv_to_eof(app)
            return echoed, await asyncio.wait_for(pumping, DEADLINE)
        finally:
            pumping.cancel()


async def test_thousand_concurrent_streams_over_ten_connections() -> None:
    pool = _native.HbonePool(max_streams_per_connection=PER_CONNECTION)
    async with echo_backend() as echo, loopback(client=HboneClient(pool)) as mesh:
        route = HboneRoute(
            mesh.server.destination, mesh.client_identity, (SERVER_ID,), "{}:{}".format(*echo)
        )
        tunnels = await asyncio.wait_for(
            asyncio.gather(*(mesh.client.open(route, []) for _ in range(STREAMS))), 60
        )
        try:
            # All 1000 are open at once, multiplexed over at most 1000 / 100 connections.
            assert mesh.client.connection_count() <= STREAMS // PER_CONNECTION
            assert len(mesh.server.tunnels) == STREAMS
            assert len({t.peer_addr for t in mesh.server.tunnels}) <= STREAMS // PER_CONNECTION
            rng = random.Random(7)
            payloads = [rng.randbytes(PAYLOAD) for _ in range(STREAMS)]
            outcomes = await asyncio.wait_for(
                asyncio.gather(
                    *(echo_through(t, p) for t, p in zip(tunnels, payloads, strict=True))
                ),
                60,
            )
        finally:
            for tunnel in tunnels:
                tunnel.close()
        broken = [i for i, (echoed, _) in enumerate(outcomes) if echoed != payloads[i]]
        assert broken == []
        assert {result for _, result in outcomes} == {PumpResult(PAYLOAD, PAYLOAD)}
        results = await mesh.server.result_count(STREAMS)
        assert {(r.to_upstream, r.to_peer, r.error) for r in results} == {(PAYLOAD, PAYLOAD, None)}


async def test_drain_lets_an_open_tunnel_finish_while_new_connects_go_elsewhere(
    mesh: Loopback,
) -> None:
    tunnel = await mesh.open()
    mesh.server.server.drain()
    await exchange(tunnel, b"after drain")
    # New CONNECTs are not taken by the draining server...
    with pytest.raises(HboneError):
        await mesh.client.open(mesh.route(), [])
    # ...another server takes them.
    async with tunnel_server(tls_identity(mesh.ca, SERVER_ID)) as successor:
        route = HboneRoute(
            successor.destination,
            mesh.client_identity,
            (SERVER_ID,),
            "{}:{}".format(*mesh.backend_address),
        )
        elsewhere = await mesh.open(route=route)
        await exchange(elsewhere, b"elsewhere")
        assert len(successor.tunnels) == 1
        elsewhere.app.close()
        elsewhere.upstream.close()
        await asyncio.wait_for(elsewhere.pumping, DEADLINE)
    # The old tunnel is still intact and closes cleanly.
    await exchange(tunnel, b"still going")
    tunnel.app.shutdown(socket.SHUT_WR)
    assert await recv_to_eof(tunnel.upstream) == b""
    tunnel.upstream.shutdown(socket.SHUT_WR)
    assert await recv_to_eof(tunnel.app) == b""
    [result] = await mesh.server.result_count(1)
    assert result.error is None
    assert result.to_upstream == len(b"after drain" + b"still going")
    # With its last connection gone, the drained server stops serving.
    await asyncio.wait_for(mesh.server.serving, DEADLINE)


async def test_drain_still_answers_connects_already_in_flight() -> None:
    meshes: list[Loopback] = []

    async def drain_on_second_connect(tunnel: InboundTunnel) -> Accept | Reject:
        # Drain exactly while the burst below is arriving.
        if len(meshes[0].server.tunnels) == 2:
            meshes[0].server.server.drain()
        return await dial_target(tunnel)

    async with loopback(handler=drain_on_second_connect) as mesh:
        meshes.append(mesh)
        held = await mesh.open()  # keeps the pooled connection busy across the drain
        opening = [asyncio.create_task(mesh.client.open(mesh.route(), [])) for _ in range(20)]
        try:
            # Each is answered (a tunnel or an error); none waits on a server that left.
            done, pending = await asyncio.wait(opening, timeout=DEADLINE)
            assert pending == set()
        finally:
            for task in opening:
                task.cancel()
                if task.done() and not task.cancelled() and task.exception() is None:
                    task.result().close()
            await asyncio.gather(*opening, return_exceptions=True)
        errors = [t.exception() for t in done if t.exception() is not None]
        assert all(isinstance(e, HboneError) for e in errors), errors
        await exchange(held, b"held")

"""The splice relay on loopback: half-close, resets, cancel, byte counts and integrity.

Every test builds `client <-> a [relay] b <-> server` from two real TCP connections and
hands (a, b) to `SpliceRelay.relay`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import hashlib
import os
import random
import select
import signal
import socket
import struct
import sys
import termios
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from installed import PACKAGE_ROOT
from sockets import tcp_pair
from waits import DEADLINE, wait_until

from ambient_fast._core import SpliceEngine
from ambient_fast.pumps import PumpCut
from ambient_fast.splice import RelayError, RelayResult, SpliceRelay

RESET_ERRORS = (ConnectionResetError, BrokenPipeError)
TCP_CLOSE = 7  # tcpi_state value, include/net/tcp_states.h


@dataclass(frozen=True)
class Chain:
    """client <-> a [relay] b <-> server; `relaying` is the task awaiting relay(a, b)."""

    client: socket.socket
    server: socket.socket
    relaying: asyncio.Task[RelayResult]


async def open_chain(
    relay: SpliceRelay, cleanup: contextlib.AsyncExitStack, b_buffers: int = 0
) -> Chain:
    """Builds a chain whose sockets and task `cleanup` disposes of, even after a failure."""
    client, a = tcp_pair()
    cleanup.enter_context(client)
    cleanup.enter_context(a)  # a no-op once relay() has taken the fd
    b, server = tcp_pair()
    cleanup.enter_context(server)
    cleanup.enter_context(b)
    if b_buffers:
        # Small fixed buffers towards the server make the relay's pipe back up early.
        b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, b_buffers)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, b_buffers)
    relaying = asyncio.create_task(relay.relay(a, b))
    cleanup.push_async_callback(_stop, relaying)
    return Chain(client, server, relaying)


async def _stop(task: asyncio.Task[RelayResult]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def relay() -> AsyncIterator[SpliceRelay]:
    splice_relay = SpliceRelay()
    try:
        yield splice_relay
    finally:
        splice_relay.close()


@pytest.fixture
async def chain(relay: SpliceRelay) -> AsyncIterator[Chain]:
    async with contextlib.AsyncExitStack() as cleanup:
        yield await open_chain(relay, cleanup)


async def send_all(sock: socket.socket, data: bytes) -> None:
    async with asyncio.timeout(DEADLINE):
        await asyncio.get_running_loop().sock_sendall(sock, data)


async def recv_exactly(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    received = bytearray()
    async with asyncio.timeout(DEADLINE):
        while len(received) < size:
            chunk = await loop.sock_recv(sock, size - len(received))
            assert chunk, f"EOF after {len(received)} of {size} bytes"
            received += chunk
    return bytes(received)


async def recv_until_eof(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    received = bytearray()
    async with asyncio.timeout(DEADLINE):
        while chunk := await loop.sock_recv(sock, 1 << 16):
            received += chunk
    return bytes(received)


async def expect_reset(sock: socket.socket) -> None:
    """Reads (discarding data) until the socket reports a reset; EOF fails the test."""
    with pytest.raises(RESET_ERRORS):
        await recv_until_eof(sock)


async def expect_write_fails(sock: socket.socket) -> None:
    """Writes until the socket reports the peer's reset (the first write may still pass)."""
    deadline = time.monotonic() + DEADLINE
    with pytest.raises(RESET_ERRORS):
        while time.monotonic() < deadline:
            await send_all(sock, b"x")
            await asyncio.sleep(0.005)


async def relay_result(chain: Chain) -> RelayResult:
    async with asyncio.timeout(DEADLINE):
        return await chain.relaying


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def test_relays_both_ways_and_counts_bytes(chain: Chain) -> None:
    request, response = os.urandom(100_000), os.urandom(50_000)
    await send_all(chain.client, request)
    assert await recv_exactly(chain.server, len(request)) == request
    await send_all(chain.server, response)
    assert await recv_exactly(chain.client, len(response)) == response
    chain.client.shutdown(socket.SHUT_WR)
    assert await recv_until_eof(chain.server) == b""
    chain.server.shutdown(socket.SHUT_WR)
    assert await recv_until_eof(chain.client) == b""
    assert await relay_result(chain) == RelayResult(a_to_b=len(request), b_to_a=len(response))


def pipe_sizes() -> dict[int, int]:
    """Capacities of this process's pipes by fd, the relay's among them."""
    sizes = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # an fd closed while we looked
            if os.readlink(f"/proc/self/fd/{name}").startswith("pipe:"):
                sizes[int(name)] = fcntl.fcntl(int(name), fcntl.F_GETPIPE_SZ)
    return sizes


async def test_pipes_grow_with_the_flow(chain: Chain) -> None:
    # Only pipes that grew during this test count: other tests' relays may still be open.
    before = pipe_sizes()
    assert min(before.values()) <= 64 << 10

    def grew_to(size: int) -> bool:
        return any(s == size and before.get(fd, 0) < size for fd, s in pipe_sizes().items())

    # Past 128 KiB a flow's pipe grows to 256 KiB, past 10 MiB to 1 MiB. Growth is
    # checked before a read, so each step sends well past its threshold: the reads
    # that follow the crossing are what grow the pipe.
    for size, grown in ((512 << 10, 256 << 10), (12 << 20, 1 << 20)):
        payload = os.urandom(size)
        _, heard = await asyncio.gather(
            send_all(chain.client, payload), recv_exactly(chain.server, size)
        )
        assert heard == payload
        await wait_until(functools.partial(grew_to, grown), f"a pipe grown to {grown} bytes")


@pytest.mark.parametrize("first", ["client", "server"])
@pytest.mark.parametrize("then", ["shutdown", "close"])
async def test_half_close_keeps_the_other_direction_flowing(
    chain: Chain, first: str, then: str
) -> None:
    closer, peer = (
        (chain.client, chain.server) if first == "client" else (chain.server, chain.client)
    )
    request = os.urandom(200_000)
    # Past the 10 MiB pipe-growth step, all of it written after the peer's FIN.
    late = os.urandom(12 << 20)
    await send_all(closer, request)
    closer.shutdown(socket.SHUT_WR)
    assert await recv_until_eof(peer) == request

    async def answer() -> None:
        await send_all(peer, late)
        if then == "shutdown":
            peer.shutdown(socket.SHUT_WR)
        else:
            peer.close()

    _, heard = await asyncio.gather(answer(), recv_until_eof(closer))
    assert heard == late
    counts = (len(request), len(late)) if first == "client" else (len(late), len(request))
    assert await relay_result(chain) == RelayResult(*counts)


@pytest.mark.parametrize("resetter", ["client", "server"])
async def test_reset_on_one_side_resets_the_other(chain: Chain, resetter: str) -> None:
    await send_all(chain.client, b"ping")
    assert await recv_exactly(chain.server, 4) == b"ping"
    gone, survivor = (
        (chain.client, chain.server) if resetter == "client" else (chain.server, chain.client)
    )
    reset(gone)
    await expect_reset(survivor)
    with pytest.raises(RelayError, match="failed after 4 bytes a->b") as failure:
        await relay_result(chain)
    assert failure.value.errno == errno.ECONNRESET
    assert failure.value.counts == (4, 0)


async def test_reset_after_half_close_still_propagates(chain: Chain) -> None:
    # The client's side of the relay has nothing left to do, yet its reset must be seen.
    chain.client.shutdown(socket.SHUT_WR)
    assert await recv_until_eof(chain.server) == b""
    reset(chain.client)
    with pytest.raises(OSError) as failure:
        await relay_result(chain)
    assert failure.value.errno in (errno.ECONNRESET, errno.EPIPE)
    # After its EOF the server can only notice the reset by writing.
    await expect_write_fails(chain.server)


async def test_cancel_resets_both_ends_and_counts_the_bytes(
    chain: Chain, relay: SpliceRelay
) -> None:
    await send_all(chain.client, b"ping")
    assert await recv_exactly(chain.server, 4) == b"ping"
    await send_all(chain.server, b"pong!")
    assert await recv_exactly(chain.client, 5) == b"pong!"
    chain.relaying.cancel()
    with pytest.raises(PumpCut) as cut:
        await chain.relaying
    assert cut.value.counts == (4, 5)
    assert chain.relaying.cancelled()  # still a cancellation to asyncio
    assert relay.active() == 0
    await expect_reset(chain.client)
    await expect_reset(chain.server)


async def test_close_fails_running_relays(chain: Chain, relay: SpliceRelay) -> None:
    await send_all(chain.client, b"ping")
    assert await recv_exactly(chain.server, 4) == b"ping"
    relay.close()
    with pytest.raises(OSError) as failure:
        await relay_result(chain)
    assert failure.value.errno == errno.ECANCELED
    await expect_reset(chain.client)
    await expect_reset(chain.server)


def _unacked(sock: socket.socket) -> int:
    # SIOCOUTQ (== TIOCOUTQ on Linux): bytes the peer has not acknowledged yet.
    (unacked,) = struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4))
    return int(unacked)


def _tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


async def cpu_seconds_while_idle(window: float = 0.5) -> float:
    """Process CPU time over a wall-clock window in which nothing should be happening."""
    started = time.process_time()
    await asyncio.sleep(window)
    return time.process_time() - started


async def test_slow_reader_does_not_make_the_relay_spin(relay: SpliceRelay) -> None:
    async with contextlib.AsyncExitStack() as cleanup:
        # More than the server-side buffers hold, less than what the relay can take in.
        chain = await open_chain(relay, cleanup, b_buffers=64 << 10)
        payload = os.urandom(384 << 10)
        await send_all(chain.client, payload)
        # All of it left the client: it now sits in the relay's pipe and socket buffers.
        await wait_until(lambda: _unacked(chain.client) == 0, "client send queue to drain")
        assert await cpu_seconds_while_idle() < 0.1
        # Half-close both ways while bytes are stuck: the client-facing socket now
        # reports HUP, which must not wake the worker over and over.
        chain.server.shutdown(socket.SHUT_WR)
        assert await recv_until_eof(chain.client) == b""
        chain.client.shutdown(socket.SHUT_WR)
        await wait_until(lambda: _tcp_state(chain.client) == TCP_CLOSE, "relay to take the FIN")
        assert await cpu_seconds_while_idle() < 0.1
        assert await recv_until_eof(chain.server) == payload
        assert await relay_result(chain) == RelayResult(a_to_b=len(payload), b_to_a=0)


async def test_many_concurrent_relays_stay_intact(relay: SpliceRelay) -> None:
    rng = random.Random(200)

    async def exchange(chain: Chain) -> tuple[RelayResult, int, int]:
        up, down = (
            rng.randbytes(rng.randint(1, 256 << 10)),
            rng.randbytes(rng.randint(1, 256 << 10)),
        )

        async def speak(sock: socket.socket, data: bytes) -> None:
            await send_all(sock, data)
            sock.shutdown(socket.SHUT_WR)

        _, _, heard_up, heard_down = await asyncio.gather(
            speak(chain.client, up),
            speak(chain.server, down),
            recv_until_eof(chain.server),
            recv_until_eof(chain.client),
        )
        assert (heard_up, heard_down) == (up, down)
        return await relay_result(chain), len(up), len(down)

    async with contextlib.AsyncExitStack() as cleanup:
        chains = [await open_chain(relay, cleanup) for _ in range(200)]
        outcomes = await asyncio.gather(*(exchange(chain) for chain in chains))
    for result, up, down in outcomes:
        assert result == RelayResult(a_to_b=up, b_to_a=down)
    assert relay.active() == 0


class PatternStream:
    """A long pseudo-random byte stream: one random block, rotated differently each lap."""

    def __init__(self, seed: int, block_size: int = 4 << 20) -> None:
        self.block_size = block_size
        self._doubled = memoryview(random.Random(seed).randbytes(block_size) * 2)

    def chunk(self, position: int, size: int) -> memoryview:
        lap, offset = divmod(position, self.block_size)
        start = (offset + lap * 7919) % self.block_size
        return self._doubled[start : start + min(size, self.block_size - offset)]


def _io_size(rng: random.Random) -> int:
    # Mostly bulk, sometimes packet-sized, to exercise short reads and writes.
    return rng.randint(1, 1500) if rng.random() < 0.1 else rng.randint(1, 256 << 10)


def send_stream(sock: socket.socket, stream: PatternStream, total: int, seed: int) -> str:
    rng, digest, sent = random.Random(seed), hashlib.sha256(), 0
    while sent < total:
        chunk = stream.chunk(sent, min(_io_size(rng), total - sent))
        sock.sendall(chunk)
        digest.update(chunk)
        sent += len(chunk)
    sock.shutdown(socket.SHUT_WR)
    return digest.hexdigest()


def receive_stream(sock: socket.socket, seed: int) -> tuple[int, str]:
    rng, digest, received = random.Random(seed), hashlib.sha256(), 0
    view = memoryview(bytearray(256 << 10))
    while size := sock.recv_into(view[: _io_size(rng)]):
        digest.update(view[:size])
        received += size
    return received, digest.hexdigest()


@pytest.mark.slow
async def test_one_gib_each_way_arrives_intact(chain: Chain) -> None:
    total = 1 << 30
    for sock in (chain.client, chain.server):
        sock.settimeout(DEADLINE)  # blocking I/O in threads, bounded per call
    up, down = PatternStream(seed=1), PatternStream(seed=2)
    sent_up, sent_down, (got_up, heard_up), (got_down, heard_down) = await asyncio.gather(
        asyncio.to_thread(send_stream, chain.client, up, total, 11),
        asyncio.to_thread(send_stream, chain.server, down, total, 12),
        asyncio.to_thread(receive_stream, chain.server, 13),
        asyncio.to_thread(receive_stream, chain.client, 14),
    )
    assert (got_up, heard_up) == (total, sent_up)
    assert (got_down, heard_down) == (total, sent_down)
    assert await relay_result(chain) == RelayResult(a_to_b=total, b_to_a=total)


def test_engine_rejects_non_sockets_and_leaves_them_to_the_caller() -> None:
    engine = SpliceEngine()
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(ValueError, match=f"fd {read_end} is not a socket"):
            engine.start(read_end, write_end)
        os.fstat(read_end)  # still open: a failed start() takes no ownership
        assert engine.active() == 0
    finally:
        os.close(read_end)
        os.close(write_end)
        engine.close()


def test_engine_cancel_right_after_start_resets_both_ends() -> None:
    client, a = tcp_pair()
    b, server = tcp_pair()
    with contextlib.closing(SpliceEngine()) as engine, client, a, b, server:
        pump_id = engine.start(a.fileno(), b.fileno())
        a.detach()
        b.detach()
        # Before the worker has even registered the pump.
        engine.cancel(pump_id)
        readable, _, _ = select.select([engine.fileno()], [], [], DEADLINE)
        assert readable, "no completion within the deadline"
        assert engine.completed() == [(pump_id, 0, 0, errno.ECANCELED)]
        assert engine.active() == 0
        engine.cancel(pump_id)  # already completed: a no-op
        for sock in (client, server):
            sock.settimeout(DEADLINE)
            with pytest.raises(ConnectionResetError):
                sock.recv(1)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.closing(writer):
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()


async def _listening_port(process: asyncio.subprocess.Process) -> int:
    """The port from the relay's "listening on HOST:PORT" log line."""
    assert process.stderr is not None
    async with asyncio.timeout(DEADLINE):
        while line := (await process.stderr.readline()).decode():
            if "listening on" in line:
                return int(line.split("listening on ", 1)[1].split(",")[0].rsplit(":", 1)[1])
    raise AssertionError("relay exited before listening")


async def test_serve_relay_forever_relays_and_stops_on_sigterm() -> None:
    upstream = await asyncio.start_server(_echo, "127.0.0.1", 0)
    target = upstream.sockets[0].getsockname()[1]
    code = "import sys; from ambient_fast.splice import serve_relay_forever as s; "
    code += "sys.exit(s(*sys.argv[1:]))"
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-c", code, "127.0.0.1:0", f"127.0.0.1:{target}"),
        cwd=PACKAGE_ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    writers: list[asyncio.StreamWriter] = []
    try:
        port = await _listening_port(process)
        async with asyncio.timeout(DEADLINE):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
            payload = os.urandom(1 << 20)
            writer.write(payload)
            writer.write_eof()
            assert await reader.read() == payload
            # A connection still open at shutdown is reset, not left hanging.
            open_reader, open_writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(open_writer)
            open_writer.write(b"ping")
            assert await open_reader.readexactly(4) == b"ping"
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
            with pytest.raises(ConnectionResetError):
                await open_reader.read()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        for writer in writers:
            writer.close()
        upstream.close()
        await upstream.wait_closed()

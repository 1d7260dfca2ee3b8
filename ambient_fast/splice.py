"""Plaintext TCP relays on asyncio: Python accepts and connects, `_core` moves the bytes.

`SpliceRelay` hands a pair of connected sockets to one `SpliceEngine` (splice(2) on a
native thread) and resolves `relay()` when the engine reports the pump finished.
`serve_relay_forever` is the `ambient-fast relay` command: listen, connect upstream,
relay each connection; used by perf and profiling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass

import uvloop

from ambient_fast._core import SpliceEngine
from ambient_fast.pumps import PumpCut

log = logging.getLogger(__name__)

# ztunnel's upstream connect timeout (shared/reference/01-hbone-ports-tls.md, Sockets).
DEFAULT_CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class RelayResult:
    """Bytes delivered in each direction of a relay that ended with both sides closed."""

    a_to_b: int
    b_to_a: int


class RelayError(OSError):
    """A relay failed (`errno`: the reset it saw) after delivering `counts`, (a_to_b, b_to_a)."""

    def __init__(self, err: int, message: str, counts: tuple[int, int]) -> None:
        super().__init__(err, message)
        self.counts = counts


class SpliceRelay:
    """Relays socket pairs on one splice engine; create and use it inside a running loop."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._engine = SpliceEngine()
        self._waiters: dict[int, asyncio.Future[tuple[int, int, int]]] = {}
        self._closed = False
        self._loop.add_reader(self._engine.fileno(), self._deliver)

    def active(self) -> int:
        """Relays the engine is still pumping (or has finished but not yet reported)."""
        return self._engine.active()

    async def relay(self, a: socket.socket, b: socket.socket) -> RelayResult:
        """Pumps a <-> b until both directions close; the sockets are consumed either way.

        Half-closes are passed through. A reset on either side resets the other and
        raises RelayError with that errno (ECONNRESET, EPIPE) and the bytes delivered before.
        Cancelling the awaiting task cuts the relay: both sockets are reset, then PumpCut
        (a CancelledError) carries (a_to_b, b_to_a), the bytes delivered until then.
        The sockets must not be registered with the event loop.
        """
        label = f"{_peer(a)} <-> {_peer(b)}"
        if self._closed:
            a.close()
            b.close()
            raise RuntimeError(f"splice relay is closed; dropped {label}")
        fd_a = a.detach()
        fd_b = b.detach()
        try:
            pump_id = self._engine.start(fd_a, fd_b)
        except BaseException:
            os.close(fd_a)
            os.close(fd_b)
            raise
        done: asyncio.Future[tuple[int, int, int]] = self._loop.create_future()
        self._waiters[pump_id] = done
        try:
            a_to_b, b_to_a, err = await asyncio.shield(done)
        except asyncio.CancelledError:
            self._engine.cancel(pump_id)
            # Wait for the worker's teardown so the sockets are gone when we return.
            a_to_b, b_to_a, _ = await asyncio.shield(done)
            raise PumpCut(a_to_b, b_to_a) from None
        if err:
            raise RelayError(
                err,
                f"relay {label} failed after {a_to_b} bytes a->b, {b_to_a} bytes b->a: "
                f"{os.strerror(err)}",
                (a_to_b, b_to_a),
            )
        return RelayResult(a_to_b, b_to_a)

    def close(self) -> None:
        """Stops the engine; relays still running raise RelayError(ECANCELED)."""
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._engine.fileno())
        self._engine.close()
        self._deliver()

    def _deliver(self) -> None:
        for pump_id, a_to_b, b_to_a, err in self._engine.completed():
            done = self._waiters.pop(pump_id, None)
            if done is not None and not done.done():
                done.set_result((a_to_b, b_to_a, err))


def _peer(sock: socket.socket) -> str:
    try:
        return _address(sock.getpeername())
    except OSError:
        return f"fd {sock.fileno()} (not connected)"


def _address(address: object) -> str:
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address)


def parse_host_port(text: str, what: str, *, port_zero: bool = False) -> tuple[str, int]:
    """'127.0.0.1:15001' or '[::1]:15001' -> (host, port); errors name `what` and `text`.

    `port_zero` admits port 0 (a listener asking the kernel for a free port).
    """
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    lowest = 0 if port_zero else 1
    if not sep or not host or not port.isdigit() or not lowest <= int(port) < 65536:
        raise ValueError(f"{what} {text!r}: expected HOST:PORT")
    return host, int(port)


async def _resolve(host: str, port: int, what: str) -> tuple[socket.AddressFamily, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ValueError(f"{what} {host}:{port}: cannot resolve: {exc}") from exc
    family, _, _, _, address = infos[0]
    return family, (str(address[0]), int(address[1]))


async def _relay_connection(
    relay: SpliceRelay,
    client: socket.socket,
    upstream: tuple[socket.AddressFamily, tuple[str, int]],
) -> None:
    loop = asyncio.get_running_loop()
    family, address = upstream
    with contextlib.ExitStack() as cleanup:
        # Until relay() takes them, the sockets are ours to close.
        cleanup.enter_context(client)
        server = cleanup.enter_context(socket.socket(family, socket.SOCK_STREAM))
        server.setblocking(False)
        try:
            async with asyncio.timeout(DEFAULT_CONNECT_TIMEOUT):
                await loop.sock_connect(server, address)
        except (OSError, TimeoutError) as exc:
            log.warning("relay: connect to %s:%d failed: %r", address[0], address[1], exc)
            return
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cleanup.pop_all()
    try:
        result = await relay.relay(client, server)
    except OSError as exc:
        log.info("relay: %s", exc)
    else:
        log.debug("relay: done a->b=%d b->a=%d", result.a_to_b, result.b_to_a)


async def _serve(listen: str, to: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    listen_host_port = parse_host_port(listen, "--listen", port_zero=True)
    family, listen_address = await _resolve(*listen_host_port, "--listen")
    upstream = await _resolve(*parse_host_port(to, "--to"), "--to")
    listener = socket.socket(family, socket.SOCK_STREAM)
    relay = SpliceRelay()
    connections: set[asyncio.Task[None]] = set()
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(listen_address)
        except OSError as exc:
            raise OSError(exc.errno, f"--listen {listen}: {exc.strerror}") from exc
        listener.listen(socket.SOMAXCONN)
        listener.setblocking(False)
        # The bound address, so callers that asked for port 0 learn the real one.
        log.info("relay: listening on %s, forwarding to %s", _address(listener.getsockname()), to)
        accepting = asyncio.create_task(_accept_forever(listener, relay, upstream, connections))
        await stop.wait()
        accepting.cancel()
        await asyncio.gather(accepting, return_exceptions=True)
    finally:
        listener.close()
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        relay.close()
    log.info("relay: stopped")


async def _accept_forever(
    listener: socket.socket,
    relay: SpliceRelay,
    upstream: tuple[socket.AddressFamily, tuple[str, int]],
    connections: set[asyncio.Task[None]],
) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            client, _ = await loop.sock_accept(listener)
        except OSError as exc:
            # EMFILE and friends: keep serving the connections we have.
            log.warning("relay: accept on %s failed: %r", listener.getsockname(), exc)
            await asyncio.sleep(0.1)
            continue
        task = loop.create_task(_relay_connection(relay, client, upstream))
        connections.add(task)
        task.add_done_callback(connections.discard)


def serve_relay_forever(listen: str, to: str) -> int:
    """Relays every connection accepted on `listen` to `to` until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        uvloop.run(_serve(listen, to))
    except ValueError as exc:
        print(f"ambient-fast relay: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ambient-fast relay: {exc}", file=sys.stderr)
        return 1
    return 0

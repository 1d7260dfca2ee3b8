"""A TCP echo server (`python -m perf.tcp_echo PORT`, run in the server pod) and the two clients
that use it: a new-connection rate loop and a holder of many open connections.

The clients run in the harness's threads, each stepped into the client pod's namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import sys
import threading
import time
from collections.abc import Iterator

from perf.netns import inside

REQUEST = b"x" * 64  # one small request per connection: connect, send, echo, close
_IO_TIMEOUT_S = 5.0


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def _serve(port: int) -> None:
    server = await asyncio.start_server(_echo, "0.0.0.0", port, backlog=4096)
    async with server:
        await server.serve_forever()


def _exchange(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(payload)
    got = 0
    while got < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"echo closed after {got} of {len(payload)} bytes")
        got += len(chunk)


def connection_rate(
    namespace: str, host: str, port: int, seconds: float, workers: int = 4
) -> tuple[float, int]:
    """(connections per second, failures): `workers` threads each loop connect, send 64 B,
    read the echo, close, for `seconds`."""
    done = [0] * workers
    failed = [0] * workers
    errors: list[BaseException] = []
    stop_at = time.monotonic() + seconds

    def loop(index: int) -> None:
        try:
            with inside(namespace):
                while time.monotonic() < stop_at:
                    try:
                        with socket.create_connection((host, port), _IO_TIMEOUT_S) as sock:
                            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                            _exchange(sock, REQUEST)
                        done[index] += 1
                    except OSError:
                        failed[index] += 1
        except BaseException as exc:  # reported by the caller, the thread must not die silently
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sum(done) / (time.monotonic() - started), sum(failed)


@contextlib.contextmanager
def open_connections(namespace: str, host: str, port: int, count: int) -> Iterator[int]:
    """Opens `count` connections (each echoes one request, so the tunnel is up end to end),
    yields how many are open, and closes them all on exit."""
    raise_fd_limit()
    sockets: list[socket.socket] = []
    try:
        with inside(namespace):
            for _ in range(count):
                sock = socket.create_connection((host, port), _IO_TIMEOUT_S)
                sockets.append(sock)
                _exchange(sock, REQUEST)
        yield len(sockets)
    finally:
        for sock in sockets:
            sock.close()


def main(argv: list[str]) -> int:
    raise_fd_limit()
    try:
        import uvloop

        uvloop.run(_serve(int(argv[0])))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

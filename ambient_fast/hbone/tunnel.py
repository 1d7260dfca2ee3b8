"""`ambient-fast tunnel`: a standalone HBONE pair (plaintext in -> mTLS CONNECT -> plaintext out).

The client end listens for plaintext TCP and tunnels each connection to a fixed target; the
server end only dials targets it was told to allow. Used by perf/ and for debugging.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
from pathlib import Path

import uvloop

from ambient_fast import _native
from ambient_fast.hbone.client import HboneClient, HboneRoute
from ambient_fast.hbone.headers import forwarded, traceparent
from ambient_fast.hbone.request import STATUS_SERVICE_UNAVAILABLE, STATUS_UNAUTHORIZED
from ambient_fast.hbone.server import Accept, HboneServer, InboundTunnel, Reject

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("role", choices=["client", "server"])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--cert", required=True, type=Path, help="certificate chain (PEM)")
    parser.add_argument("--key", required=True, type=Path, help="private key (PEM)")
    parser.add_argument("--roots", required=True, type=Path, help="mesh root(s) (PEM)")
    parser.add_argument("--server", metavar="HOST:PORT", help="client: the HBONE server")
    parser.add_argument("--target", metavar="HOST:PORT", help="client: the CONNECT authority")
    parser.add_argument(
        "--expect-identity", action="append", default=[], help="client: server SPIFFE id"
    )
    parser.add_argument(
        "--worker-threads", type=int, help="native threads (default: min(2, CPUs/2))"
    )
    parser.add_argument(
        "--allow-target",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="server: a target it may dial (others get 401)",
    )


def split_host_port(value: str, flag: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"{flag} {value!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _listener(address: tuple[str, int]) -> socket.socket:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def _dial(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def _serve(args: argparse.Namespace, identity: _native.TlsIdentity) -> None:
    allowed = {split_host_port(t, "--allow-target") for t in args.allow_target}
    certs = _native.ServerCertificates()
    certs.set(None, identity)

    async def handler(tunnel: InboundTunnel) -> Accept | Reject:
        if (tunnel.target.host, tunnel.target.port) not in allowed:
            return Reject(STATUS_UNAUTHORIZED, "target not allowed")
        try:
            return Accept(await _dial(tunnel.target.host, tunnel.target.port))
        except OSError as e:
            return Reject(STATUS_SERVICE_UNAVAILABLE, f"dial {tunnel.target}: {e}")

    server = HboneServer(_listener(split_host_port(args.listen, "--listen")), certs, handler)
    log.info("hbone tunnel server on %s as %s", args.listen, identity.spiffe_id)
    await server.serve()


async def _client(args: argparse.Namespace, identity: _native.TlsIdentity) -> None:
    if not (args.server and args.target and args.expect_identity):
        raise SystemExit("tunnel client needs --server, --target and --expect-identity")
    split_host_port(args.server, "--server")
    route = HboneRoute(args.server, identity, tuple(args.expect_identity), args.target)
    client = HboneClient()
    listener = _listener(split_host_port(args.listen, "--listen"))
    loop = asyncio.get_running_loop()
    tunnels: set[asyncio.Task[object]] = set()
    log.info("hbone tunnel client on %s -> %s -> %s", args.listen, args.server, args.target)
    while True:
        sock, peer = await loop.sock_accept(listener)
        headers = [("forwarded", forwarded(peer[0], peer[1])), ("traceparent", traceparent())]
        task = asyncio.create_task(_tunnel_one(client, sock, route, headers, peer))
        tunnels.add(task)
        task.add_done_callback(tunnels.discard)


async def _tunnel_one(
    client: HboneClient,
    sock: socket.socket,
    route: HboneRoute,
    headers: list[tuple[str, str]],
    peer: tuple[str, int],
) -> None:
    try:
        await client.tunnel(sock, route, headers)
    except _native.HboneError as e:
        log.warning("hbone tunnel for %s:%d: %s", peer[0], peer[1], e)


async def _main(args: argparse.Namespace) -> None:
    identity = _native.TlsIdentity(
        args.cert.read_bytes(), args.key.read_bytes(), args.roots.read_bytes()
    )
    run = _serve if args.role == "server" else _client
    task = asyncio.create_task(run(args, identity))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def run_tunnel(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.worker_threads:
        _native.configure_runtime(args.worker_threads)
    try:
        uvloop.run(_main(args))
    except (OSError, ValueError) as e:
        log.error("tunnel %s: %s", args.role, e)
        return 1
    return 0

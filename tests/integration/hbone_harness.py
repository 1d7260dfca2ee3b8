"""Loopback HBONE fixtures: a mesh CA, identities, a backend and a server that dials targets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from ambient_fast.hbone import (
    Accept,

    HboneRoute,
    HboneServer,
    InboundTunnel,
    Reject,
    ServerCertificates,
    TlsIdentity,
    TunnelResult,
)
from ambient_fast.identity import MeshCA

CLIENT_ID = "spiffe://cluster.local/ns/client/sa/sleep"
SERVER_ID = "spiffe://cluster.local/ns/server/sa/echo"


def tls_identity(ca: MeshCA, spiffe_id: str) -> TlsIdentity:
    cert = ca.issue(spiffe_id)
    return TlsIdentity(cert.chain_pem, cert.key_pem, cert.roots_pem)


def listening_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def dial(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class TunnelServer:
    """An HBONE server that tunnels to any allowed `ip:port` target on loopback."""

    server: HboneServer
    results: list[TunnelResult] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def destination(self) -> str:
        host, port = self.server.address
        return f"{host}:{port}"


@contextlib.asynccontextmanager
async def tunnel_server(identity: TlsIdentity) -> AsyncIterator[TunnelServer]:
    certs = ServerCertificates()
    certs.set(None, identity)

    async def handler(tunnel: InboundTunnel) -> Accept | Reject:
        if tunnel.target.ip is None:
            return Reject(503, "no such workload")
        try:
            upstream = await dial(tunnel.target.host, tunnel.target.port)
        except OSError as e:
            return Reject(503, f"upstream connect failed: {e}")
        return Accept(upstream)

    holder: list[TunnelServer] = []

    def on_result(result: TunnelResult) -> None:
        holder[0].results.append(result)
        holder[0].done.set()

    server = HboneServer(listening_socket(), certs, handler, on_result)
    ts = TunnelServer(server)
    holder.append(ts)
    task = asyncio.create_task(server.serve())
    try:
        yield ts
    finally:
        server.drain()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def route(
    ts: TunnelServer, identity: TlsIdentity, target: tuple[str, int], expected: str = SERVER_ID
) -> HboneRoute:
    return HboneRoute(ts.destination, identity, (expected,), f"{target[0]}:{target[1]}")



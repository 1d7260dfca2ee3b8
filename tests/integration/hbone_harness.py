"""Loopback HBONE fixtures: a mesh CA, identities, a server that dials targets, tunnels whose
both ends the test holds, and a hand-driven HTTP/2-over-TLS client for misbehaving peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
from sockets import tcp_pair
from waits import DEADLINE, wait_until

from ambient_fast.hbone import (
    Accept,
    HboneClient,
    HboneRoute,
    HboneServer,
    Http2Settings,
    InboundTunnel,
    PumpResult,
    Reject,
    ServerCertificates,
    TlsIdentity,
    TunnelResult,
)
from ambient_fast.hbone.server import Handler
from ambient_fast.identity.ca import MeshCA, WorkloadCertificate

CLIENT_ID = "spiffe://cluster.local/ns/client/sa/sleep"
SERVER_ID = "spiffe://cluster.local/ns/server/sa/echo"
# Longest any single expected event may take on a loaded 2-core CI box.
Headers = list[tuple[str, str]]


def tls_identity(ca: MeshCA, spiffe_id: str, trusting: MeshCA | None = None) -> TlsIdentity:
    """An identity issued by `ca` that trusts `trusting`'s root (default: `ca`'s own)."""
    cert = ca.issue(spiffe_id)
    return TlsIdentity(cert.chain_pem, cert.key_pem, (trusting or ca).root_pem)


def listening_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def unused_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def dial(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def reset(sock: socket.socket) -> None:
    """Closes `sock` with an RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


async def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """Reads exactly `n` bytes; fails if the peer closes first or nothing comes in time."""
    loop = asyncio.get_running_loop()
    data = bytearray()
    while len(data) < n:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, n - len(data)), DEADLINE)
        if not chunk:
            raise AssertionError(f"EOF after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


async def recv_to_eof(sock: socket.socket) -> bytes:
    """Reads until the peer's FIN; an RST raises ConnectionResetError."""
    loop = asyncio.get_running_loop()
    data = bytearray()
    while chunk := await asyncio.wait_for(loop.sock_recv(sock, 65536), DEADLINE):
        data += chunk
    return bytes(data)


async def sendall(sock: socket.socket, data: bytes) -> None:
    await asyncio.wait_for(asyncio.get_running_loop().sock_sendall(sock, data), DEADLINE)


async def finish(task: asyncio.Future[Any]) -> None:
    """Gives `task` DEADLINE to end on its own, then cancels it; never raises."""
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(asyncio.shield(task), DEADLINE)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@dataclass
class TunnelServer:
    """An HBONE server that, by default, tunnels to any `ip:port` target on loopback."""

    server: HboneServer
    serving: asyncio.Task[None]
    tunnels: list[InboundTunnel] = field(default_factory=list)
    results: list[TunnelResult] = field(default_factory=list)

    @property
    def destination(self) -> str:
        host, port = self.server.address
        return f"{host}:{port}"

    async def result_count(self, n: int) -> list[TunnelResult]:
        """Waits until `n` tunnels have finished; returns their results."""
        await wait_until(lambda: len(self.results) >= n, f"{n} finished tunnels")
        return self.results[:n]


async def dial_target(tunnel: InboundTunnel) -> Accept | Reject:
    """The default handler: dial the CONNECT's ip:port, 503 if that fails."""
    if tunnel.target.ip is None:
        return Reject(503, "no such workload")
    try:
        upstream = await dial(tunnel.target.host, tunnel.target.port)
    except OSError as e:
        return Reject(503, f"upstream connect failed: {e}")
    return Accept(upstream)


@contextlib.asynccontextmanager
async def tunnel_server(
    identity: TlsIdentity,
    handler: Handler = dial_target,
    settings: Http2Settings | None = None,
) -> AsyncIterator[TunnelServer]:
    certs = ServerCertificates()
    certs.set(None, identity)
    holder: list[TunnelServer] = []

    async def recording(tunnel: InboundTunnel) -> Accept | Reject:
        holder[0].tunnels.append(tunnel)
        return await handler(tunnel)

    server = HboneServer(
        listening_socket(), certs, recording, lambda r: holder[0].results.append(r), settings
    )
    ts = TunnelServer(server, asyncio.create_task(server.serve()))
    holder.append(ts)
    try:
        yield ts
    finally:
        server.drain()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(server.wait_closed(), DEADLINE)
        await finish(ts.serving)


@dataclass
class TunnelEnds:
    """A tunnel whose two plaintext ends the test holds: client app <-> HBONE <-> upstream."""

    app: socket.socket
    upstream: socket.socket
    pumping: asyncio.Task[PumpResult]


@dataclass
class Loopback:
    """A client pool, an HBONE server and a backend listener, all on 127.0.0.1."""

    ca: MeshCA
    client_identity: TlsIdentity
    server: TunnelServer
    client: HboneClient
    backend: socket.socket
    cleanup: contextlib.AsyncExitStack

    @property
    def backend_address(self) -> tuple[str, int]:
        host, port = self.backend.getsockname()[:2]
        return host, port

    def route(
        self, expected: tuple[str, ...] = (SERVER_ID,), identity: TlsIdentity | None = None
    ) -> HboneRoute:
        """The route to the backend through the server, as `identity` (default the client)."""
        return HboneRoute(
            self.server.destination,
            identity or self.client_identity,
            expected,
            "{}:{}".format(*self.backend_address),
        )

    async def open(
        self, headers: Iterable[tuple[str, str]] = (), route: HboneRoute | None = None
    ) -> TunnelEnds:
        """Opens a tunnel to the backend and accepts its upstream end."""
        app, far = tcp_pair()
        self.cleanup.callback(far.close)  # a no-op once the pump owns the fd
        self.cleanup.callback(app.close)
        tunnel = await self.client.open(route or self.route(), list(headers))
        pumping = asyncio.create_task(tunnel.pump(far))
        # Unwound in reverse: both ends close (below) before finish() waits for the pump.
        self.cleanup.push_async_callback(finish, pumping)
        self.cleanup.callback(app.close)
        loop = asyncio.get_running_loop()
        upstream, _ = await asyncio.wait_for(loop.sock_accept(self.backend), DEADLINE)
        upstream.setblocking(False)
        self.cleanup.callback(upstream.close)
        return TunnelEnds(app, upstream, pumping)


@contextlib.asynccontextmanager
async def loopback(
    handler: Handler = dial_target,
    settings: Http2Settings | None = None,
    client: HboneClient | None = None,
) -> AsyncIterator[Loopback]:
    ca = MeshCA.create()
    async with contextlib.AsyncExitStack() as cleanup:
        server = await cleanup.enter_async_context(
            tunnel_server(tls_identity(ca, SERVER_ID), handler, settings)
        )
        client = client or HboneClient()
        cleanup.callback(client.close)
        backend = cleanup.enter_context(listening_socket())
        yield Loopback(ca, tls_identity(ca, CLIENT_ID), server, client, backend, cleanup)


@contextlib.asynccontextmanager
async def echo_backend(host: str = "127.0.0.1") -> AsyncIterator[tuple[str, int]]:
    """A plaintext echo server; each connection echoes until EOF, then half-closes."""
    listener = listening_socket(host)
    loop = asyncio.get_running_loop()
    echoes: set[asyncio.Task[None]] = set()

    async def echo(sock: socket.socket) -> None:
        with sock:
            while data := await loop.sock_recv(sock, 65536):
                await loop.sock_sendall(sock, data)
            sock.shutdown(socket.SHUT_WR)

    async def accept() -> None:
        while True:
            sock, _ = await loop.sock_accept(listener)
            sock.setblocking(False)
            task = asyncio.create_task(echo(sock))
            echoes.add(task)
            task.add_done_callback(echoes.discard)

    accepting = asyncio.create_task(accept())
    try:
        host, port = listener.getsockname()[:2]
        yield host, port
    finally:
        accepting.cancel()
        for task in list(echoes):
            task.cancel()
        await asyncio.gather(accepting, *echoes, return_exceptions=True)
        listener.close()


def client_tls_context(roots_pem: bytes, cert: WorkloadCertificate | None) -> ssl.SSLContext:
    """Python's own TLS client for HBONE: TLS 1.3, ALPN h2, optional client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # SPIFFE: no DNS names in workload certificates
    context.load_verify_locations(cadata=roots_pem.decode())
    context.set_alpn_protocols(["h2"])
    if cert is not None:
        with tempfile.TemporaryDirectory() as directory:
            chain, key = os.path.join(directory, "c.pem"), os.path.join(directory, "k.pem")
            with open(chain, "wb") as f:
                f.write(cert.chain_pem)
            with open(key, "wb") as f:
                f.write(cert.key_pem)
            context.load_cert_chain(chain, key)
    return context


@dataclass(frozen=True)
class Answer:
    """What came back for one request: a status, or a stream reset."""

    status: int | None = None
    reset: h2.errors.ErrorCodes | int | None = None


class RawH2:
    """HTTP/2 over TLS driven by hand with the `h2` package, to send what the pool never would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(
            # No outbound validation: sending what a correct client never would is the point.
            h2.config.H2Configuration(client_side=True, validate_outbound_headers=False)
        )
        self.answers: dict[int, Answer] = {}

    @classmethod
    async def connect(
        cls, address: tuple[str, int], context: ssl.SSLContext, sock: socket.socket | None = None
    ) -> RawH2:
        """TLS + HTTP/2 preface to `address`, over `sock` if given (already connected)."""
        if sock is None:
            sock = socket.create_connection(address, timeout=DEADLINE)
        sock.setblocking(False)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(sock=sock, ssl=context, server_hostname=""), DEADLINE
        )
        if writer.get_extra_info("ssl_object").selected_alpn_protocol() != "h2":
            writer.close()
            raise AssertionError("server did not select ALPN h2")
        raw = cls(reader, writer)
        raw.conn.initiate_connection()
        await raw.flush()
        return raw

    async def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())
        await self.writer.drain()

    async def request(self, headers: Headers) -> Answer:
        """Sends one request's HEADERS and reads until it is answered or reset."""
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, headers)
        await self.flush()
        while stream_id not in self.answers:
            data = await asyncio.wait_for(self.reader.read(65536), DEADLINE)
            if not data:
                raise ConnectionError(f"connection closed before stream {stream_id} was answered")
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = next(v for k, v in event.headers or [] if k == b":status")
                    self.answers[event.stream_id] = Answer(status=int(status))
                elif isinstance(event, h2.events.StreamReset):
                    # A reset after a complete response (RST_STREAM NO_ERROR) keeps the status.
                    self.answers.setdefault(event.stream_id, Answer(reset=event.error_code))
            await self.flush()
        return self.answers[stream_id]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, asyncio.TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), DEADLINE)


def connect_headers(authority: str, method: str = "CONNECT") -> Headers:
    if method == "CONNECT":
        return [(":method", "CONNECT"), (":authority", authority)]
    return [(":method", method), (":scheme", "https"), (":path", "/"), (":authority", authority)]

"""One proxy's DNS server: UDP and TCP (two-byte length prefix, RFC 1035 4.2.2) on localhost.

`DnsHandler.answer` turns one query into one answer: the client workload (the proxy's own, as
ztunnel: the pod's in in-pod mode, the configured one in dedicated mode; SERVFAIL while it is not
known), then the mesh's records (`DnsResolver`) or the upstream's answer (`Forwarder`), cut to
a UDP client's size. Malformed input never escapes: a message
with a readable header gets FORMERR, shorter ones and responses (never reflected) are dropped,
each with a log line naming the client. `DnsServer` runs the sockets; `open_dns_sockets` makes
them (ztunnel binds 127.0.0.1 and, when the namespace has it, ::1).
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import random
import socket
import struct
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

from ambient_fast.metrics.dns import DnsMetrics, dns_labels
from ambient_fast.state import Workload
from ambient_fast.ztunnel.dns.forwarder import Forwarder, UpstreamFailure, UpstreamSocketFactory
from ambient_fast.ztunnel.dns.message import (
    MAX_TCP_MESSAGE,
    OPCODE_QUERY,
    MalformedMessage,
    Query,
    Rcode,
    Record,
    build_response,
    error_response,
    fit,
    name_text,
    parse_header,
    parse_query,
    type_name,
)
from ambient_fast.ztunnel.dns.resolver import Answer, DnsResolver
from ambient_fast.ztunnel.sockets import set_mark

log = logging.getLogger(__name__)

# ztunnel's DEFAULT_TCP_REQUEST_TIMEOUT: a TCP client idle this long is closed.
TCP_REQUEST_TIMEOUT = 5.0
LOCALHOST = ("127.0.0.1", "::1")

# Whose query it is: the proxy's own workload (None: not in the store yet).
ClientResolver = Callable[[], Workload | None]


class Transport(enum.Enum):
    UDP = "udp"
    TCP = "tcp"


def _text(address: tuple[str, int]) -> str:
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class DnsHandler:
    """Answers queries for one proxy. `shuffle` orders each answer's addresses (ztunnel
    randomizes them for DNS load balancing)."""

    def __init__(
        self,
        resolver: DnsResolver,
        forwarder: Forwarder,
        client_of: ClientResolver,
        metrics: DnsMetrics | None = None,
        *,
        shuffle: Callable[[list[Record]], None] = random.shuffle,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._resolver = resolver
        self._forwarder = forwarder
        self._client_of = client_of
        self._metrics = metrics
        self._shuffle = shuffle
        self._clock = clock

    async def answer(
        self, data: bytes, client: tuple[str, int], transport: Transport
    ) -> bytes | None:
        """The bytes to send back to `client`, or None to send nothing."""
        try:
            header = parse_header(data)
        except MalformedMessage as e:
            log.info("dns: dropped %s query from %s: %s", transport.value, _text(client), e)
            return None
        if header.is_response:
            # Never answer a response: it would make us a reflector.
            log.info("dns: dropped a response sent to us by %s", _text(client))
            return None
        try:
            query = parse_query(data)
        except MalformedMessage as e:
            log.info("dns: FORMERR to %s (id %d): %s", _text(client), header.id, e)
            return error_response(header, Rcode.FORMERR)
        if header.opcode != OPCODE_QUERY:
            log.info("dns: NOTIMP to %s: opcode %d", _text(client), header.opcode)
            return error_response(header, Rcode.NOTIMP, query.question)
        limit = query.udp_limit if transport is Transport.UDP else MAX_TCP_MESSAGE
        try:
            return await self._answer(data, query, client, transport, limit)
        except Exception:
            log.exception(
                "dns: failed answering %s from %s",
                name_text(query.question.name),
                _text(client),
            )
            return build_response(query, Rcode.SERVFAIL, limit=limit)

    async def _answer(
        self, data: bytes, query: Query, client: tuple[str, int], transport: Transport, limit: int
    ) -> bytes:
        question = query.question
        source = self._client_of()
        labels = dns_labels(type_name(question.qtype), transport.value, source)
        if self._metrics is not None:
            self._metrics.requests.inc(labels)
        if source is None:
            log.info("dns: SERVFAIL to %s: the proxy's workload is not known yet", _text(client))
            return build_response(query, Rcode.SERVFAIL, limit=limit)
        resolution = self._resolver.resolve(source, question.name, question.qtype)
        if isinstance(resolution, Answer):
            records = list(resolution.records)
            addresses = [r for r in records if r.rtype == question.qtype]
            self._shuffle(addresses)
            records = [r for r in records if r.rtype != question.qtype] + addresses
            _access_log(query, source, resolution.result, len(records))
            return build_response(query, Rcode.NOERROR, records, authoritative=True, limit=limit)
        return await self._forward(data, query, source, labels, limit)

    async def _forward(
        self,
        data: bytes,
        query: Query,
        source: Workload | None,
        labels: tuple[str, ...],
        limit: int,
    ) -> bytes:
        metrics = self._metrics
        if metrics is not None:
            metrics.upstream_requests.inc(labels)
        started = self._clock()
        try:
            answer, message = await self._forwarder.forward(data, query.question)
        except UpstreamFailure as e:
            if metrics is not None:
                metrics.upstream_failures.inc(labels)
            _access_log(query, source, f"forwarding failed ({e})", 0)
            return build_response(query, Rcode.SERVFAIL, limit=limit)
        finally:
            if metrics is not None:
                metrics.upstream_duration.observe(labels, self._clock() - started)
        _access_log(query, source, "forwarded", len(message.answers))
        return fit(message, answer, limit)


def _access_log(query: Query, source: Workload | None, result: str, records: int) -> None:
    # ztunnel's DNS access log, at debug level as there.
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "dns: src.workload=%s src.namespace=%s query=%s domain=%s result=%s endpoints=%d",
            source.name if source else "unknown",
            source.namespace if source else "unknown",
            type_name(query.question.qtype).upper(),
            name_text(query.question.name),
            result,
            records,
        )


@dataclass(frozen=True, slots=True)
class DnsSockets:
    """A proxy's DNS listeners and how it opens upstream sockets (None: in its own netns)."""

    udp: tuple[socket.socket, ...]
    tcp: tuple[socket.socket, ...]
    new_socket: UpstreamSocketFactory | None = None

    def close(self) -> None:
        for sock in (*self.udp, *self.tcp):
            sock.close()


def open_dns_sockets(port: int, *, mark: int | None = None, reuse_port: bool = False) -> DnsSockets:
    """UDP and TCP on 127.0.0.1:`port`, and on [::1] when this namespace has it (ztunnel's
    localhost address, downgraded where IPv6 is off). All or nothing."""
    udp: list[socket.socket] = []
    tcp: list[socket.socket] = []
    try:
        for host in LOCALHOST:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            try:
                pair = [_bound(family, kind, host, port, mark, reuse_port)
                        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM)]  # fmt: skip
            except OSError as e:
                if family == socket.AF_INET6 and e.errno in (
                    errno.EADDRNOTAVAIL,
                    errno.EAFNOSUPPORT,
                ):
                    continue  # no IPv6 on this loopback
                raise
            udp.append(pair[0])
            tcp.append(pair[1])
    except BaseException:
        for sock in (*udp, *tcp):
            sock.close()
        raise
    return DnsSockets(tuple(udp), tuple(tcp))


def _bound(
    family: socket.AddressFamily,
    kind: socket.SocketKind,
    host: str,
    port: int,
    mark: int | None,
    reuse_port: bool,
) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if mark is not None:
            set_mark(sock, mark)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self.transport is not None and addr[1] != 0:  # port 0 cannot be answered
            self._server.spawn(self._server.udp_query(self.transport, data, addr))

    def error_received(self, exc: Exception) -> None:
        log.debug("dns: UDP socket error: %s", exc)


class DnsServer:
    """Serves `sockets` with `handler` from `start` until `close`."""

    def __init__(self, sockets: DnsSockets, handler: DnsHandler) -> None:
        self._sockets = sockets
        self._handler = handler
        self._transports: list[asyncio.DatagramTransport] = []
        self._servers: list[asyncio.Server] = []
        self._queries: set[asyncio.Task[Any]] = set()  # answers under way
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self.addresses = [(Transport.UDP, s.getsockname()[:2]) for s in sockets.udp] + [
            (Transport.TCP, s.getsockname()[:2]) for s in sockets.tcp
        ]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            for sock in self._sockets.udp:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(self), sock=sock
                )
                self._transports.append(transport)
            for sock in self._sockets.tcp:
                self._servers.append(await asyncio.start_server(self._tcp_client, sock=sock))
        except BaseException:
            await self.close(0)
            raise

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._queries.add(task)
        task.add_done_callback(self._queries.discard)

    async def udp_query(
        self, transport: asyncio.DatagramTransport, data: bytes, addr: tuple[str | Any, int]
    ) -> None:
        client = (str(addr[0]), int(addr[1]))
        reply = await self._handler.answer(data, client, Transport.UDP)
        if reply is not None and not transport.is_closing():
            transport.sendto(reply, addr)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = (str(peer[0]), int(peer[1])) if peer else ("unknown", 0)
        connection = asyncio.current_task()
        if connection is not None:
            self._connections[connection] = writer
        try:
            while True:
                try:
                    async with asyncio.timeout(TCP_REQUEST_TIMEOUT):
                        (size,) = struct.unpack("!H", await reader.readexactly(2))
                        data = await reader.readexactly(size)
                except (asyncio.IncompleteReadError, TimeoutError):
                    return  # closed, or idle: ztunnel's request timeout
                answering = asyncio.ensure_future(self._handler.answer(data, client, Transport.TCP))
                self._queries.add(answering)
                answering.add_done_callback(self._queries.discard)
                reply = await answering
                if reply is not None:
                    writer.write(struct.pack("!H", len(reply)) + reply)
                    await writer.drain()
        except OSError as e:
            log.debug("dns: TCP client %s: %s", _text(client), e)
        finally:
            if connection is not None:
                self._connections.pop(connection, None)
            writer.close()

    async def close(self, deadline: float) -> None:
        """Stops listening; answers under way get `deadline` seconds (0: cut now); then every
        connection is closed."""
        for transport in self._transports:
            transport.close()
        for server in self._servers:
            server.close()
        self._sockets.close()  # also those never handed to a transport or server
        if self._queries and deadline > 0:
            await asyncio.wait(list(self._queries), timeout=deadline)
        pending = [*self._queries, *self._connections]
        for task in pending:
            task.cancel()
        for writer in self._connections.values():
            writer.close()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

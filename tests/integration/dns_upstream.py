"""DNS on loopback for the DNS proxy's tests: a fake upstream resolver on <ip>:53 (UDP and TCP,
answers from a table, truncated over UDP past 512 bytes as a real server does) and clients that
ask one question over UDP or TCP from a chosen source address."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from ambient_fast.ztunnel.dns.message import (
    FLAG_QR,
    FLAG_RA,
    FLAG_RD,
    FLAG_TC,
    MIN_UDP_PAYLOAD,
    Edns,
    Header,
    Message,
    Question,
    Rcode,
    Record,
    build_message,
    build_query,
    lower,
    name_from_text,
    parse_message,
    parse_query,
)

DNS_PORT = 53
IO_TIMEOUT = 5.0


def loopback_ip() -> str:
    """A loopback address nothing else listens on port 53 of (127.0.0.53 may be a stub)."""
    return f"127.{random.randrange(60, 250)}.{random.randrange(1, 250)}.{random.randrange(2, 250)}"


@dataclass
class FakeUpstream:
    """Answers A/AAAA queries from `zone` ((lower-case name text, type) -> records); NXDOMAIN
    for the rest. `seen` lists (transport, client ip, question) of every query."""

    ip: str
    zone: Mapping[tuple[str, int], Sequence[Record]]
    seen: list[tuple[str, str, Question]] = field(default_factory=list)
    _transport: asyncio.DatagramTransport | None = None
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        upstream = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                upstream._transport = cast(asyncio.DatagramTransport, transport)

            def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
                reply = upstream.answer(data, "udp", str(addr[0]), MIN_UDP_PAYLOAD)
                assert upstream._transport is not None
                upstream._transport.sendto(reply, addr)

        await loop.create_datagram_endpoint(Udp, local_addr=(self.ip, DNS_PORT))
        self._server = await asyncio.start_server(self._tcp, self.ip, DNS_PORT)

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            (size,) = struct.unpack("!H", await reader.readexactly(2))
            reply = self.answer(await reader.readexactly(size), "tcp", str(peer[0]), None)
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
        finally:
            writer.close()

    def answer(self, data: bytes, transport: str, client: str, limit: int | None) -> bytes:
        query = parse_query(data)
        self.seen.append((transport, client, query.question))
        key = (b".".join(lower(query.question.name)).decode(), query.question.qtype)
        records = self.zone.get(key)
        flags = FLAG_QR | FLAG_RA | (query.header.flags & FLAG_RD)
        if records is None:
            header = Header(query.header.id, flags | Rcode.NXDOMAIN)
            return build_message(header, [query.question])
        reply = build_message(Header(query.header.id, flags), [query.question], records)
        if limit is not None and len(reply) > limit:  # the client should come back over TCP
            return build_message(Header(query.header.id, flags | FLAG_TC), [query.question])
        return reply

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        if self._server is not None:
            self._server.close()


def _ask_udp(
    port: int, data: bytes, source: str, server: str = "127.0.0.1", timeout: float = IO_TIMEOUT
) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.sendto(data, (server, port))
        return sock.recv(65535)


def _ask_tcp(port: int, data: bytes, server: str = "127.0.0.1") -> bytes:
    with socket.create_connection((server, port), timeout=IO_TIMEOUT) as sock:
        sock.sendall(struct.pack("!H", len(data)) + data)
        head = _recv_exactly(sock, 2)
        return _recv_exactly(sock, struct.unpack("!H", head)[0])


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


async def ask_udp(
    port: int,
    name: str,
    qtype: int,
    *,
    source: str = "127.0.0.1",
    id: int = 0x5151,
    edns: Edns | None = None,
) -> Message:
    """One query over UDP (from a thread: the proxy runs on this loop)."""
    data = build_query(id, name_from_text(name), qtype, edns=edns)
    return parse_message(await asyncio.to_thread(_ask_udp, port, data, source))


async def ask_udp_raw(port: int, data: bytes, wait: float = IO_TIMEOUT) -> bytes:
    """Any bytes to the proxy; TimeoutError when nothing comes back within `wait`."""
    return await asyncio.to_thread(_ask_udp, port, data, "127.0.0.1", "127.0.0.1", wait)


async def ask_tcp(port: int, name: str, qtype: int, *, id: int = 0x6262) -> Message:
    data = build_query(id, name_from_text(name), qtype)
    return parse_message(await asyncio.to_thread(_ask_tcp, port, data))

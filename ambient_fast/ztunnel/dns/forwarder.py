"""Forwarding a query the mesh does not answer to the upstream resolvers of resolv.conf.

As ztunnel's SystemForwarder: the nameservers of the proxy's own resolv.conf (in a cluster,
kube-dns), no search list applied (the client's resolver already did), `options timeout:` and
`attempts:` honoured with hickory-resolver's defaults (5 s, 2 attempts) otherwise. The client's
query goes out as it is under a fresh random id, over UDP, again over TCP when the answer is
truncated; the answer comes back verbatim under the client's id. Answers that do not match the
query (id, question) are ignored. Upstream sockets carry the proxy's mark (0x539) so the pod's
capture never sends them back to us, and in in-pod mode they are made in the pod's namespace.
A dead or silent upstream ends in `UpstreamFailure` after at most timeout x attempts x servers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import random
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from ambient_fast.ztunnel.config import ConfigError
from ambient_fast.ztunnel.dns.message import (
    MAX_UDP_PAYLOAD,
    MalformedMessage,
    Message,
    Question,
    name_text,
    parse_message,
    type_name,
    with_id,
)
from ambient_fast.ztunnel.sockets import PROXY_MARK, set_mark

log = logging.getLogger(__name__)

DEFAULT_RESOLV_CONF = Path("/etc/resolv.conf")
# hickory-resolver's ResolverOpts defaults, which ztunnel keeps.
DEFAULT_TIMEOUT = 5.0
DEFAULT_ATTEMPTS = 2
# glibc's bounds on resolv.conf's options (RES_MAXRETRANS, RES_MAXRETRY).
MAX_TIMEOUT = 30.0
MAX_ATTEMPTS = 5
DNS_PORT = 53

# Makes an unconnected socket of a family and type (in-pod: inside the pod's namespace).
UpstreamSocketFactory = Callable[
    [socket.AddressFamily, socket.SocketKind], Awaitable[socket.socket]
]


class ResolvConfError(ConfigError):
    """A resolv.conf the DNS proxy cannot forward with; names the file."""


class UpstreamFailure(Exception):
    """No upstream answered; says what each one did."""


@dataclass(frozen=True, slots=True)
class ResolvConf:
    nameservers: tuple[str, ...]
    search: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    attempts: int = DEFAULT_ATTEMPTS

    @classmethod
    def parse(cls, text: str, source: str = "resolv.conf") -> ResolvConf:
        """resolv(5): `nameserver` lines (invalid addresses skipped, as glibc does), the last
        `search` or `domain` line, `options timeout:N attempts:N`."""
        nameservers: list[str] = []
        search: tuple[str, ...] = ()
        timeout, attempts = DEFAULT_TIMEOUT, DEFAULT_ATTEMPTS
        for line in text.splitlines():
            words = line.split()
            if not words or words[0][0] in "#;":
                continue
            keyword, values = words[0], words[1:]
            if keyword == "nameserver" and values:
                try:
                    nameservers.append(str(ipaddress.ip_address(values[0].partition("%")[0])))
                except ValueError:
                    log.warning("dns: %s: ignoring nameserver %r (not an IP)", source, values[0])
            elif keyword == "search":
                search = tuple(values)
            elif keyword == "domain" and values:
                search = (values[0],)
            elif keyword == "options":
                for option in values:
                    name, _, value = option.partition(":")
                    if name == "timeout" and value.isdigit():
                        timeout = min(max(float(value), 1.0), MAX_TIMEOUT)
                    elif name == "attempts" and value.isdigit():
                        attempts = min(max(int(value), 1), MAX_ATTEMPTS)
        if not nameservers:
            raise ResolvConfError(
                f"{source}: no nameserver line; the DNS proxy forwards the names the mesh does "
                "not know to them (ISTIO_META_DNS_CAPTURE=false turns the proxy off)"
            )
        return cls(tuple(nameservers), search, timeout, attempts)

    @classmethod
    def load(cls, path: Path = DEFAULT_RESOLV_CONF) -> ResolvConf:
        try:
            text = path.read_text()
        except OSError as e:
            raise ResolvConfError(f"{path}: {e.strerror or e}") from e
        return cls.parse(text, str(path))


def _family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


async def _plain_socket(family: socket.AddressFamily, kind: socket.SocketKind) -> socket.socket:
    return socket.socket(family, kind)


class Forwarder:
    """One proxy's way upstream (dedicated: the node's sockets; in-pod: the pod's)."""

    def __init__(
        self,
        upstream: ResolvConf,
        *,
        new_socket: UpstreamSocketFactory | None = None,
        mark: int | None = PROXY_MARK,
        rng: random.Random | None = None,
    ) -> None:
        self.upstream = upstream
        self._new_socket = new_socket or _plain_socket
        self._mark = mark
        self._rng = rng or random.SystemRandom()  # query ids guard against spoofed answers

    async def forward(self, query: bytes, question: Question) -> tuple[bytes, Message]:
        """The upstream's answer to `query` (the client's bytes) under the client's id, and
        its parsed form. Raises UpstreamFailure."""
        client_id = struct.unpack_from("!H", query)[0]
        upstream_id = self._rng.randrange(1 << 16)
        request = with_id(query, upstream_id)
        failures = []
        for _ in range(self.upstream.attempts):
            for server in self.upstream.nameservers:
                try:
                    data, message = await self._exchange(server, request, upstream_id, question)
                except (OSError, TimeoutError, MalformedMessage) as e:
                    failures.append(f"{server}: {_reason(e, self.upstream.timeout)}")
                    continue
                header = dataclasses.replace(message.header, id=client_id)
                return with_id(data, client_id), dataclasses.replace(message, header=header)
        raise UpstreamFailure(
            f"no upstream answered {name_text(question.name)} {type_name(question.qtype)}: "
            + "; ".join(failures)
        )

    async def _exchange(
        self, server: str, request: bytes, upstream_id: int, question: Question
    ) -> tuple[bytes, Message]:
        async with asyncio.timeout(self.upstream.timeout):
            data, message = await self._udp(server, request, upstream_id, question)
            if not message.header.truncated:
                return data, message
        # Truncated over UDP: the whole answer over TCP, with a timeout of its own.
        async with asyncio.timeout(self.upstream.timeout):
            return await self._tcp(server, request, upstream_id, question)

    async def _socket(self, server: str, kind: socket.SocketKind) -> socket.socket:
        sock = await self._new_socket(_family(server), kind)
        try:
            sock.setblocking(False)
            if self._mark is not None:
                try:
                    set_mark(sock, self._mark)
                except PermissionError:
                    log.warning(
                        "dns: SO_MARK %#x not permitted (needs CAP_NET_ADMIN); upstream "
                        "queries go unmarked and DNS capture may send them back to the proxy",
                        self._mark,
                    )
                    self._mark = None
        except BaseException:
            sock.close()
            raise
        return sock

    async def _udp(
        self, server: str, request: bytes, upstream_id: int, question: Question
    ) -> tuple[bytes, Message]:
        loop = asyncio.get_running_loop()
        with await self._socket(server, socket.SOCK_DGRAM) as sock:
            sock.connect((server, DNS_PORT))  # UDP: no handshake, never blocks
            await loop.sock_sendall(sock, request)
            while True:  # until the answer to this query (or the timeout)
                data = await loop.sock_recv(sock, MAX_UDP_PAYLOAD)
                message = _answer_to(data, upstream_id, question)
                if message is not None:
                    return data, message

    async def _tcp(
        self, server: str, request: bytes, upstream_id: int, question: Question
    ) -> tuple[bytes, Message]:
        loop = asyncio.get_running_loop()
        with await self._socket(server, socket.SOCK_STREAM) as sock:
            await loop.sock_connect(sock, (server, DNS_PORT))
            await loop.sock_sendall(sock, struct.pack("!H", len(request)) + request)
            (size,) = struct.unpack("!H", await _recv_exactly(sock, 2))
            data = await _recv_exactly(sock, size)
        message = _answer_to(data, upstream_id, question)
        if message is None:
            raise MalformedMessage("the TCP answer is not for this query")
        return data, message


def _answer_to(data: bytes, upstream_id: int, question: Question) -> Message | None:
    """The parsed answer if `data` answers our query (its id, our one question), else None."""
    try:
        message = parse_message(data)
    except MalformedMessage as e:
        log.debug("dns: ignoring a malformed upstream answer: %s", e)
        return None
    header = message.header
    if not header.is_response or header.id != upstream_id:
        return None
    if len(message.questions) != 1 or not message.questions[0].matches(question):
        return None
    return message


async def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def _reason(error: BaseException, timeout: float) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__

"""The node proxy's sockets: marked, transparent, with the options ztunnel sets (reference 01).

`UpstreamDialer.connect` opens a proxy-side connection: SO_MARK 0x539 (so redirect rules skip
it), TCP_NODELAY, keepalive 180 s/180 s/9, a 10 s connect timeout and, when asked, the client's
IP as the source (IP_TRANSPARENT + bind). Privileges missing (no CAP_NET_ADMIN) are logged once
per dialer and the option is dropped, so an unprivileged run still serves traffic.
`original_destination` reads where a redirected connection was going (SO_ORIGINAL_DST), and
`listening_socket` opens a listener (transparent for TPROXY, marked, SO_REUSEPORT for a hand-over).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import struct
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

# Istio's mark on every node-proxy socket (istio-cni's 0x539/0xfff rules; reference 01/04).
PROXY_MARK = 0x539
# ztunnel's connect timeout and keepalive (reference 01, Sockets).
DEFAULT_CONNECT_TIMEOUT = 10.0
KEEPALIVE_IDLE = 180
KEEPALIVE_INTERVAL = 180
KEEPALIVE_COUNT = 9
# linux/netfilter_ipv4.h SO_ORIGINAL_DST and linux/netfilter_ipv6/ip6_tables.h
# IP6T_SO_ORIGINAL_DST: both 80, at SOL_IP and SOL_IPV6.
SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
# Not exported by Python's socket module on every version.
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = 75
SO_MARK = getattr(socket, "SO_MARK", 36)

# Every address, both families (ztunnel binds [::]); 0.0.0.0 where IPv6 is off.
ALL_ADDRESSES = "::"
FALLBACK_ADDRESS = "0.0.0.0"

Address = tuple[str, int]
# Makes an unconnected TCP socket of a family (in-pod: inside the pod's network namespace).
SocketFactory = Callable[[socket.AddressFamily], Awaitable[socket.socket]]


def _family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET


def set_mark(sock: socket.socket, mark: int = PROXY_MARK) -> None:
    """SO_MARK; raises PermissionError without CAP_NET_ADMIN."""
    sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)


def set_transparent(sock: socket.socket) -> None:
    """IP_TRANSPARENT (IPV6_TRANSPARENT): bind to, or accept for, a non-local address.
    Raises PermissionError without CAP_NET_ADMIN."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)


def set_stream_options(sock: socket.socket) -> None:
    """TCP_NODELAY and ztunnel's keepalive."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)


def _v4_mapped(host: str) -> bool:
    return host.lower().startswith("::ffff:") and "." in host


def original_destination(sock: socket.socket) -> Address:
    """Where an accepted connection was going: SO_ORIGINAL_DST after a nat REDIRECT, else the
    local address (a TPROXY'd socket, or one that was not redirected at all)."""
    try:
        # A dual-stack listener's IPv4 client has a v4-mapped address and an IPv4 conntrack
        # entry, which only SOL_IP finds (ztunnel's socket.rs tries the same on [::]).
        if sock.family == socket.AF_INET6 and not _v4_mapped(sock.getsockname()[0]):
            raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
            port = struct.unpack_from("!H", raw, 2)[0]
            ip = ipaddress.IPv6Address(raw[8:24])
            mapped = ip.ipv4_mapped
            return (str(mapped) if mapped is not None else str(ip)), port
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port = struct.unpack_from("!H", raw, 2)[0]
        return str(ipaddress.IPv4Address(raw[4:8])), port
    except OSError as e:
        # ENOENT: no conntrack NAT entry (not redirected); ENOPROTOOPT: no netfilter.
        if e.errno not in (errno.ENOENT, errno.ENOPROTOOPT, errno.EINVAL):
            raise
    host, port = sock.getsockname()[:2]
    return str(host), int(port)


def listening_socket(
    address: Address,
    *,
    transparent: bool = False,
    mark: int | None = None,
    reuse_port: bool = False,
    backlog: int = socket.SOMAXCONN,
) -> socket.socket:
    """A non-blocking listener; `transparent` for TPROXY capture (accepts any destination);
    `reuse_port` so a new proxy can take the port over during an upgrade."""
    sock = socket.socket(_family(address[0]), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if transparent:
            set_transparent(sock)
        if mark is not None:
            set_mark(sock, mark)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def listening_socket_everywhere(
    port: int,
    host: str | None = None,
    *,
    transparent: bool = False,
    mark: int | None = None,
    reuse_port: bool = False,
) -> socket.socket:
    """`listening_socket` on `host`, or on every address: [::] (dual-stack), else 0.0.0.0."""

    def listen(on: str) -> socket.socket:
        return listening_socket(
            (on, port), transparent=transparent, mark=mark, reuse_port=reuse_port
        )

    if host is not None:
        return listen(host)
    try:
        return listen(ALL_ADDRESSES)
    except OSError:
        return listen(FALLBACK_ADDRESS)


class UpstreamDialer:
    """Opens the proxy's upstream connections with its mark and, when asked and permitted, the
    client's source IP. Options the process may not set are dropped after one log line."""

    def __init__(
        self,
        *,
        mark: int | None = PROXY_MARK,
        transparent: bool = True,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        new_socket: SocketFactory | None = None,
    ) -> None:
        self.mark = mark
        self.transparent = transparent
        self.connect_timeout = connect_timeout
        self._new_socket = new_socket

    async def connect(self, target: Address, source_ip: str | None = None) -> socket.socket:
        """A connected non-blocking socket to `target`, from `source_ip` when transparent
        sourcing is on (else from the proxy's own address). Raises OSError / TimeoutError
        naming the target."""
        family = _family(target[0])
        if self._new_socket is not None:
            sock = await self._new_socket(family)
        else:
            sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            set_stream_options(sock)
            self._apply_mark(sock)
            if source_ip is not None and self.transparent:
                self._bind_source(sock, source_ip)
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await asyncio.get_running_loop().sock_connect(sock, target)
            except TimeoutError:
                raise TimeoutError(
                    f"connect to {_text(target)} timed out after {self.connect_timeout:g}s"
                ) from None
            except OSError as e:
                raise OSError(e.errno, f"connect to {_text(target)}: {e.strerror}") from e
        except BaseException:
            sock.close()
            raise
        return sock

    def _apply_mark(self, sock: socket.socket) -> None:
        if self.mark is None:
            return
        try:
            set_mark(sock, self.mark)
        except PermissionError:
            log.warning(
                "sockets: SO_MARK %#x not permitted (needs CAP_NET_ADMIN); proxy connections "
                "go unmarked and redirect rules may capture them again",
                self.mark,
            )
            self.mark = None

    def _bind_source(self, sock: socket.socket, source_ip: str) -> None:
        if _family(source_ip) != sock.family:
            return  # a v4 client to a v6 target (or back): the kernel picks the source
        try:
            set_transparent(sock)
        except PermissionError:
            log.warning(
                "sockets: IP_TRANSPARENT not permitted (needs CAP_NET_ADMIN); workloads will "
                "see the proxy's address instead of their clients'"
            )
            self.transparent = False
            return
        try:
            sock.bind((source_ip, 0))
        except OSError as e:
            # Per connection: the address may be unusable here (no route back through us).
            log.warning(
                "sockets: cannot use source %s (%s); connecting from the proxy's own address",
                source_ip,
                e.strerror,
            )


def _text(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

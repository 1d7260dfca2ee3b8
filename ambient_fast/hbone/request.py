"""Sans-IO CONNECT validation: what an HBONE server checks before any socket is opened."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

# Statuses from istio/ztunnel's inbound path (reference 01).
STATUS_OK = 200
STATUS_BAD_REQUEST = 400
STATUS_UNAUTHORIZED = 401
STATUS_SERVICE_UNAVAILABLE = 503

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


class InvalidAuthority(ValueError):
    """A CONNECT :authority that is not ip:port, [v6]:port or hostname:port (-> 400)."""


@dataclass(frozen=True, slots=True)
class HboneTarget:
    """Where a CONNECT asks to go: an IP or a service hostname, and a port."""

    host: str
    port: int
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None

    def __str__(self) -> str:
        return (
            f"[{self.host}]:{self.port}"
            if isinstance(self.ip, ipaddress.IPv6Address)
            else f"{self.host}:{self.port}"
        )


def parse_authority(authority: str) -> HboneTarget:
    """Parses a CONNECT :authority; raises InvalidAuthority naming the input."""
    host, sep, port_text = authority.rpartition(":")
    if not sep or not host:
        raise InvalidAuthority(f"authority {authority!r}: expected host:port")
    # ASCII only: str.isdigit() also accepts other scripts' digits ("٨٠", "²").
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise InvalidAuthority(f"authority {authority!r}: port {port_text!r} is not 1-65535")
    port = int(port_text)
    if host.startswith("[") and host.endswith("]"):
        try:
            v6 = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise InvalidAuthority(f"authority {authority!r}: bad IPv6 address") from None
        if v6.scope_id is not None:  # ipaddress accepts any text after "%"
            raise InvalidAuthority(f"authority {authority!r}: IPv6 zone not allowed")
        return HboneTarget(str(v6), port, v6)
    try:
        v4 = ipaddress.IPv4Address(host)
    except ValueError:
        if ":" in host:
            raise InvalidAuthority(f"authority {authority!r}: IPv6 must be in brackets") from None
        if not _HOSTNAME.fullmatch(host):  # match() would let "$" accept a trailing "\n"
            raise InvalidAuthority(f"authority {authority!r}: bad hostname") from None
        return HboneTarget(host.lower(), port, None)
    return HboneTarget(str(v4), port, v4)

"""What a policy is evaluated against: one connection (L4) or one HTTP request (L7)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_SPIFFE = "spiffe://"


@dataclass(frozen=True, slots=True)
class HttpAttributes:
    """The request attributes a waypoint sees; header names are lower case."""

    method: str
    path: str  # already normalized (ambient_fast.policy.paths)
    host: str
    headers: Mapping[str, str] = field(default_factory=dict)
    request_principal: str | None = None  # "<iss>/<sub>" of a validated JWT
    claims: Mapping[str, object] = field(default_factory=dict)
    remote_ip: IpAddress | None = None  # from X-Forwarded-For, when trusted


@dataclass(frozen=True, slots=True)
class Request:
    """A connection (and, at a waypoint, its HTTP request) seen by an enforcement point.

    `source_identity` is the mTLS peer's SPIFFE id; None for plaintext.
    """

    source_ip: IpAddress
    destination_ip: IpAddress
    destination_port: int
    source_identity: str | None = None
    http: HttpAttributes | None = None
    sni: str | None = None

    @property
    def principal(self) -> str | None:
        """Istio principals drop the scheme: cluster.local/ns/<ns>/sa/<sa>."""
        if self.source_identity is None:
            return None
        return self.source_identity.removeprefix(_SPIFFE)

    @property
    def source_namespace(self) -> str | None:
        parts = (self.principal or "").split("/")
        return parts[2] if len(parts) == 5 and parts[1] == "ns" else None

    @property
    def source_service_account(self) -> str | None:
        """ "<namespace>/<service account>", the form of Match.service_accounts."""
        parts = (self.principal or "").split("/")
        return f"{parts[2]}/{parts[4]}" if len(parts) == 5 and parts[3] == "sa" else None

"""HBONE: HTTP/2 CONNECT over mutual TLS with SPIFFE identities (Istio's port 15008).

`HboneClient` opens tunnels through a pool (`HboneRoute`), `HboneServer` lets Python decide
each CONNECT (`Accept`/`Reject`); the bytes move in the Rust extension (`_native`).
"""

from ambient_fast._native import HboneError, Http2Settings, ServerCertificates, TlsIdentity
from ambient_fast.hbone.client import HboneClient, HboneRejected, HboneRoute, PumpResult
from ambient_fast.hbone.request import HboneTarget, InvalidAuthority, parse_authority
from ambient_fast.hbone.server import Accept, HboneServer, InboundTunnel, Reject, TunnelResult

__all__ = [
    "Accept",
    "HboneClient",
    "HboneError",
    "HboneRejected",
    "HboneRoute",
    "HboneServer",
    "HboneTarget",
    "Http2Settings",
    "InboundTunnel",
    "InvalidAuthority",
    "PumpResult",
    "Reject",
    "ServerCertificates",
    "TlsIdentity",
    "TunnelResult",
    "parse_authority",
]

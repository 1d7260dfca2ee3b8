"""ztunnel: the node proxy (outbound 15001, inbound HBONE 15008, inbound plaintext 15006).

Today: its configuration (`ZtunnelConfig`, Istio's environment variables and matching flags) and
the sans-IO traffic decisions: `routing.route_outbound` -> `OutboundRoute` (15001) and
`inbound_decision.decide_inbound` / `decide_plaintext` / `recheck` -> `Accepted | Rejected`
(15008, 15006). The listeners, in-pod mode, identities and operations are built on the packages
beside it (hbone, state, xds, identity, policy).
"""

from ambient_fast.ztunnel.config import ConfigError, ProxyMode, ZtunnelConfig

__all__ = ["ConfigError", "ProxyMode", "ZtunnelConfig"]

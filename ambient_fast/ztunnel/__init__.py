"""ztunnel: the node proxy (outbound 15001, inbound HBONE 15008, inbound plaintext 15006).

Its configuration (`ZtunnelConfig`, Istio's environment variables and matching flags), the
sans-IO traffic decisions (`routing.route_outbound` -> `OutboundRoute`;
`inbound_decision.decide_inbound` / `decide_plaintext` / `recheck` -> `Accepted | Rejected`), the
listeners (`proxy.WorkloadProxy`), in-pod mode (`zds.ZdsSession` sans-IO, `inpod.ZdsClient` and
`inpod.InPodProxies`) and `app.Ztunnel`, which wires them to state, identities and operations.
"""

from ambient_fast.ztunnel.config import ConfigError, ProxyMode, ZtunnelConfig

__all__ = ["ConfigError", "ProxyMode", "ZtunnelConfig"]

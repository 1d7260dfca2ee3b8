"""Inbound decisions: may a connection reach a local workload, and at which address.

HBONE on 15008 (`decide_inbound`): the CONNECT authority against the address the client
dialled, the local workload, the target port, then L4 policy with the peer's identity.
Plaintext on 15006 (`decide_plaintext`): the same policy check with no identity. `recheck`
repeats the policy check for a live connection after a change. Sans-IO; the order and the
statuses follow istio/ztunnel src/proxy/inbound.rs (`build_inbound_request`,
`validate_destination`, `find_inbound_upstream`) and inbound_passthrough.rs (reference 01).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Container
from dataclasses import dataclass

from ambient_fast.hbone.request import (
    STATUS_BAD_REQUEST,
    STATUS_SERVICE_UNAVAILABLE,
    STATUS_UNAUTHORIZED,
    HboneTarget,
    InvalidAuthority,
    parse_authority,
)
from ambient_fast.policy import Action, Decision, Request
from ambient_fast.state import Service, StateChange, StateStore, Workload
from ambient_fast.state.model import ApplicationTunnelProtocol, IpAddress
from ambient_fast.ztunnel.routing import PROXY_PORTS, SocketAddress, canonical_ip, find_gateway


@dataclass(frozen=True, slots=True)
class Accepted:
    """Connect to `target` (a local workload's IP and port) with the client's source IP."""

    target: SocketAddress
    workload: Workload
    request: Request  # what policy saw; kept to re-check the connection later
    decision: Decision
    service: Service | None = None  # the service a hostname authority named
    # Where the client was going, for the PROXY v2 header of a PROXY application tunnel.
    proxy_protocol_target: SocketAddress | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """Refuse with `status` (the CONNECT response; plaintext connections are just closed)."""

    status: int
    reason: str
    decision: Decision | None = None  # set when policy refused


def decide_inbound(
    store: StateStore,
    local_workloads: Container[str],
    connect_authority: str,
    dst_ip: IpAddress | str,
    peer_identity: str | None,
    peer_ip: IpAddress | str,
    *,
    network: str = "",
    proxy_ports: Container[int] = PROXY_PORTS,
) -> Accepted | Rejected:
    """Decides one CONNECT received on `dst_ip` (the local address the client dialled) from
    `peer_ip` presenting `peer_identity` (the first URI SAN). `local_workloads` holds the uids
    of the workloads this proxy serves."""
    dst = canonical_ip(dst_ip)
    try:
        target = parse_authority(connect_authority)
    except InvalidAuthority as e:
        return Rejected(STATUS_BAD_REQUEST, str(e))
    workload = _local_workload(store, local_workloads, network, dst)
    if workload is None:
        return Rejected(STATUS_SERVICE_UNAVAILABLE, f"unknown local workload at {dst}")
    if (
        target.ip is not None
        and target.ip != dst
        and not _may_carry(store, network, target, dst, workload)
    ):
        return Rejected(
            STATUS_BAD_REQUEST, f"ip mismatch: authority {target} on a connection to {dst}"
        )
    service = None
    if target.ip is None:
        service = _service_by_hostname(store, target.host, workload)
        if service is None:
            return Rejected(STATUS_SERVICE_UNAVAILABLE, f"no service for hostname {target.host}")
        port = workload.services.get(service.key, {}).get(target.port) or (
            service.ports[target.port].target_port if target.port in service.ports else 0
        )
        if not port:
            return Rejected(
                STATUS_SERVICE_UNAVAILABLE, f"service {service.key} has no port {target.port}"
            )
    else:
        port = target.port
    if port in proxy_ports:
        return Rejected(STATUS_SERVICE_UNAVAILABLE, f"loop: port {port} is the proxy's own")
    upstream = SocketAddress(dst, port)
    proxy_target = None
    tunnel = workload.application_tunnel
    if tunnel is not None:
        upstream = SocketAddress(dst, tunnel.port or port)
        if tunnel.protocol is ApplicationTunnelProtocol.PROXY:
            proxy_target = _tunnel_target(target, service, network)
            if proxy_target is None:
                return Rejected(
                    STATUS_SERVICE_UNAVAILABLE, f"no IP for service {target.host} on {network!r}"
                )
    return _authorize(store, workload, upstream, peer_identity, peer_ip, service, proxy_target)


def decide_plaintext(
    store: StateStore,
    local_workloads: Container[str],
    dst: tuple[IpAddress | str, int],
    peer_ip: IpAddress | str,
    *,
    network: str = "",
    proxy_ports: Container[int] = PROXY_PORTS,
) -> Accepted | Rejected:
    """Decides one plaintext connection captured on 15006: no peer identity, so any policy
    that requires one (STRICT mTLS is a DENY with notPrincipals ["*"]) refuses it."""
    target = SocketAddress.of(*dst)
    if target.port in proxy_ports:
        # A client dialling <pod>:15006 would be redirected to it again, forever.
        return Rejected(STATUS_SERVICE_UNAVAILABLE, f"loop: port {target.port} is the proxy's own")
    workload = _local_workload(store, local_workloads, network, target.ip)
    if workload is None:
        return Rejected(STATUS_SERVICE_UNAVAILABLE, f"unknown local workload at {target.ip}")
    return _authorize(store, workload, target, None, peer_ip, None, None)


def recheck(store: StateStore, accepted: Accepted) -> Accepted | Rejected:
    """The same policy decision for a live connection under the store's current policies (and
    the workload's current policy list); a Rejected means: close it now."""
    workload = store.workload_by_uid(accepted.workload.uid) or accepted.workload
    decision = store.authorize(workload, accepted.request)
    if not decision.allowed:
        return Rejected(STATUS_UNAUTHORIZED, _denial(store, workload, decision), decision)
    return dataclasses.replace(accepted, workload=workload, decision=decision)


def needs_recheck(change: StateChange, accepted: Accepted) -> bool:
    """Whether a store change can alter the connection's policy decision: any policy change,
    or a change of the destination workload (its selector policies)."""
    return bool(change.policies) or accepted.workload.uid in change.workloads


def _local_workload(
    store: StateStore, local: Container[str], network: str, ip: IpAddress
) -> Workload | None:
    workload = store.workload_by_ip(network, ip)
    return workload if workload is not None and workload.uid in local else None


def _may_carry(
    store: StateStore, network: str, target: HboneTarget, dst: IpAddress, local: Workload
) -> bool:
    """An authority naming another address is fine for a workload with its own application
    tunnel (it gets the target in the PROXY header) and for the waypoint of that address (the
    "sandwich" without a tunnel); anything else is an IP mismatch (ztunnel's
    validate_destination)."""
    if local.application_tunnel is not None:
        return True
    assert target.ip is not None
    named = store.workload_by_ip(network, target.ip) or store.service_by_vip(network, target.ip)
    if named is None or named.waypoint is None:
        return False
    waypoint = find_gateway(store, named.waypoint)
    if isinstance(waypoint, Service):
        return waypoint.key in local.services
    return waypoint is not None and dst in waypoint.ips


def _service_by_hostname(store: StateStore, hostname: str, local: Workload) -> Service | None:
    """The service with this hostname, the local workload's namespace first (ztunnel)."""
    services = store.services_by_hostname(hostname)
    own = next((s for s in services if s.namespace == local.namespace), None)
    return own or (services[0] if services else None)


def _tunnel_target(
    target: HboneTarget, service: Service | None, network: str
) -> SocketAddress | None:
    if target.ip is not None:
        return SocketAddress(target.ip, target.port)
    # PROXY v2 carries no hostname: use the service's VIP on our network, IPv4 first.
    assert service is not None
    vips = [v.ip for v in service.vips if v.network == network]
    vips.sort(key=lambda ip: ip.version)
    return SocketAddress(vips[0], target.port) if vips else None


def _authorize(
    store: StateStore,
    workload: Workload,
    upstream: SocketAddress,
    peer_identity: str | None,
    peer_ip: IpAddress | str,
    service: Service | None,
    proxy_target: SocketAddress | None,
) -> Accepted | Rejected:
    request = Request(
        source_ip=canonical_ip(peer_ip),
        destination_ip=upstream.ip,
        destination_port=upstream.port,
        source_identity=peer_identity,
    )
    decision = store.authorize(workload, request)
    if not decision.allowed:
        return Rejected(STATUS_UNAUTHORIZED, _denial(store, workload, decision), decision)
    return Accepted(upstream, workload, request, decision, service, proxy_target)


def _denial(store: StateStore, workload: Workload, decision: Decision) -> str:
    """The reason for the log: the deciding DENY policy and rule, or the ALLOW policies of
    which none matched."""
    if decision.policy is not None:
        return f"{decision.reason} {decision.policy} (rule {decision.rule})"
    allows = sorted(
        p.policy.key
        for p in store.policies_for(workload)
        if p.policy.action is Action.ALLOW and not p.policy.dry_run
    )
    return f"{decision.reason} (ALLOW policies: {', '.join(allows)})"

"""Outbound routing: where the node proxy sends one captured connection (reference 03,
"Traffic paths"), decided as a value.

Sans-IO: the state store, the source workload and the original destination in, an
`OutboundRoute` out (kind, dial address, HBONE authority, expected identities, headers). The
random source and the trace id are injected; nothing is dialled here. The steps follow
istio/ztunnel src/proxy/outbound.rs (`build_request`) and src/state.rs (`load_balance`,
`fetch_waypoint`, `check_from_waypoint`).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from ambient_fast.hbone.headers import Baggage, forwarded, traceparent
from ambient_fast.identity.spiffe import Identity, InvalidIdentity
from ambient_fast.state import Endpoint, GatewayAddress, Service, StateStore, Workload
from ambient_fast.state.model import (
    DEFAULT_HBONE_PORT,
    IpAddress,
    IpFamilies,
    LoadBalancingMode,
    LoadBalancingScope,
    NetworkAddress,
)

# The node proxy's own listeners (reference 01; ztunnel's `illegal_ports`): a connection to one
# of them on the proxy itself would come straight back in.
PROXY_PORTS = frozenset({15001, 15006, 15008})


class RouteKind(enum.Enum):
    PASSTHROUGH = "passthrough"  # unknown destination: plain TCP to the original destination
    DIRECT_TCP = "direct-tcp"  # known but not captured: plain TCP to the endpoint
    HBONE = "hbone"  # captured endpoint: HBONE to <pod ip>:15008
    WAYPOINT = "waypoint"  # HBONE to the waypoint, authority = the original destination
    ERROR = "error"  # refused; `error` says why


class RouteError(enum.Enum):
    LOOP = "loop"
    NO_HEALTHY_UPSTREAM = "no healthy upstream"
    UNKNOWN_WAYPOINT = "unknown waypoint"


class RandomSource(Protocol):
    """Where endpoint picks get their randomness (`random.Random` fits; tests pass a stub)."""

    def random(self) -> float: ...


def canonical_ip(ip: IpAddress | str) -> IpAddress:
    """The address as the store keys it: an IPv4-mapped IPv6 address (from a dual-stack
    socket) becomes the IPv4 address, as ztunnel's to_canonical."""
    parsed = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


@dataclass(frozen=True, slots=True)
class SocketAddress:
    ip: IpAddress
    port: int

    @classmethod
    def of(cls, ip: IpAddress | str, port: int) -> SocketAddress:
        return cls(canonical_ip(ip), port)

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.ip.version == 6 else f"{self.ip}:{self.port}"


@dataclass(frozen=True, slots=True)
class OutboundRoute:
    """What the outbound proxy does with one connection."""

    kind: RouteKind
    original_destination: SocketAddress
    dial: SocketAddress | None = None  # where to connect; None for ERROR
    authority: str | None = None  # the CONNECT :authority (HBONE and WAYPOINT)
    expected_identities: tuple[str, ...] = ()  # SPIFFE ids the peer may present
    # The workload the connection reaches next (the waypoint's, when through one) and the
    # service the client addressed: the destination labels of metrics and access logs.
    destination_workload: Workload | None = None
    destination_service: Service | None = None
    headers: tuple[tuple[str, str], ...] = ()  # baggage, forwarded, traceparent (HBONE only)
    candidates: tuple[Endpoint, ...] = ()  # the endpoints the pick chose among
    error: RouteError | None = None
    reason: str = ""

    @property
    def tunnelled(self) -> bool:
        return self.kind in (RouteKind.HBONE, RouteKind.WAYPOINT)


# Process-wide and unseeded: endpoint picks only need to spread load.
_DEFAULT_RANDOM = random.Random()


def route_outbound(
    store: StateStore,
    source: Workload,
    original_dst: tuple[IpAddress | str, int],
    network: str = "",
    *,
    client: tuple[IpAddress | str, int],
    rng: RandomSource = _DEFAULT_RANDOM,
    proxy_ips: Collection[IpAddress] = (),
    proxy_ports: Collection[int] = PROXY_PORTS,
    hbone_port: int = DEFAULT_HBONE_PORT,
    new_traceparent: Callable[[], str] = traceparent,
) -> OutboundRoute:
    """The route for a connection from `source` (at `client`, ip and port) to `original_dst`
    (from the redirect), looked up on `network`. `proxy_ips` are the proxy's own addresses
    (loopback always counts) for the loop check; `hbone_port` is the peers' HBONE port."""
    dst = SocketAddress.of(*original_dst)
    if dst.port in proxy_ports and (dst.ip.is_loopback or dst.ip in proxy_ips):
        return _refused(dst, RouteError.LOOP, f"{dst} is the proxy's own listener")
    router = _Router(
        store, source, dst, SocketAddress.of(*client), rng, hbone_port, new_traceparent
    )
    # An address that is both a workload's and a VIP is a control-plane conflict; the workload
    # wins, as in ztunnel's find_address.
    workload = store.workload_by_ip(network, dst.ip)
    service = store.service_by_vip(network, dst.ip) if workload is None else None
    if service is not None:
        return router.to_service(service)
    if workload is None:
        return OutboundRoute(
            RouteKind.PASSTHROUGH, dst, dial=dst, reason="unknown destination: passthrough"
        )
    if workload.waypoint is not None and not is_from_gateway(store, workload.waypoint, source):
        return router.via_waypoint(workload.waypoint, None, f"workload {workload.uid}")
    return router.direct(workload, dst, None)


class _Router:
    """The inputs of one routing decision, so the steps below stay small."""

    def __init__(
        self,
        store: StateStore,
        source: Workload,
        dst: SocketAddress,
        client: SocketAddress,
        rng: RandomSource,
        hbone_port: int,
        new_traceparent: Callable[[], str],
    ) -> None:
        self.store = store
        self.source = source
        self.dst = dst
        self.client = client
        self.rng = rng
        self.hbone_port = hbone_port
        self.new_traceparent = new_traceparent

    def to_service(self, service: Service) -> OutboundRoute:
        if service.waypoint is not None and not is_from_gateway(
            self.store, service.waypoint, self.source
        ):
            return self.via_waypoint(service.waypoint, service, f"service {service.key}")
        lb = service.load_balancing
        if lb is not None and lb.mode is LoadBalancingMode.PASSTHROUGH:
            # ztunnel: the original destination, reported as unknown (no service label).
            return OutboundRoute(
                RouteKind.PASSTHROUGH,
                self.dst,
                dial=self.dst,
                reason=f"service {service.key}: load balancing mode PASSTHROUGH",
            )
        if self.dst.port not in service.ports:
            return _refused(
                self.dst,
                RouteError.NO_HEALTHY_UPSTREAM,
                f"no healthy upstream: service {service.key} has no port {self.dst.port}",
                service,
            )
        candidates = eligible_endpoints(
            self.store.endpoints(service, self.dst.port), service, self.source
        )
        endpoint = pick_weighted(candidates, self.rng)
        if endpoint is None:
            return _refused(
                self.dst,
                RouteError.NO_HEALTHY_UPSTREAM,
                f"no healthy upstream: service {service.key} port {self.dst.port} "
                "has no usable endpoint",
                service,
            )
        ip = pick_ip(endpoint.workload, self.dst.ip, service.ip_families)
        assert ip is not None  # eligible_endpoints kept only workloads with a usable IP
        route = self.direct(endpoint.workload, SocketAddress(ip, endpoint.target_port), service)
        return dataclasses.replace(route, candidates=candidates)

    def direct(
        self, workload: Workload, target: SocketAddress, service: Service | None
    ) -> OutboundRoute:
        if not workload.captured:
            return OutboundRoute(
                RouteKind.DIRECT_TCP,
                self.dst,
                dial=target,
                destination_workload=workload,
                destination_service=service,
                reason=f"{workload.uid} is not captured: plain TCP",
            )
        return OutboundRoute(
            RouteKind.HBONE,
            self.dst,
            dial=SocketAddress(target.ip, self.hbone_port),
            authority=str(target),
            expected_identities=_identities(workload, service),
            destination_workload=workload,
            destination_service=service,
            headers=self.headers(service),
            reason=f"{workload.uid} is captured: HBONE",
        )

    def via_waypoint(
        self, gateway: GatewayAddress, service: Service | None, what: str
    ) -> OutboundRoute:
        hop = resolve_gateway(self.store, gateway, self.source, self.dst.ip, self.rng)
        if hop is None:
            return _refused(
                self.dst,
                RouteError.UNKNOWN_WAYPOINT,
                f"{what} at {self.dst}: waypoint {describe_gateway(gateway)} not found",
                service,
            )
        return OutboundRoute(
            RouteKind.WAYPOINT,
            self.dst,
            dial=hop.address,
            # The original destination, untranslated: the waypoint routes it (reference 01).
            authority=str(self.dst),
            expected_identities=hop.identities,
            destination_workload=hop.workload,
            destination_service=service,
            headers=self.headers(service),
            reason=f"{what} has waypoint {describe_gateway(gateway)}",
        )

    def headers(self, service: Service | None) -> tuple[tuple[str, str], ...]:
        return hbone_headers(self.source, self.client, service, self.new_traceparent())


def _refused(
    dst: SocketAddress, error: RouteError, reason: str, service: Service | None = None
) -> OutboundRoute:
    return OutboundRoute(
        RouteKind.ERROR, dst, destination_service=service, error=error, reason=reason
    )


def hbone_headers(
    source: Workload, client: SocketAddress, service: Service | None, trace: str
) -> tuple[tuple[str, str], ...]:
    """The CONNECT headers ztunnel sends: the source's baggage, `forwarded` with the client
    (and the service hostname when service-addressed), and the connection's traceparent."""
    baggage = Baggage(
        cluster=source.cluster_id,
        namespace=source.namespace,
        workload_kind=source.workload_type.value.lower(),
        workload_name=source.workload_name,
        service_name=source.canonical_name,
        service_version=source.canonical_revision,
        region=source.locality.region,
        zone=source.locality.zone,
    )
    host = service.hostname if service is not None else ""
    return (
        ("baggage", baggage.encode()),
        ("forwarded", forwarded(str(client.ip), client.port, host)),
        ("traceparent", trace),
    )


def _identities(workload: Workload, service: Service | None) -> tuple[str, ...]:
    """The workload's SPIFFE id, then the service's subjectAltNames that are SPIFFE ids
    (ztunnel skips the others with a warning)."""
    found = [str(workload.identity)]
    for san in service.subject_alt_names if service is not None else ():
        try:
            Identity.parse(san)
        except InvalidIdentity:
            continue
        if san not in found:
            found.append(san)
    return tuple(found)


# -- endpoint selection ---------------------------------------------------------------------


def pick_ip(
    workload: Workload, requested: IpAddress, families: IpFamilies = IpFamilies.AUTOMATIC
) -> IpAddress | None:
    """The workload IP to dial: the requested one if the workload has it, else one the
    service's IP families allow, preferring the requested family (ztunnel's
    pick_workload_destination)."""
    if requested in workload.ips:
        return requested
    allowed = _allowed_ips(workload, families)
    same_family = [ip for ip in allowed if ip.version == requested.version]
    choices = same_family or allowed
    return choices[0] if choices else None


def _allowed_ips(workload: Workload, families: IpFamilies) -> list[IpAddress]:
    if families is IpFamilies.IPV4_ONLY:
        return [ip for ip in workload.ips if ip.version == 4]
    if families is IpFamilies.IPV6_ONLY:
        return [ip for ip in workload.ips if ip.version == 6]
    return list(workload.ips)


def eligible_endpoints(
    endpoints: Sequence[Endpoint], service: Service, source: Workload
) -> tuple[Endpoint, ...]:
    """The endpoints a pick may choose: on the source's network with an IP the service's
    families allow, then narrowed by the service's locality preferences.

    `endpoints` come from `StateStore.endpoints` (healthy, serving the port; unhealthy too
    under ALLOW_ALL). Endpoints on other networks need an east-west gateway (double HBONE),
    which is not implemented: they are left out rather than dialled directly.
    """
    reachable = [
        e
        for e in endpoints
        if e.workload.network == source.network and _allowed_ips(e.workload, service.ip_families)
    ]
    lb = service.load_balancing
    if lb is None or lb.mode is LoadBalancingMode.STANDARD or not reachable:
        return tuple(reachable)
    scopes = lb.routing_preference
    ranked = [(_locality_rank(source, e.workload, scopes), e) for e in reachable]
    if lb.mode is LoadBalancingMode.STRICT:
        # Only endpoints matching every preference; may leave none.
        return tuple(e for rank, e in ranked if rank == len(scopes))
    best = max(rank for rank, _ in ranked)
    return tuple(e for rank, e in ranked if rank == best)  # FAILOVER: the closest tier


def _locality_rank(source: Workload, target: Workload, scopes: Sequence[LoadBalancingScope]) -> int:
    """How many leading preferences the target shares with the source (ztunnel's rank)."""
    same = {
        LoadBalancingScope.REGION: lambda: source.locality.region == target.locality.region,
        LoadBalancingScope.ZONE: lambda: source.locality.zone == target.locality.zone,
        LoadBalancingScope.SUBZONE: lambda: source.locality.subzone == target.locality.subzone,
        LoadBalancingScope.NODE: lambda: source.node == target.node,
        LoadBalancingScope.CLUSTER: lambda: source.cluster_id == target.cluster_id,
        LoadBalancingScope.NETWORK: lambda: source.network == target.network,
    }
    rank = 0
    for scope in scopes:
        if not same[scope]():
            break
        rank += 1
    return rank


def pick_weighted(endpoints: Sequence[Endpoint], rng: RandomSource) -> Endpoint | None:
    """One endpoint at random, weighted by workload capacity; None if the weights sum to 0."""
    total = sum(e.workload.capacity for e in endpoints)
    if total <= 0:
        return None
    point = rng.random() * total
    chosen = None
    for endpoint in endpoints:
        if endpoint.workload.capacity <= 0:
            continue
        chosen = endpoint
        point -= endpoint.workload.capacity
        if point < 0:
            break
    return chosen


# -- waypoints and other gateways -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayHop:
    """A waypoint resolved to one of its workloads: where to dial and whom to expect."""

    workload: Workload
    address: SocketAddress
    identities: tuple[str, ...]


def describe_gateway(gateway: GatewayAddress) -> str:
    return f"{gateway.destination}:{gateway.hbone_mtls_port}"


def find_gateway(store: StateStore, gateway: GatewayAddress) -> Workload | Service | None:
    """What a GatewayAddress names: by address a workload (first) or a service VIP; by
    hostname a service (first) or a workload with that hostname (ztunnel's
    find_destination)."""
    dest = gateway.destination
    if isinstance(dest, NetworkAddress):
        return store.workload_by_ip(dest.network, dest.ip) or store.service_by_vip(
            dest.network, dest.ip
        )
    service = store.service_by_hostname(dest.hostname, dest.namespace)
    if service is not None:
        return service
    # Rare (workload hostnames are for VMs and ServiceEntries): a scan, as in ztunnel.
    return next(
        (
            w
            for w in store.workloads()
            if w.hostname == dest.hostname and w.namespace == dest.namespace
        ),
        None,
    )


def resolve_gateway(
    store: StateStore,
    gateway: GatewayAddress,
    source: Workload,
    requested: IpAddress,
    rng: RandomSource = _DEFAULT_RANDOM,
) -> GatewayHop | None:
    """The waypoint workload to dial for `gateway`: the workload it names, or an endpoint of
    the waypoint service picked as for any service (port `hbone_mtls_port`)."""
    found = find_gateway(store, gateway)
    port = gateway.hbone_mtls_port
    if isinstance(found, Workload):
        dest = gateway.destination
        # Named by address: dial that address; by hostname: adapt to the caller's IP family.
        wanted = dest.ip if isinstance(dest, NetworkAddress) else requested
        ip = pick_ip(found, wanted)
        if ip is None:
            return None
        return GatewayHop(found, SocketAddress(ip, port), _identities(found, None))
    if found is None:
        return None
    endpoint = pick_weighted(eligible_endpoints(store.endpoints(found, port), found, source), rng)
    if endpoint is None:
        return None
    ip = pick_ip(endpoint.workload, requested, found.ip_families)
    assert ip is not None  # eligible_endpoints kept only workloads with a usable IP
    return GatewayHop(
        endpoint.workload,
        SocketAddress(ip, endpoint.target_port),
        _identities(endpoint.workload, found),
    )


def is_from_gateway(store: StateStore, gateway: GatewayAddress, source: Workload) -> bool:
    """Whether `source` is one of the gateway's own workloads (ztunnel's check_from_waypoint:
    same identity and one of its IPs), so its traffic must not be sent back to it."""
    found = find_gateway(store, gateway)
    if isinstance(found, Service):
        return found.key in source.services
    if found is None:
        return False
    return found.uid == source.uid or (
        found.identity == source.identity and not set(found.ips).isdisjoint(source.ips)
    )

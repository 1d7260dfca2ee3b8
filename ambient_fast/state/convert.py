"""Validating conversion of workload-API messages into `state.model` values.

Every resource from the control plane (or the local file) passes through here before the store
takes it; a resource that does not convert is rejected with a reason naming the field, and the
xDS client NACKs it while applying the rest (as ztunnel does).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

from ambient_fast.policy import Policy
from ambient_fast.policy.proto import from_authorization
from ambient_fast.state.model import (
    DEFAULT_HBONE_PORT,
    ApplicationTunnel,
    ApplicationTunnelProtocol,
    AppProtocol,
    GatewayAddress,
    HealthPolicy,
    IpAddress,
    IpFamilies,
    LoadBalancing,
    LoadBalancingMode,
    LoadBalancingScope,
    Locality,
    NamespacedHostname,
    NetworkAddress,
    NetworkMode,
    Service,
    ServicePort,
    TunnelProtocol,
    Workload,
    WorkloadType,
)
from ambient_fast.xds.proto import authorization_pb2 as authz_pb
from ambient_fast.xds.proto import workload_pb2 as pb

# ztunnel's defaults for empty fields (src/state/workload.rs, TryFrom<XdsWorkload>).
DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_SERVICE_ACCOUNT = "default"
DEFAULT_CLUSTER_ID = "Kubernetes"
MAX_PORT = 65535


class InvalidResource(ValueError):
    """A resource the node proxy cannot use; the message names the field."""


def ip_from_bytes(raw: bytes, what: str) -> IpAddress:
    if len(raw) not in (4, 16):
        raise InvalidResource(f"{what}: {len(raw)} bytes, expected 4 or 16")
    return ipaddress.ip_address(raw)


def _port(value: int, what: str, *, zero: bool = False) -> int:
    if value > MAX_PORT or (value == 0 and not zero):
        raise InvalidResource(f"{what}: port {value} out of range")
    return value


def _enum_name(name_of: Callable[[Any], str], value: int, what: str) -> str:
    """The enum's name (`name_of` is the enum's Name); proto3 enums are open, so an unknown
    number can arrive and makes the resource invalid."""
    try:
        name = name_of(value)
    except ValueError:
        raise InvalidResource(f"{what}: unknown value {value}") from None
    return name


def _service_key(key: str, what: str) -> NamespacedHostname:
    namespace, slash, hostname = key.partition("/")
    if not slash or not namespace or not hostname:
        raise InvalidResource(f"{what}: {key!r} is not <namespace>/<hostname>")
    return NamespacedHostname(namespace, hostname)


def _gateway(gw: pb.GatewayAddress, what: str) -> GatewayAddress:
    port = _port(gw.hbone_mtls_port, f"{what}.hbone_mtls_port", zero=True) or DEFAULT_HBONE_PORT
    kind = gw.WhichOneof("destination")
    if kind == "hostname":
        host = gw.hostname
        if not host.namespace or not host.hostname:
            raise InvalidResource(f"{what}.hostname: namespace and hostname are required")
        return GatewayAddress(NamespacedHostname(host.namespace, host.hostname), port)
    if kind == "address":
        ip = ip_from_bytes(gw.address.address, f"{what}.address")
        return GatewayAddress(NetworkAddress(gw.address.network, ip), port)
    raise InvalidResource(f"{what}: neither hostname nor address set")


def _port_map(ports: Iterable[pb.Port], what: str) -> dict[int, int]:
    out = {}
    for i, p in enumerate(ports):
        service_port = _port(p.service_port, f"{what}[{i}].service_port")
        out[service_port] = _port(p.target_port, f"{what}[{i}].target_port", zero=True)
    return out


def workload_from_proto(w: pb.Workload) -> Workload:
    """A Workload; raises InvalidResource naming the workload and the field."""
    if not w.uid:
        raise InvalidResource(f"workload {w.namespace}/{w.name}: uid is required")
    what = f"workload {w.uid}"
    ips = tuple(ip_from_bytes(a, f"{what}: addresses[{i}]") for i, a in enumerate(w.addresses))
    services = {}
    for key, port_list in w.services.items():
        _service_key(key, f"{what}: services key")
        services[key] = _port_map(port_list.ports, f"{what}: services[{key!r}].ports")
    tunnel = None
    if w.HasField("application_tunnel"):
        at = w.application_tunnel
        proto = _enum_name(
            pb.ApplicationTunnel.Protocol.Name, at.protocol, f"{what}: application_tunnel.protocol"
        )
        port = _port(at.port, f"{what}: application_tunnel.port", zero=True)
        tunnel = ApplicationTunnel(ApplicationTunnelProtocol[proto], port or None)
    status = _enum_name(pb.WorkloadStatus.Name, w.status, f"{what}: status")
    return Workload(
        uid=w.uid,
        name=w.name,
        namespace=w.namespace,
        ips=ips,
        hostname=w.hostname,
        network=w.network,
        protocol=TunnelProtocol[
            _enum_name(pb.TunnelProtocol.Name, w.tunnel_protocol, f"{what}: tunnel_protocol")
        ],
        trust_domain=w.trust_domain or DEFAULT_TRUST_DOMAIN,
        service_account=w.service_account or DEFAULT_SERVICE_ACCOUNT,
        waypoint=_gateway(w.waypoint, f"{what}: waypoint") if w.HasField("waypoint") else None,
        network_gateway=(
            _gateway(w.network_gateway, f"{what}: network_gateway")
            if w.HasField("network_gateway")
            else None
        ),
        node=w.node,
        canonical_name=w.canonical_name,
        canonical_revision=w.canonical_revision,
        workload_type=WorkloadType[
            _enum_name(pb.WorkloadType.Name, w.workload_type, f"{what}: workload_type")
        ],
        workload_name=w.workload_name,
        native_tunnel=w.native_tunnel,
        application_tunnel=tunnel,
        services=services,
        authorization_policies=tuple(w.authorization_policies),
        healthy=status == "HEALTHY",
        cluster_id=w.cluster_id or DEFAULT_CLUSTER_ID,
        locality=Locality(w.locality.region, w.locality.zone, w.locality.subzone),
        network_mode=NetworkMode[
            _enum_name(pb.NetworkMode.Name, w.network_mode, f"{what}: network_mode")
        ],
        capacity=w.capacity.value if w.HasField("capacity") else 1,
    )


def _load_balancing(lb: pb.LoadBalancing, what: str) -> LoadBalancing:
    scopes = []
    for i, value in enumerate(lb.routing_preference):
        name = _enum_name(pb.LoadBalancing.Scope.Name, value, f"{what}.routing_preference[{i}]")
        if name == "UNSPECIFIED_SCOPE":
            raise InvalidResource(f"{what}.routing_preference[{i}]: unspecified scope")
        scopes.append(LoadBalancingScope[name])
    mode = _enum_name(pb.LoadBalancing.Mode.Name, lb.mode, f"{what}.mode")
    health = _enum_name(
        pb.LoadBalancing.HealthPolicy.Name, lb.health_policy, f"{what}.health_policy"
    )
    return LoadBalancing(
        tuple(scopes),
        LoadBalancingMode.STANDARD if mode == "UNSPECIFIED_MODE" else LoadBalancingMode[mode],
        HealthPolicy[health],
    )


def service_from_proto(s: pb.Service) -> Service:
    """A Service; raises InvalidResource naming the service and the field."""
    if not s.namespace or not s.hostname:
        raise InvalidResource(
            f"service {s.namespace}/{s.hostname} (name {s.name!r}): "
            "namespace and hostname are required"
        )
    what = f"service {s.namespace}/{s.hostname}"
    vips = tuple(
        NetworkAddress(a.network, ip_from_bytes(a.address, f"{what}: addresses[{i}]"))
        for i, a in enumerate(s.addresses)
    )
    ports = {}
    for i, p in enumerate(s.ports):
        service_port = _port(p.service_port, f"{what}: ports[{i}].service_port")
        target = _port(p.target_port, f"{what}: ports[{i}].target_port", zero=True)
        app = _enum_name(pb.AppProtocol.Name, p.app_protocol, f"{what}: ports[{i}].app_protocol")
        ports[service_port] = ServicePort(service_port, target, AppProtocol[app])
    families = _enum_name(pb.IPFamilies.Name, s.ip_families, f"{what}: ip_families")
    return Service(
        name=s.name,
        namespace=s.namespace,
        hostname=s.hostname,
        vips=vips,
        ports=ports,
        subject_alt_names=tuple(s.subject_alt_names),
        waypoint=_gateway(s.waypoint, f"{what}: waypoint") if s.HasField("waypoint") else None,
        load_balancing=(
            _load_balancing(s.load_balancing, f"{what}: load_balancing")
            if s.HasField("load_balancing")
            else None
        ),
        ip_families=IpFamilies[families],
    )


def address_from_proto(name: str, address: pb.Address) -> Workload | Service:
    """The Workload or Service of an Address resource named `name` (uid, or ns/hostname)."""
    kind = address.WhichOneof("type")
    if kind == "workload":
        workload = workload_from_proto(address.workload)
        if name != workload.uid:
            raise InvalidResource(f"workload {workload.uid}: resource name {name!r} is not its uid")
        return workload
    if kind == "service":
        service = service_from_proto(address.service)
        if name != service.key:
            raise InvalidResource(f"service {service.key}: resource name {name!r} differs")
        return service
    raise InvalidResource("Address with neither workload nor service")


def policy_from_proto(name: str, message: authz_pb.Authorization) -> Policy:
    """An engine Policy from istio.security.Authorization named "<namespace>/<name>"."""
    key = f"{message.namespace}/{message.name}"
    if not message.name or not message.namespace:
        raise InvalidResource(f"authorization {key}: name and namespace are required")
    if name != key:
        raise InvalidResource(f"authorization {key}: resource name {name!r} differs")
    _enum_name(authz_pb.Scope.Name, message.scope, f"authorization {key}: scope")
    _enum_name(authz_pb.Action.Name, message.action, f"authorization {key}: action")
    try:
        return from_authorization(message)
    except ValueError as e:
        raise InvalidResource(str(e)) from None

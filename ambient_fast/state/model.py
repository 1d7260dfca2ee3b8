"""Workloads and services as the node proxy uses them: frozen values with parsed addresses.

Built once per xDS update (or local-file load) by `state.convert`, then only looked up. Field
names follow istio.workload (workload.proto); defaults follow ztunnel's conversion (empty trust
domain -> cluster.local, empty service account -> default, empty cluster -> Kubernetes, unset
capacity -> 1).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

from ambient_fast.identity.spiffe import Identity

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# The HBONE port a gateway listens on when the resource does not say (reference 01).
DEFAULT_HBONE_PORT = 15008


class TunnelProtocol(enum.Enum):
    """How traffic reaches the workload (workload.proto TunnelProtocol)."""

    NONE = "NONE"  # plain TCP
    HBONE = "HBONE"  # captured: mTLS + HTTP/2 CONNECT to port 15008
    LEGACY_ISTIO_MTLS = "LEGACY_ISTIO_MTLS"


class NetworkMode(enum.Enum):
    STANDARD = "STANDARD"
    HOST_NETWORK = "HOST_NETWORK"  # shares the node's IP: never looked up by address


class WorkloadType(enum.Enum):
    DEPLOYMENT = "DEPLOYMENT"
    CRONJOB = "CRONJOB"
    POD = "POD"
    JOB = "JOB"


class AppProtocol(enum.Enum):
    UNKNOWN = "UNKNOWN"
    HTTP11 = "HTTP11"
    HTTP2 = "HTTP2"
    GRPC = "GRPC"


class ApplicationTunnelProtocol(enum.Enum):
    NONE = "NONE"
    PROXY = "PROXY"


class LoadBalancingScope(enum.Enum):
    REGION = "REGION"
    ZONE = "ZONE"
    SUBZONE = "SUBZONE"
    NODE = "NODE"
    CLUSTER = "CLUSTER"
    NETWORK = "NETWORK"


class LoadBalancingMode(enum.Enum):
    STANDARD = "STANDARD"  # UNSPECIFIED_MODE on the wire: preferences ignored
    STRICT = "STRICT"
    FAILOVER = "FAILOVER"
    PASSTHROUGH = "PASSTHROUGH"


class HealthPolicy(enum.Enum):
    ONLY_HEALTHY = "ONLY_HEALTHY"
    ALLOW_ALL = "ALLOW_ALL"


class IpFamilies(enum.Enum):
    AUTOMATIC = "AUTOMATIC"
    IPV4_ONLY = "IPV4_ONLY"
    IPV6_ONLY = "IPV6_ONLY"
    DUAL = "DUAL"


@dataclass(frozen=True, slots=True)
class NetworkAddress:
    """An IP on a network: the key of workload and VIP lookups ("" is the default network)."""

    network: str
    ip: IpAddress

    def __str__(self) -> str:
        return f"{self.network}/{self.ip}"


@dataclass(frozen=True, slots=True)
class NamespacedHostname:
    namespace: str
    hostname: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.hostname}"


@dataclass(frozen=True, slots=True)
class GatewayAddress:
    """Where a waypoint or network gateway is: a service by name, or an address."""

    destination: NamespacedHostname | NetworkAddress
    hbone_mtls_port: int = DEFAULT_HBONE_PORT


@dataclass(frozen=True, slots=True)
class ApplicationTunnel:
    protocol: ApplicationTunnelProtocol
    port: int | None  # None: the original destination port


@dataclass(frozen=True, slots=True)
class Locality:
    region: str = ""
    zone: str = ""
    subzone: str = ""


@dataclass(frozen=True, slots=True)
class Workload:
    """One workload (pod, VM, ...). `services` maps "ns/hostname" to {service port: target port};
    a target port of 0 means "the service's own target port"."""

    uid: str
    name: str
    namespace: str
    ips: tuple[IpAddress, ...] = ()
    hostname: str = ""
    network: str = ""
    protocol: TunnelProtocol = TunnelProtocol.NONE
    trust_domain: str = "cluster.local"
    service_account: str = "default"
    waypoint: GatewayAddress | None = None
    network_gateway: GatewayAddress | None = None
    node: str = ""
    canonical_name: str = ""
    canonical_revision: str = ""
    workload_type: WorkloadType = WorkloadType.DEPLOYMENT
    workload_name: str = ""
    native_tunnel: bool = False
    application_tunnel: ApplicationTunnel | None = None
    services: dict[str, dict[int, int]] = field(default_factory=dict)
    authorization_policies: tuple[str, ...] = ()
    healthy: bool = True
    cluster_id: str = "Kubernetes"
    locality: Locality = Locality()
    network_mode: NetworkMode = NetworkMode.STANDARD
    capacity: int = 1

    @property
    def identity(self) -> Identity:
        return Identity(self.trust_domain, self.namespace, self.service_account)

    @property
    def captured(self) -> bool:
        """In the mesh: reached over HBONE (reference 02)."""
        return self.protocol is TunnelProtocol.HBONE

    def addresses(self) -> tuple[NetworkAddress, ...]:
        return tuple(NetworkAddress(self.network, ip) for ip in self.ips)


@dataclass(frozen=True, slots=True)
class ServicePort:
    service_port: int
    target_port: int  # 0: differs per endpoint (a named port), see Workload.services
    app_protocol: AppProtocol = AppProtocol.UNKNOWN


@dataclass(frozen=True, slots=True)
class LoadBalancing:
    routing_preference: tuple[LoadBalancingScope, ...] = ()
    mode: LoadBalancingMode = LoadBalancingMode.STANDARD
    health_policy: HealthPolicy = HealthPolicy.ONLY_HEALTHY


@dataclass(frozen=True, slots=True)
class Service:
    """One service; its endpoints are the workloads that list `key` in their `services`."""

    name: str
    namespace: str
    hostname: str
    vips: tuple[NetworkAddress, ...] = ()
    ports: dict[int, ServicePort] = field(default_factory=dict)
    subject_alt_names: tuple[str, ...] = ()
    waypoint: GatewayAddress | None = None
    load_balancing: LoadBalancing | None = None
    ip_families: IpFamilies = IpFamilies.AUTOMATIC

    @property
    def key(self) -> str:
        """The xDS resource name and the key workloads use: "<namespace>/<hostname>"."""
        return f"{self.namespace}/{self.hostname}"

    @property
    def accepts_unhealthy(self) -> bool:
        lb = self.load_balancing
        return lb is not None and lb.health_policy is HealthPolicy.ALLOW_ALL

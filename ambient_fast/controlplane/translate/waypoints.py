"""Which waypoint an object uses (reference 03 "Enrolment labels"), as istiod decides it.

The object's own `istio.io/use-waypoint` label wins; the namespace's applies only when the
object has none; `none` (or the older `#none`) opts out without falling back. The bound
Gateway must exist, be of class istio-waypoint and serve the traffic type.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping

from ambient_fast.controlplane.model import Gateway, Mesh
from ambient_fast.controlplane.model.gateway_api import GATEWAY_GROUP
from ambient_fast.controlplane.model.security import PolicyTargetRef
from ambient_fast.xds.proto import workload_pb2 as wl

USE_WAYPOINT = "istio.io/use-waypoint"
USE_WAYPOINT_NAMESPACE = "istio.io/use-waypoint-namespace"
WAYPOINT_FOR = "istio.io/waypoint-for"
# Set by istiod on a waypoint's own Deployment/Service/pods; those never get a waypoint.
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
OPT_OUT = ("none", "#none")
# The group Istio's matchesGroupKind expects per targetRef kind (core group: "" or "core").
TARGET_GROUPS = {
    "Gateway": (GATEWAY_GROUP,),
    "GatewayClass": (GATEWAY_GROUP,),
    "Service": ("", "core"),
}
HBONE_PORT = 15008
DEFAULT_DOMAIN = "cluster.local"


class Traffic(enum.Enum):
    """How the destination was addressed; decides which waypoints may serve it."""

    SERVICE = "service"
    WORKLOAD = "workload"


def waypoint_serves(mesh: Mesh, gateway: Gateway) -> str:
    """`istio.io/waypoint-for` of the Gateway, else of its GatewayClass, else `service`."""
    if WAYPOINT_FOR in gateway.labels:
        return gateway.labels[WAYPOINT_FOR]
    cls = mesh.gateway_class(gateway.gateway_class_name)
    return cls.labels.get(WAYPOINT_FOR, "service") if cls else "service"


def bound_waypoint(
    mesh: Mesh, namespace: str, labels: Mapping[str, str], traffic: Traffic
) -> Gateway | None:
    """The waypoint this object's traffic goes through, or None (direct)."""
    if GATEWAY_NAME_LABEL in labels:
        return None
    source = labels
    name = labels.get(USE_WAYPOINT)
    if name is None:
        source = mesh.namespace_labels(namespace)
        name = source.get(USE_WAYPOINT)
    if name is None or name in OPT_OUT:
        return None
    gateway = mesh.gateway(source.get(USE_WAYPOINT_NAMESPACE, namespace), name)
    if gateway is None or not gateway.is_waypoint:
        return None  # istiod: traffic goes direct while the waypoint does not exist
    serves = waypoint_serves(mesh, gateway)
    return gateway if serves in ("all", traffic.value) else None


def gateway_address(
    mesh: Mesh, gateway: Gateway, domain: str = DEFAULT_DOMAIN
) -> wl.GatewayAddress:
    """The waypoint's VIP when its Service exists with one, else its hostname."""
    service = mesh.service(gateway.namespace, gateway.name)
    if service is not None and service.cluster_ip:
        vip = ipaddress.ip_address(service.cluster_ip).packed
        return wl.GatewayAddress(
            address=wl.NetworkAddress(network="", address=vip), hbone_mtls_port=HBONE_PORT
        )
    hostname = f"{gateway.name}.{gateway.namespace}.svc.{domain}"
    return wl.GatewayAddress(
        hostname=wl.NamespacedHostname(namespace=gateway.namespace, hostname=hostname),
        hbone_mtls_port=HBONE_PORT,
    )


def attached(
    targets: Iterable[tuple[str, str]],
    namespace: str,
    gateway: tuple[str, str],
    service: tuple[str, str] | None,
    root_namespace: str,
) -> bool:
    """Whether targetRefs (kind, name) of an object in `namespace` attach it at waypoint
    `gateway` for traffic to `service`: the Gateway itself, the Service, or (from the root
    namespace) the istio-waypoint GatewayClass."""
    for kind, name in targets:
        if kind == "Gateway" and (namespace, name) == gateway:
            return True
        if kind == "Service" and service is not None and (namespace, name) == service:
            return True
        if kind == "GatewayClass" and name == "istio-waypoint" and namespace == root_namespace:
            return True
    return False


def waypoint_targets(
    refs: Iterable[PolicyTargetRef], namespace: str
) -> tuple[tuple[str, str], ...]:
    """(kind, name) of the targetRefs of an object in `namespace` that can attach it at a
    waypoint (for `attached`): same namespace, and the group Istio expects for the kind."""
    return tuple(
        (ref.kind, ref.name)
        for ref in refs
        if ref.namespace in (None, namespace) and ref.group in TARGET_GROUPS.get(ref.kind, ())
    )

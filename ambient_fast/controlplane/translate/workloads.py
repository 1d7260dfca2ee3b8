"""Pods and Services -> istio.workload Address resources, as istiod's ambient index builds them."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.wrappers_pb2 import UInt32Value

from ambient_fast.controlplane.model import Mesh, Pod, Service, ServicePort
from ambient_fast.controlplane.translate.waypoints import (
    Traffic,
    bound_waypoint,
    gateway_address,
)
from ambient_fast.xds.proto import workload_pb2 as wl

DATAPLANE_MODE = "istio.io/dataplane-mode"
AMBIENT = "ambient"

# istiod's label precedence for canonical service name and revision.
_CANONICAL_NAME = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
_CANONICAL_REVISION = (
    "service.istio.io/canonical-revision",
    "app.kubernetes.io/version",
    "version",
)

_APP_PROTOCOLS: dict[str, wl.AppProtocol.ValueType] = {
    "http": wl.HTTP11,
    "http2": wl.HTTP2,
    "h2c": wl.HTTP2,
    "kubernetes.io/h2c": wl.HTTP2,
    "grpc": wl.GRPC,
}


@dataclass(frozen=True, slots=True)
class Naming:
    cluster_id: str
    trust_domain: str
    domain: str


def service_hostname(service: Service, naming: Naming) -> str:
    return f"{service.name}.{service.namespace}.svc.{naming.domain}"


def service_resource_name(service: Service, naming: Naming) -> str:
    """Istio's name for a Service resource: <namespace>/<hostname>."""
    return f"{service.namespace}/{service_hostname(service, naming)}"


def workload_uid(pod: Pod, naming: Naming) -> str:
    """istiod's workload uid: <cluster>//Pod/<namespace>/<name>."""
    return f"{naming.cluster_id}//Pod/{pod.namespace}/{pod.name}"


def is_captured(mesh: Mesh, pod: Pod) -> bool:
    """In the mesh: ambient namespace, no pod opt-out, not host-networked."""
    if pod.host_network or pod.labels.get(DATAPLANE_MODE) == "none":
        return False
    return mesh.namespace_labels(pod.namespace).get(DATAPLANE_MODE) == AMBIENT


def _first_label(labels: Mapping[str, str], keys: tuple[str, ...], default: str) -> str:
    return next((labels[k] for k in keys if labels.get(k)), default)


def _workload_kind(pod: Pod) -> tuple[wl.WorkloadType.ValueType, str]:
    for owner in pod.meta.owner_references:
        if owner.kind == "ReplicaSet":
            # <deployment>-<pod-template-hash>: the deployment is the workload.
            return wl.DEPLOYMENT, owner.name.rsplit("-", 1)[0]
        if owner.kind == "Deployment":
            return wl.DEPLOYMENT, owner.name
        if owner.kind == "Job":
            return wl.JOB, owner.name
        if owner.kind == "CronJob":
            return wl.CRONJOB, owner.name
    return wl.POD, pod.name


def app_protocol(port: ServicePort) -> wl.AppProtocol.ValueType:
    if port.app_protocol:
        return _APP_PROTOCOLS.get(port.app_protocol.lower(), wl.UNKNOWN)
    prefix = (port.name or "").split("-", 1)[0].lower()
    return _APP_PROTOCOLS.get(prefix, wl.UNKNOWN)


def _target_port(port: ServicePort, pod: Pod | None) -> int | None:
    if isinstance(port.target_port, int):
        return port.target_port
    return pod.container_port(port.target_port) if pod is not None else None


def _packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


def build_workload(mesh: Mesh, pod: Pod, naming: Naming, policies: tuple[str, ...]) -> wl.Workload:
    kind, workload_name = _workload_kind(pod)
    services = {}
    for service in mesh.services_of_pod(pod):
        ports = [
            wl.Port(service_port=p.port, target_port=target)
            for p in service.ports
            if (target := _target_port(p, pod)) is not None and p.protocol == "TCP"
        ]
        services[f"{service.namespace}/{service_hostname(service, naming)}"] = wl.PortList(
            ports=ports
        )
    waypoint = bound_waypoint(mesh, pod.namespace, pod.labels, Traffic.WORKLOAD)
    running = pod.phase == "Running" and pod.ready
    return wl.Workload(
        uid=workload_uid(pod, naming),
        name=pod.name,
        namespace=pod.namespace,
        addresses=[_packed(ip) for ip in (pod.ips or ((pod.ip,) if pod.ip else ()))],
        tunnel_protocol=wl.HBONE if is_captured(mesh, pod) else wl.NONE,
        trust_domain=naming.trust_domain,
        service_account=pod.service_account,
        waypoint=gateway_address(mesh, waypoint, naming.domain) if waypoint else None,
        node=pod.node_name or "",
        canonical_name=_first_label(pod.labels, _CANONICAL_NAME, workload_name),
        canonical_revision=_first_label(pod.labels, _CANONICAL_REVISION, "latest"),
        workload_type=kind,
        workload_name=workload_name,
        services=services,
        authorization_policies=list(policies),
        status=wl.HEALTHY if running else wl.UNHEALTHY,
        cluster_id=naming.cluster_id,
        network_mode=wl.HOST_NETWORK if pod.host_network else wl.STANDARD,
        capacity=UInt32Value(value=1),
    )


def build_service(mesh: Mesh, service: Service, naming: Naming) -> wl.Service:
    waypoint = bound_waypoint(mesh, service.namespace, service.labels, Traffic.SERVICE)
    vips = service.cluster_ips or ((service.cluster_ip,) if service.cluster_ip else ())
    return wl.Service(
        name=service.name,
        namespace=service.namespace,
        hostname=service_hostname(service, naming),
        addresses=[wl.NetworkAddress(network="", address=_packed(ip)) for ip in vips],
        ports=[
            wl.Port(
                service_port=p.port,
                # A named targetPort differs per pod: 0 here, resolved in each Workload.
                target_port=p.target_port if isinstance(p.target_port, int) else 0,
                app_protocol=app_protocol(p),
            )
            for p in service.ports
            if p.protocol == "TCP"
        ],
        waypoint=gateway_address(mesh, waypoint, naming.domain) if waypoint else None,
    )

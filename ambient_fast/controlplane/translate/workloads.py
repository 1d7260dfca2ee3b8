"""Pods and Services -> istio.workload Address resources, as istiod's ambient index builds them."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from ambient_fast.controlplane.model import Mesh, Pod, Service, ServicePort
from ambient_fast.controlplane.translate.waypoints import (
    Traffic,
    bound_waypoint,
    gateway_address,
)
from ambient_fast.xds.proto import workload_pb2 as wl

DATAPLANE_MODE = "istio.io/dataplane-mode"
# Set by sidecar injection; such a pod stays out of ambient capture.
SIDECAR_STATUS = "sidecar.istio.io/status"
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
    """istio-cni's enablement: the pod's own `istio.io/dataplane-mode` label decides when it
    has one (`ambient` opts in, any other value out), else its namespace's. Never a pod with
    an injected sidecar (a sidecar and ztunnel in one pod are not supported) or a
    host-networked pod (its rules would land in the node's namespace)."""
    if pod.host_network or SIDECAR_STATUS in pod.meta.annotations:
        return False
    own = pod.labels.get(DATAPLANE_MODE)
    if own is not None:
        return own == AMBIENT
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


def workload_address(mesh: Mesh, pod: Pod, naming: Naming, policies: tuple[str, ...]) -> wl.Address:
    """The pod's Address resource. Filled in place, not assembled from submessages: each
    protobuf message made on its own gets its own arena, and 10k short-lived arenas leave
    the heap fragmented (about 0.3 KiB of resident memory per workload)."""
    address = wl.Address()
    workload = address.workload
    kind, workload_name = _workload_kind(pod)
    for service in mesh.services_of_pod(pod):
        ports = workload.services[f"{service.namespace}/{service_hostname(service, naming)}"]
        for p in service.ports:
            if (target := _target_port(p, pod)) is not None and p.protocol == "TCP":
                ports.ports.add(service_port=p.port, target_port=target)
    waypoint = bound_waypoint(mesh, pod.namespace, pod.labels, Traffic.WORKLOAD)
    running = pod.phase == "Running" and pod.ready
    workload.uid = workload_uid(pod, naming)
    workload.name = pod.name
    workload.namespace = pod.namespace
    workload.addresses.extend(_packed(ip) for ip in (pod.ips or ((pod.ip,) if pod.ip else ())))
    workload.tunnel_protocol = wl.HBONE if is_captured(mesh, pod) else wl.NONE
    workload.trust_domain = naming.trust_domain
    workload.service_account = pod.service_account
    if waypoint:
        workload.waypoint.CopyFrom(gateway_address(mesh, waypoint, naming.domain))
    workload.node = pod.node_name or ""
    workload.canonical_name = _first_label(pod.labels, _CANONICAL_NAME, workload_name)
    workload.canonical_revision = _first_label(pod.labels, _CANONICAL_REVISION, "latest")
    workload.workload_type = kind
    workload.workload_name = workload_name
    workload.authorization_policies.extend(policies)
    workload.status = wl.HEALTHY if running else wl.UNHEALTHY
    workload.cluster_id = naming.cluster_id
    workload.network_mode = wl.HOST_NETWORK if pod.host_network else wl.STANDARD
    workload.capacity.value = 1
    return address


def service_address(mesh: Mesh, service: Service, naming: Naming) -> wl.Address:
    """The Service's Address resource (filled in place, as `workload_address`)."""
    address = wl.Address()
    resource = address.service
    waypoint = bound_waypoint(mesh, service.namespace, service.labels, Traffic.SERVICE)
    vips = service.cluster_ips or ((service.cluster_ip,) if service.cluster_ip else ())
    resource.name = service.name
    resource.namespace = service.namespace
    resource.hostname = service_hostname(service, naming)
    for ip in vips:
        resource.addresses.add(network="", address=_packed(ip))
    for p in service.ports:
        if p.protocol == "TCP":
            resource.ports.add(
                service_port=p.port,
                # A named targetPort differs per pod: 0 here, resolved in each Workload.
                target_port=p.target_port if isinstance(p.target_port, int) else 0,
                app_protocol=app_protocol(p),
            )
    if waypoint:
        resource.waypoint.CopyFrom(gateway_address(mesh, waypoint, naming.domain))
    return address

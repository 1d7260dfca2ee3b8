"""What the mesh does with one connection: the traffic paths of reference 03, offline.

`resolve_source` / `resolve_destination` read the command-line forms (`ns/pod`,
`plaintext:IP`, `host:port`); `trace` decides the path a node proxy would take.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ambient_fast.controlplane.model import Gateway, Mesh, Pod, Service
from ambient_fast.controlplane.translate.waypoints import (
    HBONE_PORT,
    Traffic,
    bound_waypoint,
    gateway_address,
)
from ambient_fast.controlplane.translate.workloads import is_captured

PASSTHROUGH, DIRECT_TCP, HBONE, WAYPOINT = "passthrough", "direct-tcp", "hbone", "waypoint"


class UnknownEndpoint(ValueError):
    """A --from/--to that names nothing in the mesh (or is malformed)."""


@dataclass(frozen=True, slots=True)
class Client:
    ip: str
    pod: Pod | None  # None: an out-of-mesh client given as plaintext:IP
    captured: bool
    identity: str | None  # what its node proxy presents; None for plaintext


@dataclass(frozen=True, slots=True)
class Target:
    ip: str
    port: int
    service: Service | None  # addressed by VIP or hostname
    pod: Pod | None  # addressed by pod IP


@dataclass(frozen=True, slots=True)
class Trace:
    path: str
    waypoint: Gateway | None
    endpoints: tuple[tuple[Pod, int], ...]  # candidate destination pods and target ports
    expected_identities: tuple[str, ...]
    waypoint_endpoint: str | None = None


def spiffe_id(pod: Pod, trust_domain: str) -> str:
    return f"spiffe://{trust_domain}/ns/{pod.namespace}/sa/{pod.service_account}"


def waypoint_identity(gateway: Gateway, trust_domain: str) -> str:
    """A waypoint runs as the service account named after its Gateway."""
    return f"spiffe://{trust_domain}/ns/{gateway.namespace}/sa/{gateway.name}"


def _pod_ref(mesh: Mesh, ref: str) -> Pod:
    namespace, sep, name = ref.partition("/")
    pod = mesh.pod(namespace, name) if sep else None
    if pod is None:
        raise UnknownEndpoint(f"{ref!r}: no such pod (expected NAMESPACE/POD)")
    if not pod.ip:
        raise UnknownEndpoint(f"{ref!r}: pod has no IP")
    return pod


def resolve_source(mesh: Mesh, ref: str, trust_domain: str) -> Client:
    if ref.startswith("plaintext:"):
        ip = ref.removeprefix("plaintext:")
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise UnknownEndpoint(f"{ref!r}: expected plaintext:IP") from None
        return Client(ip, None, False, None)
    pod = _pod_ref(mesh, ref)
    captured = is_captured(mesh, pod)
    return Client(pod.ip or "", pod, captured, spiffe_id(pod, trust_domain) if captured else None)


def _service_by_host(mesh: Mesh, host: str, default_namespace: str) -> Service | None:
    parts = host.split(".")
    if len(parts) == 1:
        return mesh.service(default_namespace, parts[0])
    if len(parts) == 2 or parts[2] == "svc":
        return mesh.service(parts[1], parts[0])
    return None


def resolve_destination(mesh: Mesh, ref: str, port: int | None, default_namespace: str) -> Target:
    """`ns/pod` (needs --port), or `host:port` where host is an IP or a service name."""
    if "/" in ref:
        pod = _pod_ref(mesh, ref)
        if port is None:
            raise UnknownEndpoint(f"{ref!r}: a pod destination needs --port")
        return Target(pod.ip or "", port, None, pod)
    host, sep, port_text = ref.rpartition(":")
    if not sep or not port_text.isdigit():
        raise UnknownEndpoint(f"{ref!r}: expected NAMESPACE/POD or HOST:PORT")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        service = _service_by_host(mesh, host, default_namespace)
        if service is None or not service.cluster_ip:
            raise UnknownEndpoint(f"{ref!r}: no service named {host!r}") from None
        return Target(service.cluster_ip, int(port_text), service, None)
    return Target(host, int(port_text), mesh.service_by_vip(host), mesh.pod_by_ip(host))


def _endpoints(mesh: Mesh, service: Service, port: int) -> tuple[tuple[Pod, int], ...]:
    """Healthy pods of the service that have the port, with their target port."""
    service_port = next((p for p in service.ports if p.port == port), None)
    if service_port is None:
        return ()
    found = []
    for pod in mesh.service_pods(service):
        target = (
            service_port.target_port
            if isinstance(service_port.target_port, int)
            else pod.container_port(service_port.target_port)
        )
        if target is not None and pod.ip and pod.ready and pod.phase == "Running":
            found.append((pod, target))
    return tuple(sorted(found, key=lambda e: (e[0].namespace, e[0].name)))


def trace(mesh: Mesh, client: Client, target: Target, trust_domain: str) -> Trace:
    if target.service is not None:
        endpoints = _endpoints(mesh, target.service, target.port)
        service = target.service
        waypoint = bound_waypoint(mesh, service.namespace, service.labels, Traffic.SERVICE)
    elif target.pod is not None:
        endpoints = ((target.pod, target.port),)
        waypoint = bound_waypoint(mesh, target.pod.namespace, target.pod.labels, Traffic.WORKLOAD)
    else:
        return Trace(PASSTHROUGH, None, (), ())
    if not client.captured:
        return Trace(DIRECT_TCP, None, endpoints, ())  # no node proxy on the client side
    from_waypoint = (
        client.pod is not None
        and waypoint is not None
        and (client.pod.labels.get("gateway.networking.k8s.io/gateway-name") == waypoint.name)
    )
    if waypoint is not None and not from_waypoint:
        address = gateway_address(mesh, waypoint)
        host = (
            str(ipaddress.ip_address(address.address.address))
            if address.HasField("address")
            else address.hostname.hostname
        )
        return Trace(
            WAYPOINT,
            waypoint,
            endpoints,
            (waypoint_identity(waypoint, trust_domain),),
            f"{host}:{HBONE_PORT}",
        )
    captured = tuple(e for e in endpoints if is_captured(mesh, e[0]))
    if captured and len(captured) == len(endpoints):
        ids = tuple(sorted({spiffe_id(p, trust_domain) for p, _ in captured}))
        return Trace(HBONE, None, endpoints, ids)
    return Trace(DIRECT_TCP, None, endpoints, ())

"""Builders for the node proxy's state in unit tests: workload-API messages applied to a
StateStore through its public apply(), as the xDS client does."""

from __future__ import annotations

import ipaddress

from google.protobuf.empty_pb2 import Empty
from google.protobuf.wrappers_pb2 import UInt32Value

from ambient_fast.state import StateStore, Workload
from ambient_fast.xds.proto import authorization_pb2 as apb
from ambient_fast.xds.proto import workload_pb2 as wpb
from ambient_fast.xds.resources import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL

TRUST_DOMAIN = "cluster.local"


def spiffe(namespace: str, service_account: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"


def uid(namespace: str, name: str) -> str:
    return f"Kubernetes//Pod/{namespace}/{name}"


def host(name: str, namespace: str = "apps") -> str:
    return f"{name}.{namespace}.svc.cluster.local"


def waypoint_by_host(name: str, namespace: str = "apps", port: int = 15008) -> wpb.GatewayAddress:
    return wpb.GatewayAddress(
        hostname=wpb.NamespacedHostname(namespace=namespace, hostname=host(name, namespace)),
        hbone_mtls_port=port,
    )


def waypoint_by_ip(ip: str, port: int = 15008) -> wpb.GatewayAddress:
    return wpb.GatewayAddress(
        address=wpb.NetworkAddress(address=ipaddress.ip_address(ip).packed), hbone_mtls_port=port
    )


def pod(
    name: str,
    *ips: str,
    namespace: str = "apps",
    service_account: str = "",
    captured: bool = True,
    services: dict[str, dict[int, int]] | None = None,
    healthy: bool = True,
    capacity: int | None = None,
    waypoint: wpb.GatewayAddress | None = None,
    zone: str = "",
    node: str = "node-a",
    network: str = "",
    policies: tuple[str, ...] = (),
    proxy_tunnel_port: int | None = None,
) -> wpb.Address:
    """A pod; `services` maps service hostnames (in the pod's namespace) to {port: target}."""
    tunnel = None
    if proxy_tunnel_port is not None:
        tunnel = wpb.ApplicationTunnel(protocol=wpb.ApplicationTunnel.PROXY, port=proxy_tunnel_port)
    return wpb.Address(
        workload=wpb.Workload(
            uid=uid(namespace, name),
            name=name,
            namespace=namespace,
            addresses=[ipaddress.ip_address(ip).packed for ip in ips],
            network=network,
            tunnel_protocol=wpb.HBONE if captured else wpb.NONE,
            service_account=service_account or name,
            services={
                f"{namespace}/{hostname}": wpb.PortList(
                    ports=[wpb.Port(service_port=p, target_port=t) for p, t in ports.items()]
                )
                for hostname, ports in (services or {}).items()
            },
            status=wpb.HEALTHY if healthy else wpb.UNHEALTHY,
            capacity=UInt32Value(value=capacity) if capacity is not None else None,
            waypoint=waypoint,
            node=node,
            locality=wpb.Locality(region="region-1", zone=zone),
            canonical_name=name,
            canonical_revision="v1",
            workload_name=name,
            workload_type=wpb.DEPLOYMENT,
            authorization_policies=policies,
            application_tunnel=tunnel,
        )
    )


def service(
    name: str,
    vip: str,
    ports: dict[int, int],
    *,
    namespace: str = "apps",
    waypoint: wpb.GatewayAddress | None = None,
    load_balancing: wpb.LoadBalancing | None = None,
    subject_alt_names: tuple[str, ...] = (),
) -> wpb.Address:
    return wpb.Address(
        service=wpb.Service(
            name=name,
            namespace=namespace,
            hostname=host(name, namespace),
            addresses=[wpb.NetworkAddress(address=ipaddress.ip_address(vip).packed)],
            ports=[wpb.Port(service_port=p, target_port=t) for p, t in ports.items()],
            waypoint=waypoint,
            load_balancing=load_balancing,
            subject_alt_names=subject_alt_names,
        )
    )


def apply(store: StateStore, *addresses: wpb.Address) -> None:
    """Adds or replaces the addresses, each under its resource name (uid or ns/hostname)."""
    named = {}
    for address in addresses:
        if address.HasField("workload"):
            named[address.workload.uid] = address
        else:
            named[f"{address.service.namespace}/{address.service.hostname}"] = address
    applied = store.apply(ADDRESS_TYPE_URL, named)
    assert not applied.rejected, applied.rejected


def workload(store: StateStore, namespace: str, name: str) -> Workload:
    found = store.workload_by_uid(uid(namespace, name))
    assert found is not None, name
    return found


def presence() -> apb.StringMatch:
    return apb.StringMatch(presence=Empty())


def policy(
    name: str,
    *matches: apb.Match,
    namespace: str = "apps",
    action: apb.Action.ValueType = apb.ALLOW,
    scope: apb.Scope.ValueType = apb.NAMESPACE,
) -> apb.Authorization:
    """One policy with one rule of one clause holding `matches` (OR)."""
    return apb.Authorization(
        name=name,
        namespace=namespace,
        scope=scope,
        action=action,
        rules=[apb.Rule(clauses=[apb.Clause(matches=list(matches))])],
    )


def set_policies(
    store: StateStore, *policies: apb.Authorization, removed: tuple[str, ...] = ()
) -> None:
    applied = store.apply(
        AUTHORIZATION_TYPE_URL, {f"{p.namespace}/{p.name}": p for p in policies}, removed
    )
    assert not applied.rejected, applied.rejected

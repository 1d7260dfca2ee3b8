"""Each waypoint's L7 configuration (`WaypointConfig`, our own xDS type): the user's documents
that apply at it, as written, so the waypoint parses and compiles them with this same code.

A waypoint receives (reference 03, istiod's policyattachment.go):
- AuthorizationPolicies and RequestAuthentications whose targetRef(s) name its Gateway
  (same namespace), a Service bound to it (the policy's namespace), or the istio-waypoint
  GatewayClass (policy in the root namespace). Selector and namespace-wide policies never
  apply at waypoints; a targetRef naming another namespace never matches.
- HTTPRoutes and GRPCRoutes with a parentRef (kind Service, core group) to a bound Service.
"""

from __future__ import annotations

from collections import defaultdict

from ambient_fast.controlplane.model import (
    AuthorizationPolicy,
    Mesh,
    RequestAuthentication,
    Route,
)
from ambient_fast.controlplane.model.gateway_api import WAYPOINT_CLASS
from ambient_fast.controlplane.translate.policies import PolicyNotes
from ambient_fast.controlplane.translate.waypoints import (
    TARGET_GROUPS,
    Traffic,
    bound_waypoint,
    waypoint_targets,
)
from ambient_fast.controlplane.translate.workloads import (
    Naming,
    service_resource_name,
    workload_uid,
)
from ambient_fast.xds.proto import waypoint_pb2 as wp

# Kinds a waypoint receives, in the order its documents are listed.
CARRIED_KINDS = ("AuthorizationPolicy", "RequestAuthentication", "HTTPRoute", "GRPCRoute")

_NamespacedName = tuple[str, str]
AttachedPolicy = AuthorizationPolicy | RequestAuthentication
Carried = AuthorizationPolicy | RequestAuthentication | Route


def _unmatched_refs(policy: AttachedPolicy) -> list[str]:
    """Why some targetRefs of `policy` can never attach it anywhere (for the report)."""
    reasons = []
    for ref in policy.target_refs:
        groups = TARGET_GROUPS.get(ref.kind)
        if groups is None:
            reasons.append(
                f"targetRef {ref.kind} {ref.name}: not attached at waypoints "
                "(supported: Gateway, Service, GatewayClass)"
            )
        elif ref.group not in groups:
            reasons.append(
                f"targetRef {ref.kind} {ref.name}: group {ref.group!r} is not "
                f"{groups[0]!r}; it never matches"
            )
    return reasons


class _Documents:
    """ConfigDocuments built once per object, however many waypoints receive it."""

    def __init__(self, notes: PolicyNotes) -> None:
        self._notes = notes
        self._built: dict[int, wp.ConfigDocument | None] = {}

    def of(self, obj: Carried) -> wp.ConfigDocument | None:
        key = id(obj)
        if key not in self._built:
            self._built[key] = self._build(obj)
        return self._built[key]

    def _build(self, obj: Carried) -> wp.ConfigDocument | None:
        source = obj.source
        if source is None:
            self._notes.add(str(obj.key), "not loaded from a document; not sent to waypoints")
            return None
        if source.json is None:
            self._notes.add(str(obj.key), f"cannot be sent to waypoints as JSON: {source.error}")
            return None
        return wp.ConfigDocument(
            kind=obj.KIND, namespace=obj.namespace, name=obj.name, json=source.json
        )


def build_waypoint_configs(
    mesh: Mesh, naming: Naming, root_namespace: str, notes: PolicyNotes
) -> dict[str, wp.WaypointConfig]:
    """One WaypointConfig per istio-waypoint Gateway ("<ns>/<name>"), attached or not."""
    waypoints = {(g.namespace, g.name): g for g in mesh.waypoints}
    if not waypoints:
        return {}
    bound_services: dict[_NamespacedName, list[str]] = defaultdict(list)
    bound_workloads: dict[_NamespacedName, list[str]] = defaultdict(list)
    waypoint_of_service: dict[_NamespacedName, _NamespacedName] = {}
    for service in mesh.services:
        if service.external_name:
            continue  # no Address resource: nothing routes to it through a waypoint
        gateway = bound_waypoint(mesh, service.namespace, service.labels, Traffic.SERVICE)
        if gateway is not None:
            key = (gateway.namespace, gateway.name)
            bound_services[key].append(service_resource_name(service, naming))
            waypoint_of_service[service.namespace, service.name] = key
    for pod in mesh.pods:
        if not pod.ip:
            continue  # not scheduled: no Address resource yet
        gateway = bound_waypoint(mesh, pod.namespace, pod.labels, Traffic.WORKLOAD)
        if gateway is not None:
            bound_workloads[gateway.namespace, gateway.name].append(workload_uid(pod, naming))

    carried: dict[_NamespacedName, dict[tuple[str, str, str], Carried]] = defaultdict(dict)

    def carry(waypoint: _NamespacedName, obj: Carried) -> None:
        carried[waypoint][obj.KIND, obj.namespace, obj.name] = obj

    policies: tuple[AttachedPolicy, ...] = (
        *mesh.authorization_policies,
        *mesh.request_authentications,
    )
    for policy in policies:
        if not policy.target_refs:
            continue  # selector or namespace-wide: never at a waypoint
        for reason in _unmatched_refs(policy):
            notes.add(str(policy.key), reason)
        for kind, name in waypoint_targets(policy.target_refs, policy.namespace):
            if kind == "Gateway" and (policy.namespace, name) in waypoints:
                carry((policy.namespace, name), policy)
            elif kind == "Service" and (policy.namespace, name) in waypoint_of_service:
                carry(waypoint_of_service[policy.namespace, name], policy)
            elif kind == "GatewayClass" and name == WAYPOINT_CLASS:
                if policy.namespace == root_namespace:
                    for waypoint in waypoints:
                        carry(waypoint, policy)
    for (namespace, name), waypoint in waypoint_of_service.items():
        for route in mesh.routes_for_service(namespace, name):
            carry(waypoint, route)

    documents = _Documents(notes)
    order = {kind: i for i, kind in enumerate(CARRIED_KINDS)}
    configs = {}
    for (namespace, name), gateway in sorted(waypoints.items()):
        attached = carried.get((namespace, name), {})
        built = (
            documents.of(attached[key]) for key in sorted(attached, key=lambda k: (order[k[0]], k))
        )
        configs[f"{namespace}/{name}"] = wp.WaypointConfig(
            name=gateway.name,
            namespace=gateway.namespace,
            bound_services=sorted(bound_services.get((namespace, name), ())),
            bound_workloads=sorted(bound_workloads.get((namespace, name), ())),
            documents=[d for d in built if d is not None],
            root_namespace=root_namespace,
        )
    return configs

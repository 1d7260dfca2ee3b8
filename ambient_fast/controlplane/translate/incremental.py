"""Keep a ResourceStore in step with successive Meshes, translating only what an edit touched.

A Mesh derived from the last one (`Mesh.changes_since`) whose changes are pods and services
only (Deployments are read through their pods) updates just the resources those reach:

- a pod: its Workload (services map, waypoint, selector policies), and the `bound_workloads`
  of the waypoint it leaves or joins;
- a service: its Service resource and the Workloads of the pods it selects, before or after
  (their services map).

Everything else — namespaces, policies, Gateways and classes, routes, a waypoint's own
Service, a Service that changes waypoint, a waypoint's instance pod when its identities are
ALLOWed at its workloads (`auto_allow_waypoint_policy`) — may reach any resource: a full
translation (`publish_translation`). Either way the store ends up holding exactly what a
full translation would put there.
"""

from __future__ import annotations

from dataclasses import dataclass

from ambient_fast.controlplane.model import Mesh, ObjectKey, Pod, Service
from ambient_fast.controlplane.translate.translate import (
    SelectorPolicies,
    TranslateOptions,
    policies_selecting,
    publish_translation,
)
from ambient_fast.controlplane.translate.waypoint_allow import WaypointAllows
from ambient_fast.controlplane.translate.waypoints import (
    GATEWAY_NAME_LABEL,
    Traffic,
    bound_waypoint,
)
from ambient_fast.controlplane.translate.workloads import (
    Naming,
    service_address,
    service_resource_name,
    workload_address,
    workload_uid,
)
from ambient_fast.xds.proto import waypoint_pb2 as wp
from ambient_fast.xds.proto import workload_pb2 as wl
from ambient_fast.xds.resources import (
    ADDRESS_TYPE_URL,
    WAYPOINT_CONFIG_TYPE_URL,
    ResourceStore,
)

# Kinds the translation reads only through other objects in the change (a Deployment's pods).
_READ_THROUGH_PODS = frozenset({"Deployment"})

_NamespacedName = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Published:
    """One publish: whether it was incremental, and the translation's notes (every policy's,
    as a full translation reports them)."""

    incremental: bool
    notes: tuple[str, ...]


@dataclass(slots=True)
class _Update:
    addresses: dict[str, wl.Address]
    removed: list[str]
    waypoints: dict[str, wp.WaypointConfig]


class LiveTranslation:
    """The translation of the latest Mesh, kept in a ResourceStore (see the module doc)."""

    def __init__(self, options: TranslateOptions | None = None) -> None:
        self.options = options or TranslateOptions()
        self._mesh: Mesh | None = None
        self._store: ResourceStore | None = None
        self._translated_with = self.options
        self._selectors: SelectorPolicies = {}
        self._waypoint_allows = WaypointAllows()
        self._notes: tuple[str, ...] = ()

    def publish(self, mesh: Mesh, store: ResourceStore) -> Published:
        """Makes `store` hold the translation of `mesh`; connected proxies get what changed."""
        same = store is self._store and self.options == self._translated_with
        before = self._mesh if same else None
        changes = mesh.changes_since(before) if before is not None else None
        update = self._update(before, mesh, changes) if before is not None else None
        if update is None:
            translation = publish_translation(mesh, self.options, store)
            self._selectors = translation.selectors
            self._waypoint_allows = translation.waypoint_allows
            self._notes = tuple(translation.notes.problems)
        else:
            if update.addresses or update.removed:
                store.update(ADDRESS_TYPE_URL, update.addresses, update.removed)
            if update.waypoints:
                store.update(WAYPOINT_CONFIG_TYPE_URL, update.waypoints)
        self._mesh, self._store, self._translated_with = mesh, store, self.options
        return Published(update is not None, self._notes)

    def _update(
        self, before: Mesh, mesh: Mesh, changes: frozenset[ObjectKey] | None
    ) -> _Update | None:
        """The resources `changes` reach, built from `mesh`; None when a full translation is
        needed. Reads the store (waypoint configs) but never writes it."""
        if changes is None or self._store is None:
            return None
        pods: set[_NamespacedName] = set()
        services: set[_NamespacedName] = set()
        for key in changes:
            if key.kind == "Pod":
                pods.add((key.namespace, key.name))
            elif key.kind == "Service":
                services.add((key.namespace, key.name))
            elif key.kind not in _READ_THROUGH_PODS:
                return None
        options = self.options
        naming = Naming(options.cluster_id, options.trust_domain, options.domain)
        update = _Update({}, [], {})
        for namespace, name in sorted(services):
            if before.gateway(namespace, name) or mesh.gateway(namespace, name):
                return None  # a waypoint's address is in every Workload and Service bound to it
            old, new = before.service(namespace, name), mesh.service(namespace, name)
            if _service_waypoint(before, old) != _service_waypoint(mesh, new):
                return None  # waypoint configs list the service, and may carry its routes
            if old is not None:
                pods.update((p.namespace, p.name) for p in before.service_pods(old))
            if new is not None:
                pods.update((p.namespace, p.name) for p in mesh.service_pods(new))
            if new is not None and not new.external_name:
                address = service_address(mesh, new, naming)
                update.addresses[service_resource_name(new, naming)] = address
            elif old is not None and not old.external_name:
                update.removed.append(service_resource_name(old, naming))
        joined: dict[_NamespacedName, set[str]] = {}
        left: dict[_NamespacedName, set[str]] = {}
        for namespace, name in sorted(pods):
            old_pod, new_pod = before.pod(namespace, name), mesh.pod(namespace, name)
            if options.auto_allow_waypoint_policy and _instance_of_waypoint(old_pod, new_pod):
                return None  # the waypoint's identities: its synthetic ALLOW, who lists it
            old_pod = old_pod if old_pod is not None and old_pod.ip else None
            new_pod = new_pod if new_pod is not None and new_pod.ip else None
            if new_pod is not None:
                uid = workload_uid(new_pod, naming)
                policies = policies_selecting(self._selectors, new_pod)
                policies += self._waypoint_allows.for_pod(mesh, new_pod)
                update.addresses[uid] = workload_address(mesh, new_pod, naming, policies)
            elif old_pod is not None:
                uid = workload_uid(old_pod, naming)
                update.removed.append(uid)
            else:
                continue  # unscheduled before and after: no resource
            was, now = _pod_waypoint(before, old_pod), _pod_waypoint(mesh, new_pod)
            if was != now:
                if was is not None:
                    left.setdefault(was, set()).add(uid)
                if now is not None:
                    joined.setdefault(now, set()).add(uid)
        for waypoint in sorted(joined.keys() | left.keys()):
            name = f"{waypoint[0]}/{waypoint[1]}"
            resource = self._store.get(WAYPOINT_CONFIG_TYPE_URL, name)
            if resource is None:
                return None
            config = wp.WaypointConfig.FromString(resource.resource.value)
            bound = set(config.bound_workloads) - left.get(waypoint, set())
            bound |= joined.get(waypoint, set())
            del config.bound_workloads[:]
            config.bound_workloads.extend(sorted(bound))
            update.waypoints[name] = config
        return update


def _instance_of_waypoint(*pods: Pod | None) -> bool:
    return any(pod is not None and GATEWAY_NAME_LABEL in pod.labels for pod in pods)


def _service_waypoint(mesh: Mesh, service: Service | None) -> _NamespacedName | None:
    """The waypoint a Service is bound to, as the waypoint configs list it."""
    if service is None or service.external_name:
        return None  # no Address resource: nothing routes to it through a waypoint
    gateway = bound_waypoint(mesh, service.namespace, service.labels, Traffic.SERVICE)
    return (gateway.namespace, gateway.name) if gateway is not None else None


def _pod_waypoint(mesh: Mesh, pod: Pod | None) -> _NamespacedName | None:
    """The waypoint a scheduled pod's workload is bound to, as the waypoint configs list it."""
    if pod is None:
        return None
    gateway = bound_waypoint(mesh, pod.namespace, pod.labels, Traffic.WORKLOAD)
    return (gateway.namespace, gateway.name) if gateway is not None else None

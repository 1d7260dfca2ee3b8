"""`Mesh`: one immutable, indexed snapshot of everything loaded.

Built once per load; the translation reads it through the lookups below (no scans of
YAML-shaped data on its side). A reload builds a new Mesh, or derives one from the last
(`with_changes`: the indexes an edit does not touch are shared, the others copied and
patched) and remembers which keys changed; nothing in a Mesh ever changes.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left, insort
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import TypeVar, cast

from ambient_fast.controlplane.model.core import Deployment, Namespace, Pod, Service, ServiceAccount
from ambient_fast.controlplane.model.gateway_api import (
    Gateway,
    GatewayClass,
    GRPCRoute,
    HTTPRoute,
    Route,
)
from ambient_fast.controlplane.model.indexes import (
    ByNamespace,
    KindIndex,
    LabelIndex,
    NamespacedName,
    name_of,
    routes_by_parent,
)
from ambient_fast.controlplane.model.kinds import MeshObject
from ambient_fast.controlplane.model.meta import ObjectKey, selector_matches
from ambient_fast.controlplane.model.networking import DestinationRule, ServiceEntry, WorkloadEntry
from ambient_fast.controlplane.model.placement import Allocations, Topology
from ambient_fast.controlplane.model.security import (
    AuthorizationPolicy,
    PeerAuthentication,
    RequestAuthentication,
)
from ambient_fast.controlplane.model.sharing import SharedTuples

T = TypeVar("T", bound=MeshObject)


class Mesh:
    """Everything loaded, indexed for the translation. Build with `Mesh.build`."""

    __slots__ = (
        "__weakref__",
        "_authorization_policies",
        "_base",
        "_changes",
        "_deployments",
        "_destination_rules",
        "_gateway_classes",
        "_gateways",
        "_grpc_routes",
        "_http_routes",
        "_multi_address",
        "_namespaces",
        "_peer_authentications",
        "_pod_labels",
        "_pod_services",
        "_pods",
        "_pods_by_ip",
        "_pods_by_node",
        "_request_authentications",
        "_routes_by_parent",
        "_service_accounts",
        "_service_entries",
        "_service_pods",
        "_services",
        "_services_by_vip",
        "_workload_entries",
        "_workload_entry_labels",
        "topology",
    )

    def __init__(
        self,
        objects: Iterable[MeshObject],
        topology: Topology | None = None,
    ) -> None:
        """Index `objects` (already placed: pods with IPs, services with VIPs)."""
        self.topology = topology or Topology()
        by_kind: dict[type, list[MeshObject]] = defaultdict(list)
        for obj in objects:
            by_kind[type(obj)].append(obj)

        def index(cls: type[T]) -> KindIndex[T]:
            return KindIndex(cast("list[T]", by_kind.get(cls, [])))

        self._namespaces = index(Namespace)
        self._pods = index(Pod)
        self._deployments = index(Deployment)
        self._services = index(Service)
        self._service_accounts = index(ServiceAccount)
        self._gateways = index(Gateway)
        self._gateway_classes = index(GatewayClass)
        self._http_routes = index(HTTPRoute)
        self._grpc_routes = index(GRPCRoute)
        self._authorization_policies = index(AuthorizationPolicy)
        self._peer_authentications = index(PeerAuthentication)
        self._request_authentications = index(RequestAuthentication)
        self._destination_rules = index(DestinationRule)
        self._service_entries = index(ServiceEntry)
        self._workload_entries = index(WorkloadEntry)

        self._pod_labels = LabelIndex(self._pods, _labels)
        self._pods_by_ip: dict[str, Pod] = {}
        pods_by_node: dict[str, list[Pod]] = defaultdict(list)
        for pod in self._pods.all:
            if not pod.host_network:
                for ip in pod.ips:
                    self._pods_by_ip[ip] = pod
            if pod.node_name is not None:
                pods_by_node[pod.node_name].append(pod)
        self._pods_by_node = {node: tuple(pods) for node, pods in pods_by_node.items()}
        self._multi_address = any(len(pod.ips) > 1 for pod in self._pods.all)
        self._workload_entry_labels = LabelIndex(self._workload_entries, _spec_labels)

        self._services_by_vip: dict[str, Service] = {}
        service_pods: list[tuple[str, str, tuple[Pod, ...]]] = []
        pod_services: dict[NamespacedName, list[Service]] = defaultdict(list)
        for service in self._services.all:
            for vip in service.cluster_ips:
                self._services_by_vip[vip] = service
            if service.selector:
                selected = self.pods_selected_by(service.namespace, service.selector)
                service_pods.append((service.namespace, service.name, selected))
                for pod in selected:
                    pod_services[pod.namespace, pod.name].append(service)
        self._service_pods = ByNamespace.of(service_pods)
        shared: SharedTuples[Service] = SharedTuples()
        self._pod_services = ByNamespace.of(
            (namespace, name, shared.get(picked))
            for (namespace, name), picked in pod_services.items()
        )
        self._routes_by_parent = routes_by_parent(self._http_routes.all, self._grpc_routes.all)
        self._base: weakref.ref[Mesh] | None = None
        self._changes: frozenset[ObjectKey] = frozenset()

    # -- deriving -----------------------------------------------------------------------

    def with_changes(
        self,
        upserts: Iterable[MeshObject],
        removals: Iterable[ObjectKey] = (),
        moved: Collection[ObjectKey] = (),
    ) -> Mesh:
        """This Mesh with `upserts` added or replacing the objects of their keys and `removals`
        gone: what `Mesh(...)` of the resulting objects would index, but only the indexes the
        change touches are copied and patched. Objects must be placed, as for `Mesh(...)`.
        `moved` names upserts equal to the objects they replace but for their origin: not
        changes for `changes_since`."""
        mesh = Mesh.__new__(Mesh)
        for slot in Mesh.__slots__:
            if slot != "__weakref__":
                setattr(mesh, slot, getattr(self, slot))
        added: dict[str, list[MeshObject]] = defaultdict(list)
        dropped: dict[str, list[NamespacedName]] = defaultdict(list)
        touched: set[ObjectKey] = set()
        for obj in upserts:
            added[obj.KIND].append(obj)
            touched.add(obj.key)
        for key in removals:
            dropped[key.kind].append((key.namespace, key.name))
            touched.add(key)
        kinds = added.keys() | dropped.keys()
        for kind in kinds:
            attribute = _INDEX_OF[kind]
            index: KindIndex[MeshObject] = getattr(self, attribute)
            setattr(mesh, attribute, index.changed(dropped[kind], added[kind]))
        pods = {(k.namespace, k.name) for k in touched if k.kind == "Pod"}
        services = {(k.namespace, k.name) for k in touched if k.kind == "Service"}
        if pods:
            mesh._pods_changed(self, pods)
        if services:
            mesh._services_changed(self, services)
        if pods or services:
            mesh._selection_changed(self, pods, services)
        if kinds & {"HTTPRoute", "GRPCRoute"}:
            mesh._routes_by_parent = routes_by_parent(mesh.http_routes, mesh.grpc_routes)
        if "WorkloadEntry" in kinds:
            mesh._workload_entry_labels = LabelIndex(mesh._workload_entries, _spec_labels)
        mesh._base = weakref.ref(self)
        mesh._changes = frozenset(touched.difference(moved))
        return mesh

    def changes_since(self, other: Mesh) -> frozenset[ObjectKey] | None:
        """The keys added, changed or removed since `other` when this Mesh was derived from
        it (`with_changes`); None when that is unknown (built anew, or from another Mesh)."""
        if other is self:
            return frozenset()
        base = self._base() if self._base is not None else None
        return self._changes if base is other else None

    def _pods_changed(self, before: Mesh, keys: set[NamespacedName]) -> None:
        old = [p for k in keys if (p := before._pods.get(*k)) is not None]
        new = [p for k in keys if (p := self._pods.get(*k)) is not None]
        self._pod_labels = before._pod_labels.changed(self._pods, old, new)
        by_ip = dict(before._pods_by_ip)
        by_node = dict(before._pods_by_node)
        nodes: dict[str, list[Pod]] = {}

        def node(name: str) -> list[Pod]:
            if name not in nodes:
                nodes[name] = list(by_node.get(name, ()))
            return nodes[name]

        freed: set[str] = set()
        for pod in old:
            if not pod.host_network:
                for ip in pod.ips:
                    if by_ip.get(ip) is pod:
                        del by_ip[ip]
                        freed.add(ip)
            if pod.node_name is not None:
                members = node(pod.node_name)
                del members[bisect_left(members, name_of(pod), key=name_of)]
        for pod in new:
            if not pod.host_network:
                for ip in pod.ips:
                    owner = by_ip.get(ip)  # the last pod in name order owns a shared address
                    if owner is None or name_of(owner) < name_of(pod):
                        by_ip[ip] = pod
                    freed.discard(ip)
            if pod.node_name is not None:
                insort(node(pod.node_name), pod, key=name_of)
        self._multi_address = before._multi_address or any(len(p.ips) > 1 for p in new)
        if freed and self._multi_address:
            # Written dual-stack addresses may be shared (placement checks only the first):
            # another pod may own a freed one.
            for pod in self._pods.all:
                if not pod.host_network and not freed.isdisjoint(pod.ips):
                    for ip in freed.intersection(pod.ips):
                        by_ip[ip] = pod
        for name, members in nodes.items():
            if members:
                by_node[name] = tuple(members)
            else:
                by_node.pop(name, None)
        self._pods_by_ip, self._pods_by_node = by_ip, by_node

    def _services_changed(self, before: Mesh, keys: set[NamespacedName]) -> None:
        by_vip = dict(before._services_by_vip)
        for key in keys:
            replaced = before._services.get(*key)
            if replaced is not None:
                for vip in replaced.cluster_ips:
                    if by_vip.get(vip) is replaced:
                        del by_vip[vip]
        for key in keys:
            service = self._services.get(*key)
            if service is not None:
                for vip in service.cluster_ips:
                    by_vip[vip] = service
        self._services_by_vip = by_vip

    def _selection_changed(
        self, before: Mesh, pods: set[NamespacedName], services: set[NamespacedName]
    ) -> None:
        """Which pods each service selects, and the reverse, for the changed pods and services
        and for whatever selects or is selected by them, before or after."""
        stale_services = set(services)
        stale_pods = set(pods)
        for key in pods:
            for mesh in (before, self):
                pod = mesh._pods.get(*key)
                if pod is None:
                    continue
                for service in self._services.in_namespace(key[0]):
                    if service.selector and selector_matches(service.selector, pod.labels):
                        stale_services.add((service.namespace, service.name))
        for key in services:
            stale_pods.update(name_of(p) for p in before._service_pods.get(*key) or ())
        service_pods: list[tuple[str, str, tuple[Pod, ...]]] = []
        for namespace, name in stale_services:
            current = self._services.get(namespace, name)
            if current is None or not current.selector:
                continue
            selected = self.pods_selected_by(namespace, current.selector)
            service_pods.append((namespace, name, selected))
            if (namespace, name) in services:
                stale_pods.update(name_of(p) for p in selected)
        self._service_pods = before._service_pods.changed(stale_services, service_pods)
        shared: SharedTuples[Service] = SharedTuples()
        pod_services: list[tuple[str, str, tuple[Service, ...]]] = []
        for namespace, name in stale_pods:
            pod = self._pods.get(namespace, name)
            picked = () if pod is None else self._services_picking(pod)
            if picked:
                pod_services.append((namespace, name, shared.get(picked)))
        self._pod_services = before._pod_services.changed(stale_pods, pod_services)

    def _services_picking(self, pod: Pod) -> tuple[Service, ...]:
        return tuple(
            s
            for s in self._services.in_namespace(pod.namespace)
            if s.selector and selector_matches(s.selector, pod.labels)
        )

    # -- generic ------------------------------------------------------------------------

    def get(self, key: ObjectKey) -> MeshObject | None:
        index: KindIndex[MeshObject] | None = getattr(self, _INDEX_OF.get(key.kind, ""), None)
        return index.get(key.namespace, key.name) if index is not None else None

    def objects(self) -> Iterator[MeshObject]:
        """Every object (expanded pods included), kind by kind, each kind in name order."""
        for attribute in _INDEX_OF.values():
            yield from getattr(self, attribute).all

    def __len__(self) -> int:
        return sum(len(getattr(self, attribute).all) for attribute in _INDEX_OF.values())

    def __repr__(self) -> str:
        counts = ", ".join(
            f"{len(getattr(self, attribute).all)} {kind}"
            for kind, attribute in _INDEX_OF.items()
            if getattr(self, attribute).all
        )
        return f"<Mesh {counts or 'empty'}>"

    @property
    def allocations(self) -> Allocations:
        """The nodes and addresses the model chose, for the next load to keep."""
        return Allocations(self._pods.by_name, self._services.by_name)

    # -- namespaces, accounts -----------------------------------------------------------

    @property
    def namespaces(self) -> tuple[Namespace, ...]:
        return self._namespaces.all

    def namespace(self, name: str) -> Namespace | None:
        return self._namespaces.get("", name)

    def namespace_labels(self, name: str) -> Mapping[str, str]:
        """The namespace's labels; none for a namespace used but never declared."""
        namespace = self._namespaces.get("", name)
        return namespace.labels if namespace is not None else {}

    @property
    def service_accounts(self) -> tuple[ServiceAccount, ...]:
        return self._service_accounts.all

    def service_account(self, namespace: str, name: str) -> ServiceAccount | None:
        return self._service_accounts.get(namespace, name)

    # -- pods ---------------------------------------------------------------------------

    @property
    def pods(self) -> tuple[Pod, ...]:
        return self._pods.all

    def pod(self, namespace: str, name: str) -> Pod | None:
        return self._pods.get(namespace, name)

    def pod_by_ip(self, ip: str) -> Pod | None:
        """The pod that owns `ip` (host-network pods share their node's IP and are not here)."""
        return self._pods_by_ip.get(ip)

    def pods_in(self, namespace: str) -> tuple[Pod, ...]:
        return self._pods.in_namespace(namespace)

    def pods_on_node(self, node: str) -> tuple[Pod, ...]:
        return self._pods_by_node.get(node, ())

    def pods_selected_by(self, namespace: str, selector: Mapping[str, str]) -> tuple[Pod, ...]:
        """Pods of `namespace` carrying every label of `selector` (empty: all of them)."""
        return self._pod_labels.select(namespace, selector)

    @property
    def deployments(self) -> tuple[Deployment, ...]:
        return self._deployments.all

    def deployment(self, namespace: str, name: str) -> Deployment | None:
        return self._deployments.get(namespace, name)

    # -- services -----------------------------------------------------------------------

    @property
    def services(self) -> tuple[Service, ...]:
        return self._services.all

    def service(self, namespace: str, name: str) -> Service | None:
        return self._services.get(namespace, name)

    def service_by_vip(self, ip: str) -> Service | None:
        return self._services_by_vip.get(ip)

    def services_in(self, namespace: str) -> tuple[Service, ...]:
        return self._services.in_namespace(namespace)

    def service_pods(self, service: Service) -> tuple[Pod, ...]:
        """The pods the service's selector picks (none for a service without selector)."""
        return self._service_pods.get(service.namespace, service.name) or ()

    def services_of_pod(self, pod: Pod) -> tuple[Service, ...]:
        """Services whose selector picks `pod`, in name order."""
        return self._pod_services.get(pod.namespace, pod.name) or ()

    # -- Istio networking ---------------------------------------------------------------

    @property
    def service_entries(self) -> tuple[ServiceEntry, ...]:
        return self._service_entries.all

    def service_entry(self, namespace: str, name: str) -> ServiceEntry | None:
        return self._service_entries.get(namespace, name)

    def service_entries_in(self, namespace: str) -> tuple[ServiceEntry, ...]:
        return self._service_entries.in_namespace(namespace)

    @property
    def workload_entries(self) -> tuple[WorkloadEntry, ...]:
        return self._workload_entries.all

    def workload_entry(self, namespace: str, name: str) -> WorkloadEntry | None:
        return self._workload_entries.get(namespace, name)

    def workload_entries_in(self, namespace: str) -> tuple[WorkloadEntry, ...]:
        return self._workload_entries.in_namespace(namespace)

    def workload_entries_selected_by(
        self, namespace: str, selector: Mapping[str, str]
    ) -> tuple[WorkloadEntry, ...]:
        """WorkloadEntries of `namespace` whose spec.labels carry every label of `selector`."""
        return self._workload_entry_labels.select(namespace, selector)

    @property
    def destination_rules(self) -> tuple[DestinationRule, ...]:
        return self._destination_rules.all

    def destination_rules_in(self, namespace: str) -> tuple[DestinationRule, ...]:
        return self._destination_rules.in_namespace(namespace)

    # -- Gateway API --------------------------------------------------------------------

    @property
    def gateways(self) -> tuple[Gateway, ...]:
        return self._gateways.all

    def gateway(self, namespace: str, name: str) -> Gateway | None:
        return self._gateways.get(namespace, name)

    @property
    def waypoints(self) -> tuple[Gateway, ...]:
        """Gateways of class istio-waypoint."""
        return tuple(g for g in self._gateways.all if g.is_waypoint)

    @property
    def gateway_classes(self) -> tuple[GatewayClass, ...]:
        return self._gateway_classes.all

    def gateway_class(self, name: str) -> GatewayClass | None:
        return self._gateway_classes.get("", name)

    @property
    def http_routes(self) -> tuple[HTTPRoute, ...]:
        return self._http_routes.all

    @property
    def grpc_routes(self) -> tuple[GRPCRoute, ...]:
        return self._grpc_routes.all

    def routes_for_service(self, namespace: str, name: str) -> tuple[Route, ...]:
        """HTTP and gRPC routes with a parentRef to this Service (GAMMA), HTTP first."""
        return self._routes_by_parent.get(("Service", namespace, name), ())

    def routes_for_gateway(self, namespace: str, name: str) -> tuple[Route, ...]:
        return self._routes_by_parent.get(("Gateway", namespace, name), ())

    # -- Istio security -----------------------------------------------------------------

    @property
    def authorization_policies(self) -> tuple[AuthorizationPolicy, ...]:
        return self._authorization_policies.all

    def authorization_policies_in(self, namespace: str) -> tuple[AuthorizationPolicy, ...]:
        return self._authorization_policies.in_namespace(namespace)

    @property
    def peer_authentications(self) -> tuple[PeerAuthentication, ...]:
        return self._peer_authentications.all

    def peer_authentications_in(self, namespace: str) -> tuple[PeerAuthentication, ...]:
        return self._peer_authentications.in_namespace(namespace)

    @property
    def request_authentications(self) -> tuple[RequestAuthentication, ...]:
        return self._request_authentications.all

    def request_authentications_in(self, namespace: str) -> tuple[RequestAuthentication, ...]:
        return self._request_authentications.in_namespace(namespace)


_INDEX_OF = {
    "Namespace": "_namespaces",
    "ServiceAccount": "_service_accounts",
    "Deployment": "_deployments",
    "Pod": "_pods",
    "Service": "_services",
    "ServiceEntry": "_service_entries",
    "WorkloadEntry": "_workload_entries",
    "DestinationRule": "_destination_rules",
    "GatewayClass": "_gateway_classes",
    "Gateway": "_gateways",
    "HTTPRoute": "_http_routes",
    "GRPCRoute": "_grpc_routes",
    "AuthorizationPolicy": "_authorization_policies",
    "PeerAuthentication": "_peer_authentications",
    "RequestAuthentication": "_request_authentications",
}


def _labels(obj: MeshObject) -> Mapping[str, str]:
    return obj.meta.labels


def _spec_labels(entry: WorkloadEntry) -> Mapping[str, str]:
    return entry.spec_labels

"""`Mesh`: one immutable, indexed snapshot of everything loaded.

Built once per load; the translation reads it through the lookups below (no scans of
YAML-shaped data on its side). A reload builds a new Mesh; nothing here ever changes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Generic, TypeVar, cast

from ambient_fast.controlplane.model.core import Deployment, Namespace, Pod, Service, ServiceAccount
from ambient_fast.controlplane.model.gateway_api import (
    Gateway,
    GatewayClass,
    GRPCRoute,
    HTTPRoute,
    Route,
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

T = TypeVar("T", bound=MeshObject)
_NamespacedName = tuple[str, str]


class _Index(Generic[T]):
    """The objects of one kind: by (namespace, name), by namespace, and in name order."""

    __slots__ = ("all", "by_key", "by_namespace")

    def __init__(self, objects: Iterable[T]) -> None:
        ordered = sorted(objects, key=lambda o: (o.meta.namespace, o.meta.name))
        self.all: tuple[T, ...] = tuple(ordered)
        self.by_key: dict[_NamespacedName, T] = {
            (o.meta.namespace, o.meta.name): o for o in ordered
        }
        grouped: dict[str, list[T]] = defaultdict(list)
        for o in ordered:
            grouped[o.meta.namespace].append(o)
        self.by_namespace: dict[str, tuple[T, ...]] = {ns: tuple(v) for ns, v in grouped.items()}

    def get(self, namespace: str, name: str) -> T | None:
        return self.by_key.get((namespace, name))

    def in_namespace(self, namespace: str) -> tuple[T, ...]:
        return self.by_namespace.get(namespace, ())


class Mesh:
    """Everything loaded, indexed for the translation. Build with `Mesh.build`."""

    __slots__ = (
        "_authorization_policies",
        "_deployments",
        "_destination_rules",
        "_gateway_classes",
        "_gateways",
        "_grpc_routes",
        "_http_routes",
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
        "allocations",
        "topology",
    )

    def __init__(
        self,
        objects: Iterable[MeshObject],
        topology: Topology | None = None,
        allocations: Allocations | None = None,
    ) -> None:
        """Index `objects` (already placed: pods with IPs, services with VIPs)."""
        self.topology = topology or Topology()
        self.allocations = allocations or Allocations()
        by_kind: dict[type, list[MeshObject]] = defaultdict(list)
        for obj in objects:
            by_kind[type(obj)].append(obj)

        def index(cls: type[T]) -> _Index[T]:
            return _Index(cast("list[T]", by_kind.get(cls, [])))

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

        self._pods_by_ip: dict[str, Pod] = {}
        pods_by_node: dict[str, list[Pod]] = defaultdict(list)
        self._pod_labels = _Selectable(self._pods, lambda p: p.meta.labels)
        for pod in self._pods.all:
            if not pod.host_network:
                for ip in pod.ips:
                    self._pods_by_ip[ip] = pod
            if pod.node_name is not None:
                pods_by_node[pod.node_name].append(pod)
        self._pods_by_node = {node: tuple(pods) for node, pods in pods_by_node.items()}
        self._workload_entry_labels = _Selectable(self._workload_entries, lambda w: w.spec_labels)

        self._services_by_vip: dict[str, Service] = {}
        self._service_pods: dict[_NamespacedName, tuple[Pod, ...]] = {}
        pod_services: dict[_NamespacedName, list[Service]] = defaultdict(list)
        for service in self._services.all:
            for vip in service.cluster_ips:
                self._services_by_vip[vip] = service
            if service.selector:
                selected = self.pods_selected_by(service.namespace, service.selector)
                self._service_pods[service.namespace, service.name] = selected
                for pod in selected:
                    pod_services[pod.namespace, pod.name].append(service)
        self._pod_services = {key: tuple(v) for key, v in pod_services.items()}

        routes: dict[tuple[str, str, str], list[Route]] = defaultdict(list)
        all_routes: tuple[Route, ...] = (*self._http_routes.all, *self._grpc_routes.all)
        for route in all_routes:
            for ref in route.parent_refs:
                target = "Service" if ref.is_service else ref.kind
                entry = routes[target, ref.namespace or route.namespace, ref.name]
                if not entry or entry[-1] is not route:  # two refs (e.g. ports) to one parent
                    entry.append(route)
        self._routes_by_parent = {key: tuple(v) for key, v in routes.items()}

    # -- generic ------------------------------------------------------------------------

    def get(self, key: ObjectKey) -> MeshObject | None:
        index: _Index[MeshObject] | None = getattr(self, _INDEX_OF.get(key.kind, ""), None)
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
        return self._service_pods.get((service.namespace, service.name), ())

    def services_of_pod(self, pod: Pod) -> tuple[Service, ...]:
        """Services whose selector picks `pod`, in name order."""
        return self._pod_services.get((pod.namespace, pod.name), ())

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


class _Selectable(Generic[T]):
    """Label selection over one kind: (namespace, label, value) -> positions in name order."""

    __slots__ = ("_index", "_labels_of", "_positions")

    def __init__(self, index: _Index[T], labels_of: Callable[[T], Mapping[str, str]]) -> None:
        self._index = index
        self._labels_of = labels_of
        positions: dict[tuple[str, str, str], list[int]] = defaultdict(list)
        for position, obj in enumerate(index.all):
            namespace = obj.meta.namespace
            for label, value in labels_of(obj).items():
                positions[namespace, label, value].append(position)
        self._positions = positions

    def select(self, namespace: str, selector: Mapping[str, str]) -> tuple[T, ...]:
        if not selector:
            return self._index.in_namespace(namespace)
        candidates: list[int] | None = None
        for label, value in selector.items():
            found = self._positions.get((namespace, label, value))
            if not found:
                return ()
            if candidates is None or len(found) < len(candidates):
                candidates = found
        assert candidates is not None
        objects, labels_of = self._index.all, self._labels_of
        return tuple(
            objects[i] for i in candidates if selector_matches(selector, labels_of(objects[i]))
        )

"""The whole translation: a Mesh in, the workload API resources (and engine policies) out."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from ambient_fast.controlplane.model import Mesh, Pod, selector_matches
from ambient_fast.controlplane.translate.policies import (
    DEFAULT_ROOT_NAMESPACE,
    PolicyNotes,
    translate_authorization,
    translate_peer_authentication,
)
from ambient_fast.controlplane.translate.waypoint_allow import WaypointAllows
from ambient_fast.controlplane.translate.waypoint_config import build_waypoint_configs
from ambient_fast.controlplane.translate.waypoints import attached, waypoint_targets
from ambient_fast.controlplane.translate.workloads import (
    Naming,
    service_address,
    service_resource_name,
    workload_address,
    workload_uid,
)
from ambient_fast.policy import Policy, Scope
from ambient_fast.policy.proto import to_authorization
from ambient_fast.xds.proto import authorization_pb2 as authz
from ambient_fast.xds.proto import waypoint_pb2 as wp
from ambient_fast.xds.proto import workload_pb2 as wl
from ambient_fast.xds.resources import (
    ADDRESS_TYPE_URL,
    AUTHORIZATION_TYPE_URL,
    WAYPOINT_CONFIG_TYPE_URL,
    ResourceStore,
)

# istiod defaults: CLUSTER_ID "Kubernetes", trust domain and DNS domain cluster.local.
DEFAULT_CLUSTER_ID = "Kubernetes"
DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_DOMAIN = "cluster.local"
# istiod's PILOT_AUTO_ALLOW_WAYPOINT_POLICY (pilot/pkg/features/ambient.go): off.
DEFAULT_AUTO_ALLOW_WAYPOINT_POLICY = False


@dataclass(frozen=True, slots=True)
class TranslateOptions:
    cluster_id: str = DEFAULT_CLUSTER_ID
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    domain: str = DEFAULT_DOMAIN
    root_namespace: str = DEFAULT_ROOT_NAMESPACE
    # A synthetic ALLOW of each waypoint's identities at its workloads (waypoint_allow.py).
    auto_allow_waypoint_policy: bool = DEFAULT_AUTO_ALLOW_WAYPOINT_POLICY


@dataclass(frozen=True, slots=True)
class WaypointPolicy:
    """A policy attached to waypoints by targetRef(s): (kind, name) in its own namespace."""

    policy: Policy
    targets: tuple[tuple[str, str], ...]

    def applies_to(
        self, gateway: tuple[str, str], service: tuple[str, str] | None, root_namespace: str
    ) -> bool:
        """Whether it applies at waypoint `gateway` for traffic to `service` (ns, name)."""
        return attached(self.targets, self.policy.namespace, gateway, service, root_namespace)


# Selector policies by namespace: (selector, Authorization name), in policy order.
SelectorPolicies = dict[str, list[tuple[Mapping[str, str], str]]]


@dataclass
class Translation:
    addresses: dict[str, wl.Address] = field(default_factory=dict)
    authorizations: dict[str, authz.Authorization] = field(default_factory=dict)
    # Every policy in engine form, HTTP attributes included (waypoints, offline tools).
    policies: list[Policy] = field(default_factory=list)
    # targetRef policies, for the waypoint configuration.
    waypoint_policies: list[WaypointPolicy] = field(default_factory=list)
    # Each istio-waypoint Gateway's L7 configuration, by "<namespace>/<name>".
    waypoints: dict[str, wp.WaypointConfig] = field(default_factory=dict)
    notes: PolicyNotes = field(default_factory=PolicyNotes)
    options: TranslateOptions = field(default_factory=lambda: TranslateOptions())
    # The node-proxy Authorizations that select workloads by label, for `policies_selecting`.
    selectors: SelectorPolicies = field(default_factory=dict)
    # The synthetic ALLOWs of waypoint identities (auto_allow_waypoint_policy), if enabled.
    waypoint_allows: WaypointAllows = field(default_factory=WaypointAllows)

    def publish(
        self, store: ResourceStore, addresses: Iterable[tuple[str, wl.Address]] | None = None
    ) -> None:
        """Replaces the store's contents; only what changed reaches connected proxies.
        `addresses`, when given, stand for `self.addresses` (see `publish_translation`)."""
        store.replace(ADDRESS_TYPE_URL, self.addresses if addresses is None else addresses)
        store.replace(AUTHORIZATION_TYPE_URL, self.authorizations)
        store.register_type(WAYPOINT_CONFIG_TYPE_URL)  # our own type; a no-op when served
        store.replace(WAYPOINT_CONFIG_TYPE_URL, self.waypoints)


def _translate_policies(mesh: Mesh, options: TranslateOptions, out: Translation) -> None:
    """Translates every policy; the selector ones are also listed in `out.selectors`."""

    def select(namespace: str, selector: Mapping[str, str], key: str) -> None:
        out.selectors.setdefault(namespace, []).append((selector, key))

    for ap in mesh.authorization_policies:
        policy = translate_authorization(ap, out.notes, options.root_namespace)
        if ap.target_refs:
            targets = waypoint_targets(ap.target_refs, ap.namespace)
            out.waypoint_policies.append(WaypointPolicy(policy, targets))
            continue
        out.policies.append(policy)
        node_form = policy.for_node_proxy()
        if node_form is None:
            continue
        out.authorizations[policy.key] = to_authorization(node_form)
        if policy.scope is Scope.WORKLOAD_SELECTOR and ap.selector:
            select(ap.namespace, ap.selector, policy.key)
    for pa in mesh.peer_authentications:
        strict = translate_peer_authentication(pa, options.root_namespace)
        if strict is None:
            continue
        out.policies.append(strict)
        out.authorizations[strict.key] = to_authorization(strict)
        if strict.scope is Scope.WORKLOAD_SELECTOR and pa.selector:
            select(pa.namespace, pa.selector, strict.key)


def _selected_pods(mesh: Mesh, selectors: SelectorPolicies) -> dict[tuple[str, str], list[str]]:
    """The selector policies by the (namespace, pod) they select (through the model's label
    index, not by testing every policy against every pod)."""
    by_pod: dict[tuple[str, str], list[str]] = defaultdict(list)
    for namespace, policies in selectors.items():
        for selector, key in policies:
            for pod in mesh.pods_selected_by(namespace, selector):
                by_pod[(pod.namespace, pod.name)].append(key)
    return by_pod


def policies_selecting(selectors: SelectorPolicies, pod: Pod) -> tuple[str, ...]:
    """The names of the selector Authorizations that select `pod` (a Workload's list)."""
    labels = pod.labels
    return tuple(
        sorted(
            key
            for selector, key in selectors.get(pod.namespace, ())
            if selector_matches(selector, labels)
        )
    )


def translate(mesh: Mesh, options: TranslateOptions | None = None) -> Translation:
    """Every resource, all at once (offline tools, tests); the control plane streams them
    into its store with `publish_translation`."""
    out = _translate_all_but_addresses(mesh, options or TranslateOptions())
    out.addresses = dict(address_resources(mesh, out))
    return out


def publish_translation(mesh: Mesh, options: TranslateOptions, store: ResourceStore) -> Translation:
    """`translate(mesh, options).publish(store)`, with each Address serialized into the
    store as it is built rather than all of them held at once (10k protobuf messages at
    once leave the heap fragmented). The Translation returned has no `addresses`."""
    out = _translate_all_but_addresses(mesh, options)
    out.publish(store, address_resources(mesh, out))
    return out


def _translate_all_but_addresses(mesh: Mesh, options: TranslateOptions) -> Translation:
    naming = Naming(options.cluster_id, options.trust_domain, options.domain)
    out = Translation(options=options)
    _translate_policies(mesh, options, out)
    if options.auto_allow_waypoint_policy:
        out.waypoint_allows = WaypointAllows.of(mesh, options.trust_domain)
        for policy in out.waypoint_allows.policies:
            out.policies.append(policy)
            out.authorizations[policy.key] = to_authorization(policy)
    out.waypoints = build_waypoint_configs(mesh, naming, options.root_namespace, out.notes)
    return out


def address_resources(mesh: Mesh, translation: Translation) -> Iterator[tuple[str, wl.Address]]:
    """The Address resources (Workloads, then Services) by name, each built when asked for."""
    options = translation.options
    naming = Naming(options.cluster_id, options.trust_domain, options.domain)
    selectors = _selected_pods(mesh, translation.selectors)
    for pod in mesh.pods:
        if not pod.ip:
            continue  # not scheduled: no address to route to yet
        policies = tuple(sorted(selectors.get((pod.namespace, pod.name), ())))
        policies += translation.waypoint_allows.for_pod(mesh, pod)
        yield workload_uid(pod, naming), workload_address(mesh, pod, naming, policies)
    for service in mesh.services:
        if service.external_name:
            continue
        yield service_resource_name(service, naming), service_address(mesh, service, naming)

"""istiod's PILOT_AUTO_ALLOW_WAYPOINT_POLICY: a synthetic ALLOW of each waypoint's identities,
referenced by every workload whose traffic that waypoint carries (off by default, as in
istiod).

Followed: Istio 1.22 to 1.26, pilot/pkg/serviceregistry/kube/controller/ambient
(policies.go `implicitWaypointPolicy`, workloads.go `implicitWaypointPolicies`, waypoints.go
`Waypoint.ServiceAccounts`):

- one Authorization per waypoint with at least one instance (a pod labelled
  gateway.networking.k8s.io/gateway-name=<gateway> in its namespace), named
  `istio_allow_waypoint_<namespace>_<gateway>` ('_' cannot occur in Kubernetes names) in the
  waypoint's namespace, scope WORKLOAD_SELECTOR (selecting nothing by labels: workloads name
  it), action ALLOW, one rule matching the principals `<trust domain>/ns/<ns>/sa/<sa>` of the
  instances' service accounts, sorted, repeated as istiod repeats them;
- a workload lists it after its selector policies whatever other policies it has (istiod's
  flag help: "unless other ALLOW policies are created, this effectively denies traffic that
  doesn't go through the waypoint"): first the waypoints of the Services that pick it, other
  than its own, by "<ns>/<name>" and each once, then its own (workload) waypoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ambient_fast.controlplane.model import Gateway, Mesh, Pod
from ambient_fast.controlplane.translate.waypoints import (
    GATEWAY_NAME_LABEL,
    Traffic,
    bound_waypoint,
)
from ambient_fast.policy import Action, Policy, Scope
from ambient_fast.policy.model import Clause, Match, Rule, StringMatch, StringMatchKind

# istiod: implicitWaypointPolicyName.
POLICY_PREFIX = "istio_allow_waypoint_"

_NamespacedName = tuple[str, str]


def waypoint_service_accounts(mesh: Mesh, gateway: Gateway) -> tuple[str, ...]:
    """The service accounts of the waypoint's instances, one per pod, sorted."""
    instances = mesh.pods_selected_by(gateway.namespace, {GATEWAY_NAME_LABEL: gateway.name})
    return tuple(sorted(pod.service_account for pod in instances))


def waypoint_allow_policy(gateway: Gateway, accounts: tuple[str, ...], trust_domain: str) -> Policy:
    principals = tuple(
        StringMatch(StringMatchKind.EXACT, f"{trust_domain}/ns/{gateway.namespace}/sa/{account}")
        for account in accounts
    )
    return Policy(
        f"{POLICY_PREFIX}{gateway.namespace}_{gateway.name}",
        gateway.namespace,
        Scope.WORKLOAD_SELECTOR,
        Action.ALLOW,
        (Rule((Clause((Match(principals=principals),)),)),),
    )


@dataclass(frozen=True, slots=True)
class WaypointAllows:
    """The synthetic policies of one translation, and which of them each workload lists."""

    policies: tuple[Policy, ...] = ()
    # Waypoint (namespace, name) -> its policy's resource name, for waypoints that have one.
    names: Mapping[_NamespacedName, str] = field(default_factory=dict)

    @classmethod
    def of(cls, mesh: Mesh, trust_domain: str) -> WaypointAllows:
        policies: list[Policy] = []
        names: dict[_NamespacedName, str] = {}
        for gateway in mesh.waypoints:
            accounts = waypoint_service_accounts(mesh, gateway)
            if accounts:  # istiod: no instances, no policy
                policy = waypoint_allow_policy(gateway, accounts, trust_domain)
                policies.append(policy)
                names[gateway.namespace, gateway.name] = policy.key
        return cls(tuple(policies), names)

    def for_pod(self, mesh: Mesh, pod: Pod) -> tuple[str, ...]:
        """The names `pod`'s Workload lists after its selector policies."""
        if not self.names:
            return ()
        own = _key(bound_waypoint(mesh, pod.namespace, pod.labels, Traffic.WORKLOAD))
        via_services = set()
        for service in mesh.services_of_pod(pod):
            key = _key(bound_waypoint(mesh, service.namespace, service.labels, Traffic.SERVICE))
            if key is not None and key != own:
                via_services.add(key)
        ordered = sorted(via_services, key="/".join)
        if own is not None:
            ordered.append(own)
        return tuple(self.names[key] for key in ordered if key in self.names)


def _key(gateway: Gateway | None) -> _NamespacedName | None:
    return (gateway.namespace, gateway.name) if gateway is not None else None

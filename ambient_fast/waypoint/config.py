"""A `WaypointConfig` (served by the control plane) -> `WaypointView` (what the waypoint uses).

No second schema: every document goes through the control plane's own parser
(`model.loader.parse_document`) and every AuthorizationPolicy through its own translation
(`translate_authorization`) into `policy.Policy`, attached by the same targetRef rule
(`waypoints.attached`). Anything that does not survive that path is a problem in
`WaypointView.problems`, never silently dropped; the view is built from the rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson

from ambient_fast.controlplane.model import (
    Mesh,
    MeshObject,
    ModelError,
    Origin,
    RequestAuthentication,
    Route,
)
from ambient_fast.controlplane.model.loader import UnknownDocument, parse_document
from ambient_fast.controlplane.translate.policies import (
    DEFAULT_ROOT_NAMESPACE,
    PolicyNotes,
    translate_authorization,
)
from ambient_fast.controlplane.translate.translate import WaypointPolicy
from ambient_fast.controlplane.translate.waypoint_config import CARRIED_KINDS
from ambient_fast.controlplane.translate.waypoints import attached, waypoint_targets
from ambient_fast.policy import Decision, Policy, PolicyTable, Request
from ambient_fast.policy.engine import CompiledPolicy
from ambient_fast.xds.proto import waypoint_pb2 as wp

_Service = tuple[str, str]  # (namespace, name) of a Kubernetes Service


@dataclass(frozen=True, slots=True)
class WaypointView:
    """One waypoint's L7 configuration, typed and compiled.

    `services`/`workloads` are what it may serve (Address resource names: "<ns>/<hostname>"
    and workload uids). A `service` argument below is the (namespace, name) of the Service
    the request was addressed to, or None for workload (pod-addressed) traffic.
    """

    name: str
    namespace: str
    root_namespace: str
    services: frozenset[str]
    workloads: frozenset[str]
    # The documents as the model's typed objects, indexed (routes by parent Service).
    mesh: Mesh
    # Every AuthorizationPolicy in engine form with the targets that attach it.
    policies: tuple[WaypointPolicy, ...]
    problems: tuple[str, ...] = ()
    # Per-service compiled tables, filled on first use (not part of the view's value).
    _compiled: dict[_Service | None, tuple[CompiledPolicy, ...]] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    @property
    def gateway(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def policies_for(self, service: _Service | None) -> tuple[Policy, ...]:
        """The AuthorizationPolicies that apply to traffic for `service` at this waypoint."""
        return tuple(
            w.policy
            for w in self.policies
            if w.applies_to(self.gateway, service, self.root_namespace)
        )

    def authorize(self, service: _Service | None, request: Request) -> Decision:
        """The RBAC decision (DENY, then ALLOW) for one request, on tables compiled once per
        service. Attachment, not namespace scope, decides which policies apply here."""
        compiled = self._compiled.get(service)
        if compiled is None:
            compiled = tuple(CompiledPolicy(p) for p in self.policies_for(service))
            self._compiled[service] = compiled
        return PolicyTable.decide(compiled, request)

    def request_authentications_for(
        self, service: _Service | None
    ) -> tuple[RequestAuthentication, ...]:
        return tuple(
            ra
            for ra in self.mesh.request_authentications
            if attached(
                waypoint_targets(ra.target_refs, ra.namespace),
                ra.namespace,
                self.gateway,
                service,
                self.root_namespace,
            )
        )

    def routes_for(self, service: _Service) -> tuple[Route, ...]:
        """HTTPRoutes, then GRPCRoutes, with a parentRef to `service` (Gateway API GAMMA)."""
        return self.mesh.routes_for_service(*service)


def _parse(config: wp.WaypointConfig, problems: list[str]) -> Iterable[MeshObject]:
    where = f"WaypointConfig {config.namespace}/{config.name}"
    seen: set[tuple[str, str, str]] = set()
    for index, document in enumerate(config.documents, start=1):
        name = f"{where} doc {index} {document.kind} {document.namespace}/{document.name}"
        if document.kind not in CARRIED_KINDS:
            problems.append(f"{name}: kind {document.kind!r} is not waypoint configuration")
            continue
        key = (document.kind, document.namespace, document.name)
        if key in seen:
            problems.append(f"{name}: duplicate; skipped")
            continue
        seen.add(key)
        try:
            body = orjson.loads(document.json)
        except orjson.JSONDecodeError as e:
            problems.append(f"{name}: invalid JSON: {e}")
            continue
        result = parse_document(body, Origin(where, index))
        if isinstance(result, ModelError):
            problems.append(str(result))
        elif isinstance(result, UnknownDocument):
            problems.append(f"{name}: unknown kind {result.kind} ({result.api_version})")
        elif (result.KIND, result.namespace, result.name) != key:
            problems.append(
                f"{name}: the document is {result.KIND} {result.namespace}/{result.name}"
            )
        else:
            yield result


def load_waypoint_config(config: wp.WaypointConfig) -> WaypointView:
    """Parses and compiles `config`; what cannot be used is listed in `problems`."""
    problems: list[str] = []
    mesh = Mesh(_parse(config, problems))
    root = config.root_namespace or DEFAULT_ROOT_NAMESPACE
    notes = PolicyNotes()
    policies = tuple(
        WaypointPolicy(
            translate_authorization(ap, notes, root),
            waypoint_targets(ap.target_refs, ap.namespace),
        )
        for ap in mesh.authorization_policies
    )
    problems.extend(notes.problems)
    return WaypointView(
        name=config.name,
        namespace=config.namespace,
        root_namespace=root,
        services=frozenset(config.bound_services),
        workloads=frozenset(config.bound_workloads),
        mesh=mesh,
        policies=policies,
        problems=tuple(problems),
    )

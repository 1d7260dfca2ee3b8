"""The waypoint's side of WaypointConfig: the documents it receives, parsed and compiled by the
control plane's own code, give exactly the control plane's policies, JWT rules and routes."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import orjson
import pytest
from translate_helpers import GATEWAY_CLASS, app, namespace, translate_yaml, waypoint

from ambient_fast.controlplane.model import LoadResult, SourceFile, load_paths, load_sources
from ambient_fast.controlplane.translate import Translation, translate
from ambient_fast.controlplane.translate.waypoints import attached, waypoint_targets
from ambient_fast.policy import Request
from ambient_fast.policy.request import HttpAttributes
from ambient_fast.waypoint import WaypointView, load_waypoint_config
from ambient_fast.xds.proto import waypoint_pb2 as wp
from ambient_fast.xds.resources import WAYPOINT_CONFIG_TYPE_URL, type_url_of

BOOKINFO = Path(__file__).resolve().parents[1] / "fixtures" / "meshes" / "bookinfo"

POLICIES = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-wide-deny, namespace: istio-system}
spec:
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/debug/*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-read, namespace: apps}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  rules:
  - from: [{source: {principals: ["cluster.local/ns/client/sa/*"]}}]
    to: [{operation: {methods: [GET, HEAD], ports: ["8080"]}}]
    when: [{key: "request.headers[x-tenant]", values: [blue]}]
  - when: [{key: no.such.key, values: [x]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: audit-all
  namespace: apps
  annotations: {istio.io/dry-run: "true"}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: apps}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  jwtRules: [{issuer: issuer-1, jwks: '{"keys": []}', audiences: [reviews]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
  namespace: apps
  creationTimestamp: 2024-05-01T10:00:00Z
spec:
  parentRefs: [{kind: Service, group: "", name: reviews, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v2}, headers: [{name: end-user, value: jason}]}]
    filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-v, value: "2"}]}}
    backendRefs: [{name: reviews, port: 80, weight: 3}]
    timeouts: {request: 5s}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: reviews-grpc, namespace: apps}
spec:
  parentRefs: [{kind: Service, group: "", name: reviews}]
  rules: [{matches: [{method: {service: reviews.Reviews, method: Get}}]}]
"""
MESH = (
    GATEWAY_CLASS,
    namespace("istio-system"),
    namespace("apps", **{"istio.io/use-waypoint": "waypoint"}),
    waypoint("waypoint", "apps"),
    app("reviews", "apps"),
    app("ratings", "apps"),
    POLICIES,
)


def load(*documents: str) -> tuple[LoadResult, Translation]:
    text = "\n---\n".join(textwrap.dedent(d) for d in documents)
    result = load_sources([SourceFile("mesh.yaml", text)])
    assert not result.report.errors, [str(e) for e in result.report.errors]
    return result, translate(result.mesh)


def over_the_wire(config: wp.WaypointConfig) -> WaypointView:
    """What a waypoint builds from the bytes it receives."""
    return load_waypoint_config(wp.WaypointConfig.FromString(config.SerializeToString()))


def service_names(config: wp.WaypointConfig) -> list[tuple[str, str]]:
    """(namespace, name) of the bound services ("<ns>/<name>.<ns>.svc.<domain>")."""
    return [(n.split("/")[0], n.split("/")[1].split(".")[0]) for n in config.bound_services]


def assert_round_trip(t: Translation, mesh: LoadResult) -> int:
    """Per waypoint and per traffic target, the waypoint's view equals the control plane's own
    attachment; returns how many (waypoint, target) pairs had policies, routes or JWT rules."""
    root = t.options.root_namespace
    checked = 0
    for config in t.waypoints.values():
        view = over_the_wire(config)
        # Compiling the same documents notes the same things (e.g. a skipped rule).
        assert set(view.problems) <= set(t.notes.problems)
        gateway = (config.namespace, config.name)
        services = service_names(config)
        targets: list[tuple[str, str] | None] = [None, *services]
        for target in targets:
            expected = tuple(
                w.policy for w in t.waypoint_policies if w.applies_to(gateway, target, root)
            )
            got = view.policies_for(target)
            assert got == expected, (gateway, target)
            assert [p.rule_origins for p in got] == [p.rule_origins for p in expected]
            expected_jwt = tuple(
                ra
                for ra in mesh.mesh.request_authentications
                if attached(
                    waypoint_targets(ra.target_refs, ra.namespace),
                    ra.namespace,
                    gateway,
                    target,
                    root,
                )
            )
            assert view.request_authentications_for(target) == expected_jwt
            checked += bool(expected or expected_jwt)
        for service in services:
            routes = mesh.mesh.routes_for_service(*service)
            assert view.routes_for(service) == routes
            checked += bool(routes)
    return checked


def test_round_trip_gives_the_control_planes_policies_jwt_rules_and_routes() -> None:
    result, t = load(*MESH)
    # None, ratings (mesh-wide and gateway policies), reviews (+ JWT), reviews' routes
    assert assert_round_trip(t, result) == 4
    view = over_the_wire(t.waypoints["apps/waypoint"])
    assert [p.key for p in view.policies_for(("apps", "reviews"))] == [
        "apps/audit-all",
        "apps/reviews-read",
        "istio-system/mesh-wide-deny",
    ]
    assert [p.key for p in view.policies_for(("apps", "ratings"))] == [
        "apps/audit-all",
        "istio-system/mesh-wide-deny",
    ]
    assert [r.name for r in view.routes_for(("apps", "reviews"))] == ["reviews", "reviews-grpc"]
    assert view.routes_for(("apps", "ratings")) == ()


def test_round_trip_on_the_bookinfo_fixture() -> None:
    result = load_paths([BOOKINFO])
    t = translate(result.mesh)
    assert sorted(t.waypoints) == ["bookinfo/waypoint"]
    assert assert_round_trip(t, result) >= 3


def test_the_waypoint_decides_with_the_compiled_policies() -> None:
    view = over_the_wire(translate_yaml(*MESH).waypoints["apps/waypoint"])

    def request(method: str, path: str, tenant: str) -> Request:
        return Request(
            source_ip=ipaddress.ip_address("192.168.1.5"),
            destination_ip=ipaddress.ip_address("10.96.0.1"),
            destination_port=8080,
            source_identity="spiffe://cluster.local/ns/client/sa/web",
            http=HttpAttributes(method, path, "reviews", {"x-tenant": tenant}),
        )

    reviews = ("apps", "reviews")
    allowed = view.authorize(reviews, request("GET", "/reviews/1", "blue"))
    assert (allowed.allowed, allowed.policy) == (True, "apps/reviews-read")
    assert not view.authorize(reviews, request("POST", "/reviews/1", "blue")).allowed
    assert not view.authorize(reviews, request("GET", "/reviews/1", "red")).allowed
    denied = view.authorize(reviews, request("GET", "/debug/pprof", "blue"))
    assert (denied.allowed, denied.policy) == (False, "istio-system/mesh-wide-deny")
    # No ALLOW policy is attached for ratings: only the mesh-wide DENY applies.
    assert view.authorize(("apps", "ratings"), request("POST", "/x", "red")).allowed


def test_the_type_url_is_the_messages_own() -> None:
    assert type_url_of(wp.WaypointConfig()) == WAYPOINT_CONFIG_TYPE_URL
    assert WAYPOINT_CONFIG_TYPE_URL == "type.googleapis.com/ambient.waypoint.v1.WaypointConfig"


def test_the_view_knows_what_it_serves() -> None:
    view = over_the_wire(translate_yaml(*MESH).waypoints["apps/waypoint"])
    assert (view.namespace, view.name, view.root_namespace) == ("apps", "waypoint", "istio-system")
    assert view.services == {
        "apps/reviews.apps.svc.cluster.local",
        "apps/ratings.apps.svc.cluster.local",
    }
    assert view.workloads == frozenset()  # a service waypoint (the default)


def test_what_the_control_plane_noted_the_waypoint_notes_too() -> None:
    t = translate_yaml(*MESH)
    view = over_the_wire(t.waypoints["apps/waypoint"])
    skipped = (
        "AuthorizationPolicy apps/reviews-read: rule 1: when key 'no.such.key' is not "
        "supported; rule skipped"
    )
    assert t.notes.problems == [skipped]
    assert view.problems == (skipped,)
    assert view.policies_for(("apps", "reviews"))[1].rule_origins == (0,)  # only rule 0 compiled


def document(kind: str, namespace: str, name: str, body: object) -> wp.ConfigDocument:
    text = body if isinstance(body, str) else orjson.dumps(body).decode()
    return wp.ConfigDocument(kind=kind, namespace=namespace, name=name, json=text)


def policy_body(name: str, spec: object) -> dict[str, object]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "apps"},
        "spec": spec,
    }


def test_documents_that_cannot_be_used_are_reported_and_the_rest_loads() -> None:
    good = {"targetRefs": [{"kind": "Service", "group": "", "name": "reviews"}], "rules": [{}]}
    config = wp.WaypointConfig(
        name="waypoint",
        namespace="apps",
        root_namespace="istio-system",
        documents=[
            document("AuthorizationPolicy", "apps", "good", policy_body("good", good)),
            document("AuthorizationPolicy", "apps", "broken", "{not json"),
            document("AuthorizationPolicy", "apps", "bad", policy_body("bad", {"action": "MAYBE"})),
            document("AuthorizationPolicy", "apps", "renamed", policy_body("other", good)),
            document("PeerAuthentication", "apps", "strict", {"kind": "PeerAuthentication"}),
            document("AuthorizationPolicy", "apps", "good", policy_body("good", good)),
        ],
    )
    view = load_waypoint_config(config)
    assert [p.key for p in view.policies_for(("apps", "reviews"))] == ["apps/good"]
    where = "WaypointConfig apps/waypoint doc"
    assert len(view.problems) == 5
    assert view.problems[0].startswith(f"{where} 2 AuthorizationPolicy apps/broken: invalid JSON")
    assert view.problems[1:] == (
        f"{where} 3 AuthorizationPolicy apps/bad: spec.action: expected one of ALLOW, DENY, "
        'AUDIT, CUSTOM, got "MAYBE"',
        f"{where} 4 AuthorizationPolicy apps/renamed: the document is AuthorizationPolicy "
        "apps/other",
        f"{where} 5 PeerAuthentication apps/strict: kind 'PeerAuthentication' is not waypoint "
        "configuration",
        f"{where} 6 AuthorizationPolicy apps/good: duplicate; skipped",
    )


@pytest.mark.parametrize("root", ["", "istio-system"])
def test_an_unset_root_namespace_is_istios_default(root: str) -> None:
    ref = {"kind": "GatewayClass", "group": "gateway.networking.k8s.io", "name": "istio-waypoint"}
    body = policy_body("mesh", {"targetRefs": [ref], "rules": [{}]})
    body["metadata"] = {"name": "mesh", "namespace": "istio-system"}
    config = wp.WaypointConfig(
        name="waypoint",
        namespace="apps",
        root_namespace=root,
        documents=[document("AuthorizationPolicy", "istio-system", "mesh", body)],
    )
    assert [p.key for p in load_waypoint_config(config).policies_for(None)] == ["istio-system/mesh"]

"""Golden tests: which user documents reach which waypoint's WaypointConfig (reference 03,
policy attachment by targetRef; GAMMA routes by parentRef)."""

from __future__ import annotations

import textwrap
from typing import Any

import orjson
from translate_helpers import GATEWAY_CLASS, app, namespace, translate_yaml, waypoint

from ambient_fast.controlplane.model import SourceFile, load_sources
from ambient_fast.controlplane.translate import translate
from ambient_fast.controlplane.translate.translate import Translation
from ambient_fast.xds.resources import WAYPOINT_CONFIG_TYPE_URL, ResourceStore

USES_WAYPOINT = "istio.io/use-waypoint: waypoint"
USES_OTHER = "istio.io/use-waypoint: other"

# Two waypoints in apps; reviews (and its pod) use "waypoint", details uses "other",
# ratings uses none.
MESH = (
    GATEWAY_CLASS,
    namespace("istio-system"),
    namespace("apps"),
    namespace("client"),
    waypoint("waypoint", "apps", serves="all"),
    waypoint("other", "apps"),
    app("reviews", "apps", service_labels=USES_WAYPOINT, pod_labels=USES_WAYPOINT),
    app("details", "apps", service_labels=USES_OTHER),
    app("ratings", "apps"),
)


def authz(name: str, ns: str, targets: str, kind: str = "AuthorizationPolicy") -> str:
    body = "rules: [{}]" if kind == "AuthorizationPolicy" else "jwtRules: [{issuer: issuer-1}]"
    return f"""
apiVersion: security.istio.io/v1
kind: {kind}
metadata: {{name: {name}, namespace: {ns}}}
spec:
  {targets}
  {body}
"""


def route(name: str, ns: str, parent: str, kind: str = "HTTPRoute") -> str:
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: {kind}
metadata: {{name: {name}, namespace: {ns}}}
spec:
  parentRefs: [{parent}]
  rules: [{{backendRefs: [{{name: reviews, port: 80}}]}}]
"""


GATEWAY = "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]"


def service(name: str) -> str:
    return f'targetRefs: [{{kind: Service, group: "", name: {name}}}]'


def sent(*documents: str) -> dict[str, list[str]]:
    """What each waypoint receives: "Kind ns/name" per document, in config order."""
    t = translate_yaml(*MESH, *documents)
    return {
        name: [f"{d.kind} {d.namespace}/{d.name}" for d in config.documents]
        for name, config in t.waypoints.items()
    }


def test_every_waypoint_gets_a_config_with_its_bound_services_and_workloads() -> None:
    t = translate_yaml(*MESH)
    assert sorted(t.waypoints) == ["apps/other", "apps/waypoint"]
    mine = t.waypoints["apps/waypoint"]
    assert (mine.name, mine.namespace, mine.root_namespace) == ("waypoint", "apps", "istio-system")
    assert list(mine.bound_services) == ["apps/reviews.apps.svc.cluster.local"]
    assert list(mine.bound_workloads) == ["Kubernetes//Pod/apps/reviews"]
    assert list(mine.documents) == []
    other = t.waypoints["apps/other"]
    assert list(other.bound_services) == ["apps/details.apps.svc.cluster.local"]
    assert list(other.bound_workloads) == []  # serves service traffic only (the default)


def test_a_policy_targeting_the_gateway_reaches_that_waypoint_only() -> None:
    assert sent(authz("gw", "apps", GATEWAY)) == {
        "apps/other": [],
        "apps/waypoint": ["AuthorizationPolicy apps/gw"],
    }


def test_a_policy_targeting_a_service_reaches_the_waypoint_that_service_is_bound_to() -> None:
    assert sent(
        authz("on-reviews", "apps", service("reviews")),
        authz("on-details", "apps", service("details")),
        authz("on-ratings", "apps", service("ratings")),  # ratings has no waypoint
    ) == {
        "apps/other": ["AuthorizationPolicy apps/on-details"],
        "apps/waypoint": ["AuthorizationPolicy apps/on-reviews"],
    }


def test_the_waypoint_gateway_class_attaches_from_the_root_namespace_only() -> None:
    ref = (
        "targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]"
    )
    assert sent(authz("mesh-wide", "istio-system", ref), authz("not-root", "apps", ref)) == {
        "apps/other": ["AuthorizationPolicy istio-system/mesh-wide"],
        "apps/waypoint": ["AuthorizationPolicy istio-system/mesh-wide"],
    }


def test_a_target_ref_never_matches_in_another_namespace() -> None:
    # A policy in `client` naming Gateway "waypoint" means client/waypoint, which is no waypoint.
    assert sent(
        authz("elsewhere", "client", GATEWAY), authz("svc", "client", service("reviews"))
    ) == {
        "apps/other": [],
        "apps/waypoint": [],
    }
    # Naming the other namespace explicitly is refused when the document is loaded.
    text = authz(
        "cross",
        "client",
        "targetRefs: [{kind: Service, group: '', name: reviews, namespace: apps}]",
    )
    report = load_sources([SourceFile("mesh.yaml", textwrap.dedent(text))]).report
    assert [str(e) for e in report.errors] == [
        "mesh.yaml doc 1 AuthorizationPolicy client/cross: spec.targetRefs[0].namespace: "
        "must be the policy's namespace 'client'"
    ]


def test_selector_and_namespace_wide_policies_are_never_sent_to_waypoints() -> None:
    assert sent(
        authz("by-selector", "apps", "selector: {matchLabels: {app: reviews}}"),
        authz("namespace-wide", "apps", ""),
        authz(
            "jwt-by-selector",
            "apps",
            "selector: {matchLabels: {app: reviews}}",
            "RequestAuthentication",
        ),
    ) == {"apps/other": [], "apps/waypoint": []}


def test_request_authentications_attach_like_authorization_policies() -> None:
    kind = "RequestAuthentication"
    assert sent(
        authz("jwt-gw", "apps", GATEWAY, kind),
        authz("jwt-details", "apps", service("details"), kind),
        authz("allow", "apps", GATEWAY),
    ) == {
        "apps/other": ["RequestAuthentication apps/jwt-details"],
        "apps/waypoint": ["AuthorizationPolicy apps/allow", "RequestAuthentication apps/jwt-gw"],
    }


def test_routes_reach_the_waypoint_of_the_service_they_attach_to() -> None:
    assert sent(
        route("to-reviews", "apps", "{kind: Service, group: '', name: reviews, port: 80}"),
        route("grpc-details", "apps", "{kind: Service, group: '', name: details}", "GRPCRoute"),
        route("to-ratings", "apps", "{kind: Service, group: '', name: ratings}"),  # unbound
        # A consumer route in another namespace names the service's namespace explicitly.
        route("consumer", "client", "{kind: Service, group: '', name: reviews, namespace: apps}"),
        # Without the namespace it means client/reviews, which does not exist.
        route("lost", "client", "{kind: Service, group: '', name: reviews}"),
        # A Gateway parent is ingress, not mesh, configuration.
        route("ingress", "apps", "{name: waypoint}"),
    ) == {
        "apps/other": ["GRPCRoute apps/grpc-details"],
        "apps/waypoint": ["HTTPRoute apps/to-reviews", "HTTPRoute client/consumer"],
    }


def test_a_target_ref_with_the_wrong_group_never_matches_and_is_noted() -> None:
    no_group = "targetRefs: [{kind: Gateway, name: waypoint}]"
    t = translate_yaml(*MESH, authz("no-group", "apps", no_group))
    assert [list(c.documents) for c in t.waypoints.values()] == [[], []]
    assert t.notes.problems == [
        "AuthorizationPolicy apps/no-group: targetRef Gateway waypoint: group '' is not "
        "'gateway.networking.k8s.io'; it never matches"
    ]
    assert not any(w.targets for w in t.waypoint_policies)  # nor in the offline tools


def test_documents_travel_as_written_in_sorted_json() -> None:
    text = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-post
  namespace: apps
  annotations: {note: "ünïcode"}
  managedFields: [{manager: kubectl}]
  creationTimestamp: 2024-05-01T10:00:00Z
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: DENY
  rules: [{to: [{operation: {methods: [POST], ports: ["8080", 9090]}}]}]
status: {conditions: [{type: Accepted}]}
"""
    t = translate_yaml(*MESH, text)
    (document,) = t.waypoints["apps/waypoint"].documents
    assert (document.kind, document.namespace, document.name) == (
        "AuthorizationPolicy",
        "apps",
        "deny-post",
    )
    # status and managedFields are the API server's; a YAML timestamp keeps the model's text.
    written: dict[str, Any] = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {
            "name": "deny-post",
            "namespace": "apps",
            "annotations": {"note": "ünïcode"},
            "creationTimestamp": "2024-05-01 10:00:00+00:00",
        },
        "spec": {
            "targetRefs": [{"kind": "Service", "group": "", "name": "reviews"}],
            "action": "DENY",
            "rules": [{"to": [{"operation": {"methods": ["POST"], "ports": ["8080", 9090]}}]}],
        },
    }
    assert orjson.loads(document.json) == written
    assert document.json == orjson.dumps(written, option=orjson.OPT_SORT_KEYS).decode()


def test_a_document_that_cannot_be_json_is_noted_and_not_sent() -> None:
    # YAML integers have no bound; JSON's (as orjson writes it) stop at 64 bits.
    huge = authz("huge", "apps", GATEWAY).replace("rules: [{}]", "rules: [{}]\n  x: 1" + "0" * 25)
    t = translate_yaml(*MESH, huge, authz("gw", "apps", GATEWAY))
    assert [d.name for d in t.waypoints["apps/waypoint"].documents] == ["gw"]
    assert t.notes.problems == [
        "AuthorizationPolicy apps/huge: cannot be sent to waypoints as JSON: "
        "Integer exceeds 64-bit range"
    ]


def test_the_model_keeps_documents_only_of_what_may_reach_a_waypoint() -> None:
    text = "---".join(
        (
            authz("by-selector", "apps", "selector: {matchLabels: {app: reviews}}"),
            authz("gw", "apps", GATEWAY),
            route("to-reviews", "apps", "{kind: Service, group: '', name: reviews}"),
        )
    )
    mesh = load_sources([SourceFile("m.yaml", text)]).mesh
    assert {p.name: p.source is not None for p in mesh.authorization_policies} == {
        "by-selector": False,
        "gw": True,
    }
    assert [r.source is not None for r in mesh.http_routes] == [True]


def test_only_waypoints_whose_documents_changed_are_pushed_again() -> None:
    store = ResourceStore()
    base = (*MESH, authz("gw", "apps", GATEWAY))
    translate_yaml(*base).publish(store)
    assert sorted(store.names(WAYPOINT_CONFIG_TYPE_URL)) == ["apps/other", "apps/waypoint"]
    changes: list[frozenset[str]] = []
    store.subscribe(
        lambda c: changes.append(c.names) if c.type_url == WAYPOINT_CONFIG_TYPE_URL else None
    )

    translate_yaml(*base, app("extra", "apps")).publish(store)  # nothing attached changed
    assert changes == []
    edited = authz("gw", "apps", GATEWAY).replace("rules: [{}]", "rules: []")
    translate_yaml(*MESH, edited).publish(store)
    assert changes == [frozenset({"apps/waypoint"})]


def test_a_mesh_without_waypoints_publishes_no_waypoint_config() -> None:
    store = ResourceStore()
    t: Translation = translate(load_sources([SourceFile("m.yaml", namespace("apps"))]).mesh)
    t.publish(store)
    assert t.waypoints == {} and list(store.names(WAYPOINT_CONFIG_TYPE_URL)) == []

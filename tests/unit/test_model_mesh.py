"""The Mesh's lookups, on the shared fixtures (bookinfo, Gateway API mesh conformance shape)."""

from __future__ import annotations

import dataclasses

import pytest
from model_helpers import FIXTURES, load

from ambient_fast.controlplane.model import (
    AuthorizationPolicy,
    GRPCRoute,
    HTTPRoute,
    LoadResult,
    ObjectKey,
    Service,
    load_paths,
    selector_matches,
)


@pytest.fixture(scope="module")
def bookinfo() -> LoadResult:
    return load_paths([FIXTURES / "bookinfo"])


@pytest.fixture(scope="module")
def conformance() -> LoadResult:
    return load_paths([FIXTURES / "gateway-conformance"])


def test_fixtures_load_without_problems(bookinfo: LoadResult, conformance: LoadResult) -> None:
    assert bookinfo.report.problems == (), bookinfo.report
    assert conformance.report.problems == (), conformance.report


def test_directory_files_are_read_sorted(bookinfo: LoadResult) -> None:
    origins = [o.meta.origin.path for o in bookinfo.mesh.objects()]
    assert {p.rsplit("/", 1)[1] for p in origins} == {
        "apps.yaml",
        "namespaces.yaml",
        "policies.yaml",
        "sleep.yaml",
        "traffic.yaml",
        "waypoint.yaml",
    }
    again = load_paths([FIXTURES / "bookinfo"])
    assert [p.ip for p in again.mesh.pods] == [p.ip for p in bookinfo.mesh.pods]


def test_namespaces_and_their_labels(bookinfo: LoadResult) -> None:
    mesh = bookinfo.mesh
    assert [n.name for n in mesh.namespaces] == ["bookinfo", "istio-system", "sleep"]
    assert mesh.namespace_labels("bookinfo")["istio.io/dataplane-mode"] == "ambient"
    assert mesh.namespace_labels("nowhere") == {}
    assert mesh.namespace("sleep") is not None and mesh.namespace("nowhere") is None


def test_pods_by_name_ip_and_namespace(bookinfo: LoadResult) -> None:
    mesh = bookinfo.mesh
    assert len(mesh.pods_in("bookinfo")) == 7  # reviews-v2 has two replicas
    sleep = mesh.pod("sleep", "sleep")
    assert sleep is not None and mesh.pod_by_ip("10.244.2.200") == sleep
    for p in mesh.pods:
        assert p.ip is not None and mesh.pod_by_ip(p.ip) == p
        assert mesh.pod(p.namespace, p.name) == p
    assert mesh.pod("bookinfo", "sleep") is None


def test_service_endpoints_follow_selectors(bookinfo: LoadResult) -> None:
    mesh = bookinfo.mesh
    reviews = mesh.service("bookinfo", "reviews")
    assert reviews is not None
    assert sorted(p.labels["version"] for p in mesh.service_pods(reviews)) == [
        "v1",
        "v2",
        "v2",
        "v3",
    ]
    reviews_v2 = mesh.service("bookinfo", "reviews-v2")
    assert reviews_v2 is not None
    for p in mesh.service_pods(reviews_v2):
        assert [s.name for s in mesh.services_of_pod(p)] == ["reviews", "reviews-v2"]
        # named targetPort resolves through the pod's container ports
        target = reviews.ports[0].target_port
        assert isinstance(target, str) and p.container_port(target) == 9080


def test_pods_selected_by(bookinfo: LoadResult) -> None:
    mesh = bookinfo.mesh
    v2 = mesh.pods_selected_by("bookinfo", {"app": "reviews", "version": "v2"})
    assert len(v2) == 2 and all(selector_matches({"version": "v2"}, p.labels) for p in v2)
    assert mesh.pods_selected_by("sleep", {"app": "reviews"}) == ()
    assert mesh.pods_selected_by("bookinfo", {"app": "reviews", "version": "v9"}) == ()
    assert mesh.pods_selected_by("bookinfo", {"missing": "label"}) == ()
    # an empty selector selects the whole namespace (Istio's policy semantics)
    assert mesh.pods_selected_by("bookinfo", {}) == mesh.pods_in("bookinfo")
    names = [p.name for p in mesh.pods_selected_by("bookinfo", {"app": "reviews"})]
    assert names == sorted(names)


def test_services_by_vip(bookinfo: LoadResult) -> None:
    mesh = bookinfo.mesh
    for s in mesh.services:
        assert s.cluster_ip is not None and mesh.service_by_vip(s.cluster_ip) == s
    assert mesh.service_by_vip("10.96.100.10") == mesh.service("sleep", "sleep")
    assert [s.name for s in mesh.services_in("sleep")] == ["sleep"]


def test_waypoints_and_gateway_classes(bookinfo: LoadResult) -> None:
    mesh = bookinfo.mesh
    (waypoint,) = mesh.waypoints
    assert mesh.gateway("bookinfo", "waypoint") == waypoint
    assert waypoint.labels["istio.io/waypoint-for"] == "service"
    assert mesh.gateway_class("istio-waypoint") is not None
    assert mesh.get(ObjectKey("Gateway", "bookinfo", "waypoint")) == waypoint
    assert mesh.get(ObjectKey("Gateway", "bookinfo", "nope")) is None
    assert mesh.get(ObjectKey("Unknown", "bookinfo", "waypoint")) is None


def test_policies_by_namespace(bookinfo: LoadResult) -> None:
    mesh = bookinfo.mesh
    names = [p.name for p in mesh.authorization_policies_in("bookinfo")]
    assert names == ["deny-admin", "productpage-viewer", "reviews-get-only"]
    deny = mesh.get(ObjectKey("AuthorizationPolicy", "bookinfo", "deny-admin"))
    assert isinstance(deny, AuthorizationPolicy) and deny.dry_run
    assert [p.mtls_mode for p in mesh.peer_authentications_in("bookinfo")] == ["STRICT"]
    assert [r.name for r in mesh.request_authentications_in("bookinfo")] == ["productpage-jwt"]
    assert mesh.authorization_policies_in("sleep") == ()
    assert [d.name for d in mesh.destination_rules_in("bookinfo")] == ["ratings"]


def test_service_entry_selects_workload_entries(bookinfo: LoadResult) -> None:
    mesh = bookinfo.mesh
    (entry,) = mesh.service_entries
    assert entry.workload_selector is not None
    selected = mesh.workload_entries_selected_by(entry.namespace, entry.workload_selector)
    assert [w.name for w in selected] == ["isbn-db-vm"]
    assert mesh.workload_entries_selected_by("sleep", entry.workload_selector) == ()


def test_routes_by_parent_service(conformance: LoadResult) -> None:
    mesh = conformance.mesh
    ns = "gateway-conformance-mesh"
    on_echo = mesh.routes_for_service(ns, "echo")
    assert [(type(r).__name__, r.namespace, r.name) for r in on_echo] == [
        ("HTTPRoute", "gateway-conformance-mesh", "mesh-matching"),
        ("HTTPRoute", "gateway-conformance-mesh", "mesh-split"),
        ("HTTPRoute", "gateway-conformance-mesh", "mesh-weighted-backends"),
        ("HTTPRoute", "gateway-conformance-mesh-consumer", "consumer-route"),
        ("GRPCRoute", "gateway-conformance-mesh", "mesh-grpc-weighted-backends"),
    ]
    assert [r.name for r in mesh.routes_for_service(ns, "echo-v1")] == ["mesh-ports"]
    assert mesh.routes_for_service(ns, "echo-v2") == ()
    assert mesh.routes_for_gateway(ns, "echo") == ()
    weighted = mesh.routes_for_service(ns, "echo")[2]
    assert isinstance(weighted, HTTPRoute)
    assert [(b.name, b.weight) for b in weighted.rules[0].backend_refs] == [
        ("echo-v1", 70),
        ("echo-v2", 30),
        ("echo", 0),
    ]
    grpc = mesh.routes_for_service(ns, "echo")[4]
    assert isinstance(grpc, GRPCRoute) and grpc.parent_refs[0].port == 7070


def test_conformance_echo_services(conformance: LoadResult) -> None:
    mesh = conformance.mesh
    echo = mesh.service("gateway-conformance-mesh", "echo")
    assert isinstance(echo, Service)
    assert [(p.name, p.port, p.target_port, p.app_protocol) for p in echo.ports] == [
        ("http", 80, 80, "http"),
        ("http-alt", 8080, 8080, "http"),
        ("https", 443, 443, None),
        ("tcp", 9090, 9090, None),
        ("grpc", 7070, 7070, "grpc"),
    ]
    assert len(mesh.service_pods(echo)) == 2
    consumer = mesh.pods_in("gateway-conformance-mesh-consumer")
    assert len(consumer) == 1 and mesh.services_of_pod(consumer[0]) == ()


def test_objects_and_len_cover_everything(bookinfo: LoadResult) -> None:
    mesh = bookinfo.mesh
    objects = list(mesh.objects())
    assert len(objects) == len(mesh) == 41
    assert len({o.key for o in objects}) == len(objects)
    assert all(mesh.get(o.key) == o for o in objects)


def test_mesh_objects_are_frozen(bookinfo: LoadResult) -> None:
    service = bookinfo.mesh.services[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        service.cluster_ip = "1.2.3.4"  # type: ignore[misc]


def test_route_with_two_refs_to_one_service_is_listed_once() -> None:
    result = load("""
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: r}
        spec:
          parentRefs:
          - {group: "", kind: Service, name: web, port: 80}
          - {group: "", kind: Service, name: web, port: 8080}
          - {name: ingress}
    """)
    mesh = result.mesh
    assert [r.name for r in mesh.routes_for_service("default", "web")] == ["r"]
    assert [r.name for r in mesh.routes_for_gateway("default", "ingress")] == ["r"]

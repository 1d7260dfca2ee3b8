"""Outbound routing, one test per traffic path of reference 03 (and the refusals around them)."""

from __future__ import annotations

import ipaddress
import random

import pytest
from ztunnel_helpers import (
    apply,
    host,
    pod,
    service,
    spiffe,
    waypoint_by_host,
    waypoint_by_ip,
    workload,
)

from ambient_fast.hbone.headers import Baggage
from ambient_fast.state import StateStore
from ambient_fast.xds.proto import workload_pb2 as wpb
from ambient_fast.ztunnel.routing import OutboundRoute, RouteError, RouteKind, route_outbound

ECHO = host("echo")
WAYPOINT = host("waypoint")
ECHO_VIP = "10.96.0.10"
WAYPOINT_VIP = "10.96.0.20"
CLIENT_IP = "10.0.1.1"
TRACE = "00-0123456789abcdef0123456789abcdef-0123456789abcdef-00"


class FixedRandom:
    """A random source that returns the values it was given, in order."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


@pytest.fixture
def store() -> StateStore:
    """client -> echo (two captured pods behind a VIP); a waypoint service with one pod."""
    store = StateStore()
    apply(
        store,
        pod("client", CLIENT_IP, zone="zone-a"),
        service("echo", ECHO_VIP, {80: 8080}),
        pod("echo-a", "10.0.2.1", services={ECHO: {80: 8080}}, zone="zone-a"),
        pod("echo-b", "10.0.2.2", services={ECHO: {80: 8080}}, zone="zone-b"),
        service("waypoint", WAYPOINT_VIP, {15008: 15008}),
        pod("waypoint", "10.0.3.1", services={WAYPOINT: {15008: 15008}}),
    )
    return store


def route(
    store: StateStore,
    dst: str,
    port: int,
    *,
    source: str = "client",
    rng: FixedRandom | random.Random | None = None,
    proxy_ips: tuple[str, ...] = (),
) -> OutboundRoute:
    src = workload(store, "apps", source)
    return route_outbound(
        store,
        src,
        (dst, port),
        "",
        client=(str(src.ips[0]), 40000),
        rng=rng or FixedRandom(0.0),
        proxy_ips=tuple(ipaddress.ip_address(ip) for ip in proxy_ips),
        new_traceparent=lambda: TRACE,
    )


def test_a_service_with_a_waypoint_goes_to_the_waypoint_with_the_vip_as_authority(
    store: StateStore,
) -> None:
    apply(store, service("echo", ECHO_VIP, {80: 8080}, waypoint=waypoint_by_host("waypoint")))
    r = route(store, ECHO_VIP, 80)
    assert r.kind is RouteKind.WAYPOINT
    assert str(r.dial) == "10.0.3.1:15008"
    assert r.authority == f"{ECHO_VIP}:80"  # untranslated: the waypoint routes it
    assert r.expected_identities == (spiffe("apps", "waypoint"),)
    assert r.destination_workload is not None and r.destination_workload.name == "waypoint"
    assert r.destination_service is not None and r.destination_service.hostname == ECHO


def test_a_waypoint_named_by_address_is_dialled_at_that_address(store: StateStore) -> None:
    apply(store, service("echo", ECHO_VIP, {80: 8080}, waypoint=waypoint_by_ip("10.0.3.1")))
    r = route(store, ECHO_VIP, 80)
    assert (r.kind, str(r.dial), r.authority) == (
        RouteKind.WAYPOINT,
        "10.0.3.1:15008",
        "10.96.0.10:80",
    )


def test_a_waypoint_that_cannot_be_found_refuses_instead_of_skipping_it(
    store: StateStore,
) -> None:
    apply(store, service("echo", ECHO_VIP, {80: 8080}, waypoint=waypoint_by_host("missing")))
    r = route(store, ECHO_VIP, 80)
    assert (r.kind, r.error, r.dial) == (RouteKind.ERROR, RouteError.UNKNOWN_WAYPOINT, None)
    assert "missing.apps.svc.cluster.local" in r.reason


def test_a_service_without_waypoint_goes_to_a_captured_endpoint_over_hbone(
    store: StateStore,
) -> None:
    apply(
        store,
        service(
            "echo",
            ECHO_VIP,
            {80: 8080},
            subject_alt_names=(spiffe("apps", "echo-legacy"), "dns.name"),
        ),
    )
    r = route(store, ECHO_VIP, 80, rng=FixedRandom(0.0))
    assert r.kind is RouteKind.HBONE
    assert str(r.dial) == "10.0.2.1:15008"
    assert r.authority == "10.0.2.1:8080"  # pod IP and target port
    # The endpoint's identity, then the service's SPIFFE subjectAltNames (others ignored).
    assert r.expected_identities == (spiffe("apps", "echo-a"), spiffe("apps", "echo-legacy"))
    assert r.destination_workload is not None and r.destination_workload.name == "echo-a"
    assert {e.workload.name for e in r.candidates} == {"echo-a", "echo-b"}


def test_an_endpoint_that_is_not_captured_gets_plain_tcp_to_its_target_port(
    store: StateStore,
) -> None:
    apply(
        store,
        pod("echo-a", "10.0.2.1", services={ECHO: {80: 8080}}, captured=False),
        pod("echo-b", "10.0.2.2", services={ECHO: {80: 8080}}, healthy=False),
    )
    r = route(store, ECHO_VIP, 80)
    assert (r.kind, str(r.dial), r.authority, r.headers) == (
        RouteKind.DIRECT_TCP,
        "10.0.2.1:8080",
        None,
        (),
    )
    assert r.expected_identities == ()


def test_endpoints_are_weighted_by_capacity(store: StateStore) -> None:
    apply(
        store,
        pod("echo-a", "10.0.2.1", services={ECHO: {80: 8080}}, capacity=1),
        pod("echo-b", "10.0.2.2", services={ECHO: {80: 8080}}, capacity=3),
    )
    # Candidates keep the store's order (echo-a, then echo-b): echo-a owns [0, 1/4).
    picks = [route(store, ECHO_VIP, 80, rng=FixedRandom(x)) for x in (0.0, 0.24, 0.26, 0.99)]
    assert [e.workload.name for e in picks[0].candidates] == ["echo-a", "echo-b"]
    names = [r.destination_workload.name for r in picks if r.destination_workload]
    assert names == ["echo-a", "echo-a", "echo-b", "echo-b"]
    seeded = random.Random(7)
    counts = {"echo-a": 0, "echo-b": 0}
    for _ in range(4000):
        w = route(store, ECHO_VIP, 80, rng=seeded).destination_workload
        assert w is not None
        counts[w.name] += 1
    assert 2.6 < counts["echo-b"] / counts["echo-a"] < 3.4


def test_an_endpoint_with_zero_capacity_is_never_picked(store: StateStore) -> None:
    apply(store, pod("echo-a", "10.0.2.1", services={ECHO: {80: 8080}}, capacity=0))
    for x in (0.0, 0.5, 0.999):
        r = route(store, ECHO_VIP, 80, rng=FixedRandom(x))
        assert r.destination_workload is not None and r.destination_workload.name == "echo-b"


def test_unhealthy_endpoints_are_skipped(store: StateStore) -> None:
    apply(store, pod("echo-a", "10.0.2.1", services={ECHO: {80: 8080}}, healthy=False))
    for x in (0.0, 0.999):
        r = route(store, ECHO_VIP, 80, rng=FixedRandom(x))
        assert r.destination_workload is not None and r.destination_workload.name == "echo-b"
        assert [e.workload.name for e in r.candidates] == ["echo-b"]


def test_a_known_service_without_healthy_endpoints_is_no_healthy_upstream(
    store: StateStore,
) -> None:
    apply(
        store,
        pod("echo-a", "10.0.2.1", services={ECHO: {80: 8080}}, healthy=False),
        pod("echo-b", "10.0.2.2", services={ECHO: {80: 8080}}, healthy=False),
    )
    r = route(store, ECHO_VIP, 80)
    assert (r.kind, r.error) == (RouteKind.ERROR, RouteError.NO_HEALTHY_UPSTREAM)
    assert r.reason.startswith("no healthy upstream")
    assert r.destination_service is not None and r.destination_service.hostname == ECHO


def test_a_port_the_service_does_not_have_is_no_healthy_upstream(store: StateStore) -> None:
    r = route(store, ECHO_VIP, 81)
    assert (r.kind, r.error) == (RouteKind.ERROR, RouteError.NO_HEALTHY_UPSTREAM)
    assert "no port 81" in r.reason


def _locality(mode: wpb.LoadBalancing.Mode.ValueType) -> wpb.LoadBalancing:
    return wpb.LoadBalancing(
        routing_preference=[wpb.LoadBalancing.REGION, wpb.LoadBalancing.ZONE], mode=mode
    )


def test_failover_prefers_the_same_zone_and_falls_back_to_the_region(store: StateStore) -> None:
    apply(
        store,
        service("echo", ECHO_VIP, {80: 8080}, load_balancing=_locality(wpb.LoadBalancing.FAILOVER)),
    )
    for x in (0.0, 0.999):  # the client is in zone-a: echo-a only
        r = route(store, ECHO_VIP, 80, rng=FixedRandom(x))
        assert [e.workload.name for e in r.candidates] == ["echo-a"]
    apply(store, pod("echo-a", "10.0.2.1", services={ECHO: {80: 8080}}, healthy=False))
    r = route(store, ECHO_VIP, 80)
    assert r.destination_workload is not None and r.destination_workload.name == "echo-b"


def test_strict_locality_refuses_rather_than_leave_the_zone(store: StateStore) -> None:
    apply(
        store,
        service("echo", ECHO_VIP, {80: 8080}, load_balancing=_locality(wpb.LoadBalancing.STRICT)),
        pod("echo-a", "10.0.2.1", services={ECHO: {80: 8080}}, healthy=False),
    )
    r = route(store, ECHO_VIP, 80)
    assert (r.kind, r.error) == (RouteKind.ERROR, RouteError.NO_HEALTHY_UPSTREAM)


def test_without_a_mode_locality_preferences_are_ignored(store: StateStore) -> None:
    apply(
        store,
        service(
            "echo",
            ECHO_VIP,
            {80: 8080},
            load_balancing=_locality(wpb.LoadBalancing.UNSPECIFIED_MODE),
        ),
    )
    r = route(store, ECHO_VIP, 80)
    assert {e.workload.name for e in r.candidates} == {"echo-a", "echo-b"}


def test_a_passthrough_service_goes_to_the_original_destination(store: StateStore) -> None:
    lb = wpb.LoadBalancing(mode=wpb.LoadBalancing.PASSTHROUGH)
    apply(store, service("echo", ECHO_VIP, {80: 8080}, load_balancing=lb))
    r = route(store, ECHO_VIP, 80)
    assert (r.kind, str(r.dial)) == (RouteKind.PASSTHROUGH, "10.96.0.10:80")


def test_a_pod_with_a_waypoint_is_reached_through_it_with_the_pod_address_as_authority(
    store: StateStore,
) -> None:
    apply(
        store,
        pod(
            "echo-a", "10.0.2.1", services={ECHO: {80: 8080}}, waypoint=waypoint_by_host("waypoint")
        ),
    )
    r = route(store, "10.0.2.1", 8080)
    assert (r.kind, str(r.dial), r.authority) == (
        RouteKind.WAYPOINT,
        "10.0.3.1:15008",
        "10.0.2.1:8080",
    )
    assert r.expected_identities == (spiffe("apps", "waypoint"),)
    assert r.destination_service is None


def test_traffic_from_the_waypoint_itself_goes_straight_to_the_pod(store: StateStore) -> None:
    apply(
        store,
        pod(
            "echo-a", "10.0.2.1", services={ECHO: {80: 8080}}, waypoint=waypoint_by_host("waypoint")
        ),
    )
    r = route(store, "10.0.2.1", 8080, source="waypoint")
    assert (r.kind, str(r.dial), r.authority) == (
        RouteKind.HBONE,
        "10.0.2.1:15008",
        "10.0.2.1:8080",
    )
    assert r.expected_identities == (spiffe("apps", "echo-a"),)


def test_traffic_from_the_waypoint_to_the_vip_it_serves_goes_to_an_endpoint(
    store: StateStore,
) -> None:
    # Sending it back to the waypoint would loop forever.
    apply(store, service("echo", ECHO_VIP, {80: 8080}, waypoint=waypoint_by_host("waypoint")))
    r = route(store, ECHO_VIP, 80, source="waypoint")
    assert (r.kind, str(r.dial), r.authority) == (
        RouteKind.HBONE,
        "10.0.2.1:15008",
        "10.0.2.1:8080",
    )


def test_a_pod_waypoint_is_not_used_for_traffic_addressed_to_its_service(
    store: StateStore,
) -> None:
    # Addressing decides the traffic type: a VIP is service traffic even once it is a pod.
    apply(
        store,
        pod(
            "echo-a", "10.0.2.1", services={ECHO: {80: 8080}}, waypoint=waypoint_by_host("waypoint")
        ),
        pod("echo-b", "10.0.2.2", services={ECHO: {80: 8080}}, healthy=False),
    )
    r = route(store, ECHO_VIP, 80)
    assert (r.kind, str(r.dial)) == (RouteKind.HBONE, "10.0.2.1:15008")


def test_a_captured_pod_is_reached_over_hbone_and_an_uncaptured_one_over_tcp(
    store: StateStore,
) -> None:
    r = route(store, "10.0.2.2", 9090)
    assert (r.kind, str(r.dial), r.authority) == (
        RouteKind.HBONE,
        "10.0.2.2:15008",
        "10.0.2.2:9090",
    )
    apply(store, pod("legacy", "10.0.4.1", captured=False))
    r = route(store, "10.0.4.1", 9090)
    assert (r.kind, str(r.dial), r.authority) == (RouteKind.DIRECT_TCP, "10.0.4.1:9090", None)
    assert r.destination_workload is not None and r.destination_workload.name == "legacy"


def test_an_unknown_destination_is_passed_through_unchanged(store: StateStore) -> None:
    r = route(store, "93.184.216.34", 443)
    assert (r.kind, str(r.dial), r.destination_workload) == (
        RouteKind.PASSTHROUGH,
        "93.184.216.34:443",
        None,
    )
    assert r.headers == ()


@pytest.mark.parametrize(
    "dst", ["127.0.0.1:15001", "127.0.0.1:15006", "[::1]:15008", "10.0.0.9:15008"]
)
def test_the_proxys_own_listeners_are_refused_as_a_loop(store: StateStore, dst: str) -> None:
    ip, _, port = dst.rpartition(":")
    r = route(store, ip.strip("[]"), int(port), proxy_ips=("10.0.0.9",))
    assert (r.kind, r.error, r.dial) == (RouteKind.ERROR, RouteError.LOOP, None)


def test_other_loopback_ports_and_other_pods_hbone_port_are_no_loop(store: StateStore) -> None:
    assert route(store, "127.0.0.1", 8080).kind is RouteKind.PASSTHROUGH
    assert route(store, "10.0.0.9", 8080, proxy_ips=("10.0.0.9",)).kind is RouteKind.PASSTHROUGH


def test_hbone_routes_carry_baggage_forwarded_and_traceparent(store: StateStore) -> None:
    headers = dict(route(store, ECHO_VIP, 80).headers)
    assert headers["forwarded"] == f'for="{CLIENT_IP}:40000";host={ECHO}'
    assert headers["traceparent"] == TRACE
    assert Baggage.decode(headers["baggage"]) == Baggage(
        cluster="Kubernetes",
        namespace="apps",
        workload_kind="deployment",
        workload_name="client",
        service_name="client",
        service_version="v1",
        region="region-1",
        zone="zone-a",
    )
    # Pod-addressed: no service, so no host in forwarded.
    pod_headers = dict(route(store, "10.0.2.2", 8080).headers)
    assert pod_headers["forwarded"] == f'for="{CLIENT_IP}:40000"'


def test_an_ipv4_mapped_destination_is_looked_up_as_ipv4(store: StateStore) -> None:
    r = route(store, "::ffff:10.0.2.2", 8080)
    assert (r.kind, r.authority) == (RouteKind.HBONE, "10.0.2.2:8080")

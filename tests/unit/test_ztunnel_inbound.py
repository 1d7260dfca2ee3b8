"""Inbound decisions: one test per CONNECT status (reference 01), plaintext, and re-checks."""

from __future__ import annotations

import pytest
from ztunnel_helpers import (
    apply,
    host,
    pod,
    policy,
    presence,
    service,
    set_policies,
    spiffe,
    uid,
    waypoint_by_host,
)

from ambient_fast.state import StateChange, StateStore
from ambient_fast.xds.proto import authorization_pb2 as apb
from ambient_fast.ztunnel.inbound_decision import (
    Accepted,
    Rejected,
    decide_inbound,
    decide_plaintext,
    needs_recheck,
    recheck,
)

ECHO = host("echo")
WAYPOINT = host("waypoint")
ECHO_IP = "10.0.2.1"
CLIENT_IP = "10.0.1.1"
CLIENT = spiffe("apps", "client")
LOCAL = frozenset({uid("apps", "echo-a"), uid("apps", "waypoint")})


@pytest.fixture
def store() -> StateStore:
    store = StateStore()
    apply(
        store,
        pod("client", CLIENT_IP),
        service("echo", "10.96.0.10", {80: 8080, 90: 0}),
        pod("echo-a", ECHO_IP, services={ECHO: {80: 8080, 90: 9090}}),
        pod("echo-b", "10.0.2.2", services={ECHO: {80: 8080}}),  # on another node
        service("waypoint", "10.96.0.20", {15008: 15008}),
        pod("waypoint", "10.0.3.1", services={WAYPOINT: {15008: 15008}}),
    )
    return store


def connect(
    store: StateStore,
    authority: str,
    dst_ip: str = ECHO_IP,
    identity: str | None = CLIENT,
) -> Accepted | Rejected:
    return decide_inbound(store, LOCAL, authority, dst_ip, identity, CLIENT_IP)


def accepted(decision: Accepted | Rejected) -> Accepted:
    assert isinstance(decision, Accepted), decision
    return decision


def rejected(decision: Accepted | Rejected, status: int) -> Rejected:
    assert isinstance(decision, Rejected), decision
    assert decision.status == status, decision
    return decision


def test_a_connect_to_the_local_workload_is_accepted_with_its_port(store: StateStore) -> None:
    a = accepted(connect(store, f"{ECHO_IP}:8080"))
    assert str(a.target) == "10.0.2.1:8080"
    assert a.workload.name == "echo-a"
    assert (str(a.request.source_ip), a.request.source_identity) == (CLIENT_IP, CLIENT)
    assert a.proxy_protocol_target is None


def test_a_service_hostname_authority_maps_the_service_port_to_the_target_port(
    store: StateStore,
) -> None:
    a = accepted(connect(store, f"{ECHO}:90"))  # a named port: the pod's own mapping
    assert str(a.target) == "10.0.2.1:9090"
    assert a.service is not None and a.service.hostname == ECHO


@pytest.mark.parametrize("authority", ["10.0.2.1", "10.0.2.1:0", "fd00::1:80", "bad_host:80", ""])
def test_a_malformed_authority_is_400(store: StateStore, authority: str) -> None:
    rejected(connect(store, authority), 400)


def test_an_authority_ip_other_than_the_dialled_one_is_400_ip_mismatch(
    store: StateStore,
) -> None:
    r = rejected(connect(store, "10.0.2.2:8080"), 400)
    assert r.reason.startswith("ip mismatch")


def test_a_waypoint_may_receive_traffic_for_the_pods_it_serves(store: StateStore) -> None:
    # The waypoint "sandwich": the authority is the pod, the connection is to the waypoint.
    rejected(connect(store, f"{ECHO_IP}:8080", dst_ip="10.0.3.1"), 400)
    apply(
        store,
        pod("echo-a", ECHO_IP, services={ECHO: {80: 8080}}, waypoint=waypoint_by_host("waypoint")),
    )
    a = accepted(connect(store, f"{ECHO_IP}:8080", dst_ip="10.0.3.1"))
    assert str(a.target) == "10.0.3.1:8080" and a.workload.name == "waypoint"


def test_an_unknown_or_remote_workload_is_503(store: StateStore) -> None:
    r = rejected(connect(store, "10.0.9.9:8080", dst_ip="10.0.9.9"), 503)
    assert "unknown local workload" in r.reason
    rejected(connect(store, "10.0.2.2:8080", dst_ip="10.0.2.2"), 503)  # not one of ours


def test_a_hostname_without_service_or_port_is_503(store: StateStore) -> None:
    assert "no service" in rejected(connect(store, "nope.apps.svc.cluster.local:80"), 503).reason
    assert "no port 81" in rejected(connect(store, f"{ECHO}:81"), 503).reason


@pytest.mark.parametrize("port", [15001, 15006, 15008])
def test_a_connect_to_the_proxys_own_ports_is_503(store: StateStore, port: int) -> None:
    assert "loop" in rejected(connect(store, f"{ECHO_IP}:{port}"), 503).reason


def test_a_deny_policy_is_401_naming_the_policy(store: StateStore) -> None:
    set_policies(
        store,
        policy(
            "no-client", apb.Match(principals=[apb.StringMatch(exact=CLIENT[9:])]), action=apb.DENY
        ),
    )
    r = rejected(connect(store, f"{ECHO_IP}:8080"), 401)
    assert r.reason == "denied by DENY policy apps/no-client (rule 0)"
    assert r.decision is not None and r.decision.policy == "apps/no-client"
    accepted(connect(store, f"{ECHO_IP}:8080", identity=spiffe("apps", "other")))


def test_no_matching_allow_policy_is_401_naming_the_allow_policies(store: StateStore) -> None:
    set_policies(store, policy("only-8081", apb.Match(destination_ports=[8081])))
    r = rejected(connect(store, f"{ECHO_IP}:8080"), 401)
    assert r.reason == "no ALLOW policy matched (ALLOW policies: apps/only-8081)"
    accepted(connect(store, f"{ECHO_IP}:8081"))


def test_plaintext_is_accepted_by_default_and_checked_without_identity(
    store: StateStore,
) -> None:
    a = accepted(decide_plaintext(store, LOCAL, (ECHO_IP, 8080), CLIENT_IP))
    assert (str(a.target), a.request.source_identity) == ("10.0.2.1:8080", None)
    rejected(decide_plaintext(store, LOCAL, ("10.0.2.2", 8080), CLIENT_IP), 503)
    rejected(decide_plaintext(store, LOCAL, (ECHO_IP, 15006), CLIENT_IP), 503)


def test_strict_mtls_denies_plaintext_but_not_hbone(store: StateStore) -> None:
    # PeerAuthentication STRICT = a DENY with notPrincipals ["*"] (reference 03).
    set_policies(store, policy("strict", apb.Match(not_principals=[presence()]), action=apb.DENY))
    r = rejected(decide_plaintext(store, LOCAL, (ECHO_IP, 8080), CLIENT_IP), 401)
    assert "apps/strict" in r.reason
    accepted(connect(store, f"{ECHO_IP}:8080"))


def test_a_policy_change_flips_the_recheck_of_a_live_connection(store: StateStore) -> None:
    a = accepted(connect(store, f"{ECHO_IP}:8080"))
    changes: list[StateChange] = []
    store.subscribe(changes.append)
    set_policies(
        store,
        policy(
            "deny-client",
            apb.Match(principals=[apb.StringMatch(exact=CLIENT[9:])]),
            action=apb.DENY,
        ),
    )
    assert needs_recheck(changes[-1], a)
    r = rejected(recheck(store, a), 401)
    assert "apps/deny-client" in r.reason
    set_policies(store, removed=("apps/deny-client",))
    assert isinstance(recheck(store, a), Accepted)


def test_a_workload_gaining_a_selector_policy_is_rechecked(store: StateStore) -> None:
    deny_all = policy(
        "deny-all",
        apb.Match(not_destination_ports=[1]),
        action=apb.DENY,
        scope=apb.WORKLOAD_SELECTOR,
    )
    set_policies(store, deny_all)
    a = accepted(connect(store, f"{ECHO_IP}:8080"))  # selector policies apply to no one yet
    changes: list[StateChange] = []
    store.subscribe(changes.append)
    apply(store, pod("echo-a", ECHO_IP, services={ECHO: {80: 8080}}, policies=("apps/deny-all",)))
    assert needs_recheck(changes[-1], a)
    assert not needs_recheck(StateChange(workloads=frozenset({uid("apps", "echo-b")})), a)
    rejected(recheck(store, a), 401)


def test_a_proxy_application_tunnel_gets_its_port_and_the_original_target(
    store: StateStore,
) -> None:
    apply(store, pod("echo-a", ECHO_IP, services={ECHO: {80: 8080}}, proxy_tunnel_port=15088))
    a = accepted(connect(store, f"{ECHO_IP}:8080"))
    assert (str(a.target), str(a.proxy_protocol_target)) == ("10.0.2.1:15088", "10.0.2.1:8080")
    # With its own tunnel the workload decides what to do with other targets: no ip mismatch.
    b = accepted(connect(store, "10.0.2.2:8080"))
    assert str(b.proxy_protocol_target) == "10.0.2.2:8080"
    c = accepted(connect(store, f"{ECHO}:80"))
    assert str(c.proxy_protocol_target) == "10.96.0.10:80"  # PROXY v2 carries the VIP

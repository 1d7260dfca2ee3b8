"""The state store's indexes and lookups: what the proxy asks per connection."""

from __future__ import annotations

import ipaddress

import pytest
from google.protobuf.wrappers_pb2 import UInt32Value

from ambient_fast.policy import Request
from ambient_fast.state import StateChange, StateStore
from ambient_fast.xds.proto import authorization_pb2 as apb
from ambient_fast.xds.proto import workload_pb2 as wpb
from ambient_fast.xds.resources import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL

SVC = "apps/echo.apps.svc.cluster.local"


def packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


def workload(
    uid: str,
    *ips: str,
    network: str = "",
    services: dict[str, dict[int, int]] | None = None,
    healthy: bool = True,
    hbone: bool = False,
    host_network: bool = False,
    policies: tuple[str, ...] = (),
    namespace: str = "apps",
    revision: str = "v1",
) -> wpb.Address:
    return wpb.Address(
        workload=wpb.Workload(
            uid=uid,
            name=uid.rpartition("/")[2],
            namespace=namespace,
            addresses=[packed(ip) for ip in ips],
            network=network,
            tunnel_protocol=wpb.HBONE if hbone else wpb.NONE,
            services={
                key: wpb.PortList(
                    ports=[wpb.Port(service_port=p, target_port=t) for p, t in ports.items()]
                )
                for key, ports in (services or {}).items()
            },
            status=wpb.HEALTHY if healthy else wpb.UNHEALTHY,
            network_mode=wpb.HOST_NETWORK if host_network else wpb.STANDARD,
            authorization_policies=policies,
            canonical_revision=revision,
            capacity=UInt32Value(value=2),
        )
    )


def service(
    hostname: str = "echo.apps.svc.cluster.local",
    namespace: str = "apps",
    vips: tuple[str, ...] = ("/10.96.0.10",),
    ports: dict[int, int] | None = None,
    allow_unhealthy: bool = False,
) -> wpb.Address:
    addresses = []
    for vip in vips:
        network, _, ip = vip.partition("/")
        addresses.append(wpb.NetworkAddress(network=network, address=packed(ip)))
    lb = wpb.LoadBalancing(health_policy=wpb.LoadBalancing.ALLOW_ALL) if allow_unhealthy else None
    return wpb.Address(
        service=wpb.Service(
            name=hostname.partition(".")[0],
            namespace=namespace,
            hostname=hostname,
            addresses=addresses,
            ports=[
                wpb.Port(service_port=p, target_port=t) for p, t in (ports or {80: 8080}).items()
            ],
            load_balancing=lb,
        )
    )


@pytest.fixture
def store() -> StateStore:
    return StateStore()


def put(store: StateStore, **addresses: wpb.Address) -> StateChange:
    """Applies addresses named by keyword ('__' stands for '/' in names)."""
    applied = store.apply(
        ADDRESS_TYPE_URL, {name.replace("__", "/"): a for name, a in addresses.items()}
    )
    assert not applied.rejected, applied.rejected
    return applied.change


def add(store: StateStore, name: str, address: wpb.Address) -> StateChange:
    applied = store.apply(ADDRESS_TYPE_URL, {name: address})
    assert not applied.rejected, applied.rejected
    return applied.change


def test_workloads_by_uid_and_by_network_and_ip(store: StateStore) -> None:
    add(store, "w1", workload("w1", "10.1.0.1", "fd00::1"))
    add(store, "w2", workload("w2", "10.1.0.1", network="remote"))
    w1 = store.workload_by_uid("w1")
    assert w1 is not None and w1.capacity == 2 and w1.identity.service_account == "default"
    assert store.workload_by_ip("", "10.1.0.1") is w1
    assert store.workload_by_ip("", ipaddress.ip_address("fd00::1")) is w1
    w2 = store.workload_by_ip("remote", "10.1.0.1")
    assert w2 is not None and w2.uid == "w2"  # same IP, another network
    assert store.workload_by_ip("", "10.1.0.9") is None


def test_an_update_moves_the_ip_index_and_a_removal_clears_it(store: StateStore) -> None:
    add(store, "w1", workload("w1", "10.1.0.1"))
    add(store, "w1", workload("w1", "10.1.0.2"))
    assert store.workload_by_ip("", "10.1.0.1") is None
    assert store.workload_by_ip("", "10.1.0.2") is not None
    change = store.apply(ADDRESS_TYPE_URL, {}, ["w1"]).change
    assert change.workloads == {"w1"}
    assert store.workload_by_ip("", "10.1.0.2") is None
    assert store.workloads() == []


def test_host_network_workloads_are_never_found_by_ip(store: StateStore) -> None:
    add(store, "w1", workload("w1", "192.168.0.5", host_network=True))
    assert store.workload_by_ip("", "192.168.0.5") is None
    assert store.workload_by_uid("w1") is not None


def test_two_workloads_on_one_ip_prefer_a_captured_pod(store: StateStore) -> None:
    # ztunnel's tie-break: Pod over other kinds, then HBONE over plain.
    add(
        store,
        "c//WorkloadEntry/apps/vm",
        workload("c//WorkloadEntry/apps/vm", "10.1.0.1", hbone=True),
    )
    add(store, "c//Pod/apps/old", workload("c//Pod/apps/old", "10.1.0.1"))
    add(store, "c//Pod/apps/new", workload("c//Pod/apps/new", "10.1.0.1", hbone=True))
    found = store.workload_by_ip("", "10.1.0.1")
    assert found is not None and found.uid == "c//Pod/apps/new"
    store.apply(ADDRESS_TYPE_URL, {}, ["c//Pod/apps/new"])
    found = store.workload_by_ip("", "10.1.0.1")
    assert found is not None and found.uid == "c//Pod/apps/old"


def test_services_by_key_vip_and_hostname(store: StateStore) -> None:
    add(store, SVC, service(vips=("/10.96.0.10", "remote/10.96.0.10")))
    add(store, "other/echo.apps.svc.cluster.local", service(namespace="other", vips=()))
    echo = store.service_by_key(SVC)
    assert echo is not None and echo.ports[80].target_port == 8080
    assert store.service_by_vip("", "10.96.0.10") is echo
    assert store.service_by_vip("remote", "10.96.0.10") is echo
    assert store.service_by_vip("", "10.96.0.11") is None
    # One hostname in two namespaces (ServiceEntry): by namespace, else the first by name.
    assert store.service_by_hostname("echo.apps.svc.cluster.local") is echo
    other = store.service_by_hostname("echo.apps.svc.cluster.local", namespace="other")
    assert other is not None and other.namespace == "other"
    assert len(store.services_by_hostname("echo.apps.svc.cluster.local")) == 2
    store.apply(ADDRESS_TYPE_URL, {}, [SVC])
    assert store.service_by_vip("", "10.96.0.10") is None
    assert store.service_by_hostname("echo.apps.svc.cluster.local") is not None


def test_a_vip_claimed_twice_stays_with_the_first_service(store: StateStore) -> None:
    add(store, SVC, service())
    add(store, "apps/dup.apps", service(hostname="dup.apps"))
    add(store, SVC, service(ports={80: 9090}))  # an update keeps its claim
    found = store.service_by_vip("", "10.96.0.10")
    assert found is not None and found.key == SVC


def test_endpoints_healthy_first_with_target_ports(store: StateStore) -> None:
    echo_ports = {SVC: {80: 8080}}
    add(store, "w-healthy", workload("w-healthy", "10.1.0.1", services=echo_ports))
    add(store, "w-sick", workload("w-sick", "10.1.0.2", services=echo_ports, healthy=False))
    # A named target port: the service says 0, the workload resolves it.
    add(store, "w-named", workload("w-named", "10.1.0.3", services={SVC: {80: 9999}}))
    add(store, "w-other", workload("w-other", "10.1.0.4", services={"apps/x.apps": {80: 80}}))
    add(store, SVC, service(ports={80: 0, 443: 8443}))
    echo = store.service_by_key(SVC)
    assert echo is not None
    found = [(e.workload.uid, e.target_port) for e in store.endpoints(echo, 80)]
    assert found == [("w-healthy", 8080), ("w-named", 9999)]  # unhealthy left out
    # 443 is not in the workloads' maps: the service's target port applies.
    assert {e.target_port for e in store.endpoints(echo, 443)} == {8443}
    assert store.endpoints(echo, 8080) == ()

    add(store, SVC, service(ports={80: 0}, allow_unhealthy=True))
    echo = store.service_by_key(SVC)
    assert echo is not None
    found = [(e.workload.uid, e.target_port) for e in store.endpoints(echo, 80)]
    assert found == [("w-healthy", 8080), ("w-named", 9999), ("w-sick", 8080)]


def test_endpoints_follow_workload_changes(store: StateStore) -> None:
    add(store, SVC, service())
    echo = store.service_by_key(SVC)
    assert echo is not None
    assert store.endpoints(echo, 80) == ()
    # A workload arriving before or after its service both count.
    add(store, "w1", workload("w1", "10.1.0.1", services={SVC: {80: 8080}}))
    assert [e.workload.uid for e in store.endpoints(echo, 80)] == ["w1"]
    add(store, "w1", workload("w1", "10.1.0.1", healthy=False, services={SVC: {80: 8080}}))
    assert store.endpoints(echo, 80) == ()
    add(store, "w1", workload("w1", "10.1.0.1", services={SVC: {80: 8080}}))
    add(store, "w1", workload("w1", "10.1.0.1"))  # left the service
    assert store.endpoints(echo, 80) == ()
    add(store, "w1", workload("w1", "10.1.0.1", services={SVC: {80: 8080}}))
    store.apply(ADDRESS_TYPE_URL, {}, ["w1"])
    assert store.endpoints(echo, 80) == ()


def policy(
    name: str,
    namespace: str,
    scope: apb.Scope.ValueType,
    action: apb.Action.ValueType = apb.DENY,
    port: int = 9999,
) -> apb.Authorization:
    match = apb.Match(destination_ports=[port])
    rule = apb.Rule(clauses=[apb.Clause(matches=[match])])
    return apb.Authorization(
        name=name, namespace=namespace, scope=scope, action=action, rules=[rule]
    )


def test_policies_for_a_workload_and_their_decision(store: StateStore) -> None:
    applied = store.apply(
        AUTHORIZATION_TYPE_URL,
        {
            "istio-system/global": policy("global", "istio-system", apb.GLOBAL, port=1),
            "apps/ns-wide": policy("ns-wide", "apps", apb.NAMESPACE, port=2),
            "other/ns-wide": policy("ns-wide", "other", apb.NAMESPACE, port=3),
            "apps/selected": policy("selected", "apps", apb.WORKLOAD_SELECTOR, port=4),
            "apps/unselected": policy("unselected", "apps", apb.WORKLOAD_SELECTOR, port=5),
        },
    )
    assert not applied.rejected
    assert applied.change.policies == {
        "istio-system/global",
        "apps/ns-wide",
        "other/ns-wide",
        "apps/selected",
        "apps/unselected",
    }
    add(store, "w1", workload("w1", "10.1.0.1", policies=("apps/selected",)))
    w1 = store.workload_by_uid("w1")
    assert w1 is not None
    keys = [p.policy.key for p in store.policies_for(w1)]
    assert keys == ["istio-system/global", "apps/ns-wide", "apps/selected"]

    def decide(port: int) -> bool:
        request = Request(ipaddress.ip_address("10.2.0.1"), w1.ips[0], port)
        return store.authorize(w1, request).allowed

    assert [decide(p) for p in (1, 2, 3, 4, 5)] == [False, False, True, False, True]
    # The table is rebuilt on change: removing a policy opens its port.
    store.apply(AUTHORIZATION_TYPE_URL, {}, ["apps/ns-wide"])
    assert decide(2)


def test_changes_are_reported_once_and_only_when_effective(store: StateStore) -> None:
    heard: list[StateChange] = []
    unsubscribe = store.subscribe(heard.append)
    add(store, "w1", workload("w1", "10.1.0.1"))
    add(store, SVC, service())
    add(store, "w1", workload("w1", "10.1.0.1"))  # identical: no change
    store.apply(ADDRESS_TYPE_URL, {}, ["gone-already"])
    store.apply(AUTHORIZATION_TYPE_URL, {"apps/p": policy("p", "apps", apb.NAMESPACE)})
    store.apply(AUTHORIZATION_TYPE_URL, {"apps/p": policy("p", "apps", apb.NAMESPACE)})
    assert heard == [
        StateChange(workloads=frozenset({"w1"})),
        StateChange(services=frozenset({SVC})),
        StateChange(policies=frozenset({"apps/p"})),
    ]
    unsubscribe()
    add(store, "w1", workload("w1", "10.1.0.1", revision="v2"))
    assert len(heard) == 3


def test_a_failing_subscriber_does_not_stop_the_others(store: StateStore) -> None:
    heard: list[StateChange] = []

    def broken(change: StateChange) -> None:
        raise RuntimeError("listener bug")

    store.subscribe(broken)
    store.subscribe(heard.append)
    add(store, "w1", workload("w1", "10.1.0.1"))
    assert len(heard) == 1


def test_invalid_resources_are_refused_alone(store: StateStore) -> None:
    applied = store.apply(
        ADDRESS_TYPE_URL,
        {
            "w1": workload("w1", "10.1.0.1"),
            "wrong-name": workload("w2", "10.1.0.2"),
            "apps/x": wpb.Address(),
            "apps/p": apb.Authorization(name="p", namespace="apps"),
        },
    )
    assert set(applied.rejected) == {"wrong-name", "apps/x", "apps/p"}
    assert "resource name 'wrong-name' is not its uid" in applied.rejected["wrong-name"]
    assert applied.rejected["apps/x"] == "Address with neither workload nor service"
    assert "expected istio.workload.Address" in applied.rejected["apps/p"]
    assert applied.change.workloads == {"w1"}
    refused = store.apply(AUTHORIZATION_TYPE_URL, {"apps/q": policy("p", "apps", apb.GLOBAL)})
    assert "resource name 'apps/q' differs" in refused.rejected["apps/q"]
    assert not refused.change

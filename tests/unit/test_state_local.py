"""Local mode: ztunnel's YAML file into the same store, errors naming file and field, and a
watcher that keeps the last good configuration on a broken edit."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from ambient_fast.policy import Request
from ambient_fast.state import StateStore
from ambient_fast.state.local import (
    LocalConfigError,
    LocalConfigWatcher,
    LocalSource,
    load_local_config,
    parse_local_config,
)
from ambient_fast.state.model import GatewayAddress, NamespacedHostname, TunnelProtocol

LOCALHOST = Path(__file__).parent.parent / "fixtures" / "ztunnel" / "localhost.yaml"
LOCAL_UID = "cluster1//v1/Pod/default/local"


def loaded(text: str) -> StateStore:
    store = StateStore()
    LocalSource(store).apply(parse_local_config(text, "test.yaml"))
    return store


def test_ztunnels_example_loads_into_the_store() -> None:
    store = StateStore()
    watcher = LocalConfigWatcher(LOCALHOST, store)
    change = watcher.poll()
    assert change is not None and watcher.error is None
    assert change.workloads == {LOCAL_UID, "cluster1//v1/Pod/default/local-tcp"}
    assert change.services == {"default/example.com", "default/example2.com"}
    assert change.policies == {"default/deny-9999"}

    local = store.workload_by_ip("", "127.0.0.1")
    assert local is not None and local.uid == LOCAL_UID
    assert local.protocol is TunnelProtocol.HBONE and local.node == "local"
    tcp = store.workload_by_ip("", "127.0.0.2")
    assert tcp is not None and tcp.protocol is TunnelProtocol.NONE

    example = store.service_by_vip("", "127.10.0.1")
    assert example is not None and example.hostname == "example.com"
    assert example.subject_alt_names == ("spiffe://cluster.local/ns/default/sa/local",)
    assert store.service_by_vip("", "127.10.0.2") is None  # that VIP is on network "remote"
    remote = store.service_by_vip("remote", "127.10.0.2")
    assert remote is not None and remote.name == "remote"
    endpoints = [(e.workload.uid, e.target_port) for e in store.endpoints(example, 80)]
    assert sorted(endpoints) == [(LOCAL_UID, 8080), ("cluster1//v1/Pod/default/local-tcp", 8080)]

    # The policy: ALLOW anything whose destination port is not 9999.
    def allowed(port: int) -> bool:
        request = Request(ipaddress.ip_address("127.0.0.2"), local.ips[0], port)
        return store.authorize(local, request).allowed

    assert allowed(8080) and not allowed(9999)


def test_every_field_reaches_the_workload_api() -> None:
    store = loaded(
        """
workloads:
- uid: c//Pod/apps/a
  name: a
  namespace: apps
  serviceAccount: sa-a
  trustDomain: example.org
  workloadIps: ["10.0.0.1", "fd00::1"]
  protocol: hbone
  networkMode: HostNetwork
  network: n1
  hostname: a.example
  workloadName: a-deploy
  workloadType: pod
  canonicalName: a
  canonicalRevision: v7
  nativeTunnel: true
  applicationTunnel: {protocol: PROXY, port: 15088}
  waypoint: {destination: apps/wp.apps.svc.cluster.local, hboneMtlsPort: 15008}
  networkGateway: {destination: n2/192.0.2.1}
  authorizationPolicies: [apps/p]
  status: Unhealthy
  clusterId: c2
  locality: {region: r, zone: z, subzone: s}
  capacity: 3
  services: {"apps/svc.apps": {80: 0}}
services:
- name: svc
  namespace: apps
  hostname: svc.apps
  vips: [n1/10.96.0.1]
  ports: {80: 8080}
  waypoint: {destination: apps/wp.apps.svc.cluster.local}
  loadBalancer: {routingPreferences: [Zone, Node], mode: Failover, healthPolicy: AllowAll}
  ipFamilies: Dual
"""
    )
    a = store.workload_by_uid("c//Pod/apps/a")
    assert a is not None
    assert str(a.identity) == "spiffe://example.org/ns/apps/sa/sa-a"
    assert a.waypoint == GatewayAddress(NamespacedHostname("apps", "wp.apps.svc.cluster.local"))
    assert a.network_gateway is not None and str(a.network_gateway.destination) == "n2/192.0.2.1"
    assert a.application_tunnel is not None and a.application_tunnel.port == 15088
    assert (a.capacity, a.cluster_id, a.healthy, a.locality.zone) == (3, "c2", False, "z")
    assert a.authorization_policies == ("apps/p",)
    assert store.workload_by_ip("n1", "10.0.0.1") is None  # host network: not by IP
    svc = store.service_by_vip("n1", "10.96.0.1")
    assert svc is not None and svc.accepts_unhealthy
    assert svc.load_balancing is not None and len(svc.load_balancing.routing_preference) == 2
    # Health policy AllowAll: the unhealthy workload is an endpoint, with the service's port.
    assert [(e.workload.uid, e.target_port) for e in store.endpoints(svc, 80)] == [
        ("c//Pod/apps/a", 8080)
    ]


def test_policy_matches_in_both_spellings() -> None:
    store = loaded(
        """
policies:
- name: p
  namespace: apps
  scope: WorkloadSelector
  action: Deny
  dryRun: false
  rules:
  - - - namespaces: [{Exact: other}, "prefix-*"]
        notPrincipals: [{Presence: []}]
        serviceAccounts: [{namespace: other, serviceAccount: client}]
        sourceIps: ["10.0.0.0/8", "192.0.2.1"]
        destinationPorts: [80]
    - []
workloads:
- {uid: w, namespace: apps, workloadIps: ["10.1.0.1"], authorizationPolicies: [apps/p]}
"""
    )
    policy = store.policy("apps/p")
    assert policy is not None and policy.action.value == "DENY"
    match = policy.rules[0].clauses[0].matches[0]
    assert [str(m) for m in match.namespaces] == ["other", "prefix-*"]
    assert [str(m) for m in match.not_principals] == ["*"]
    assert match.service_accounts == ("other/client",)
    assert [str(n) for n in match.source_ips] == ["10.0.0.0/8", "192.0.2.1/32"]
    w = store.workload_by_uid("w")
    assert w is not None and [p.policy.key for p in store.policies_for(w)] == ["apps/p"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("workloads: [{uid: w, namespace: n, bogus: 1}]", "test.yaml: workloads[0].bogus: unknown"),
        (
            "workloads: [{uid: w, namespace: n, workloadIp: 10.0.0.1}]",
            "workloads[0].workloadIp: unknown field (use workloadIps",
        ),
        ("workloads: [{uid: w, namespace: n, workloadIps: [nope]}]", "'nope' is not an IP"),
        ("workloads: [{namespace: n}]", "test.yaml: workloads[0].uid: required"),
        (
            "workloads: [{uid: w, namespace: n, protocol: QUIC}]",
            "workloads[0].protocol: 'QUIC' is not one of tcp, hbone",
        ),
        (
            "workloads: [{uid: w, namespace: n, services: {noslash: {80: 80}}}]",
            "workloads[0]: workload w: services key: 'noslash' is not <namespace>/<hostname>",
        ),
        (
            "workloads: [{uid: w, namespace: n, services: {a/b: {80: 99999}}}]",
            "port 99999 out of range",
        ),
        (
            "workloads: [{uid: w, namespace: n}, {uid: w, namespace: n}]",
            "workloads[1]: 'w' is already defined at workloads[0]",
        ),
        ("services: [{namespace: n, hostname: h, vips: [10.0.0.1]}]", "is not network/IP"),
        ("services: [{namespace: n, hostname: h, endpoints: {}}]", "endpoints come from each"),
        ("services: [{namespace: n}]", "services[0].hostname: required"),
        ("policies: [{name: p, namespace: n, action: Audit}]", "is not one of allow, deny"),
        ("policies: [{name: p, namespace: n, rules: [[[{ports: [1]}]]]}]", "rules[0][0][0].ports"),
        ("policies: [{name: p, namespace: n, rules: [{a: 1}]}]", "rules[0]: a rule is a list"),
        ("policies: [{name: p, namespace: n, rules: [[[{namespaces: [{Regex: x}]}]]]}]", "Regex"),
        ("workloads: {uid: w}", "workloads: expected list, got dict"),
        ("- name: local\n  workloadIp: 127.0.0.1\n", "ztunnel's old format"),
        ("workloads: [\n", "YAML syntax error"),
        ("extra: 1", "test.yaml: extra: unknown field"),
    ],
)
def test_errors_name_the_file_and_the_field(text: str, message: str) -> None:
    with pytest.raises(LocalConfigError) as error:
        parse_local_config(text, "test.yaml")
    assert message in str(error.value)


def test_an_empty_file_is_an_empty_config() -> None:
    config = parse_local_config("", "empty.yaml")
    assert config.addresses == {} and config.authorizations == {}
    with pytest.raises(LocalConfigError, match=r"missing\.yaml: cannot read"):
        load_local_config("missing.yaml")


class Clock:
    def __init__(self) -> None:
        self.now_ns = 10**18  # far from every real mtime: no "racy" re-reads unless set

    def __call__(self) -> int:
        return self.now_ns


def test_the_watcher_applies_edits_and_keeps_the_last_good_state(tmp_path: Path) -> None:
    path = tmp_path / "local.yaml"
    path.write_text(LOCALHOST.read_text())
    store = StateStore()
    clock = Clock()
    watcher = LocalConfigWatcher(path, store, now_ns=clock)
    assert watcher.poll() is not None
    assert watcher.poll() is None  # unchanged

    # An edit: one workload gone, the policy gone.
    edited = parse_and_drop_tcp_and_policy(LOCALHOST.read_text())
    path.write_text(edited)
    change = watcher.poll()
    assert change is not None
    assert change.workloads == {"cluster1//v1/Pod/default/local-tcp"}
    assert change.policies == {"default/deny-9999"}
    assert store.workload_by_ip("", "127.0.0.2") is None

    # A broken edit: nothing changes in the store, the error names file and field.
    path.write_text(edited.replace("protocol: HBONE", "protocol: HBONE\n  color: blue"))
    assert watcher.poll() is None
    assert watcher.error is not None
    assert f"{path}: workloads[0].color: unknown field" in str(watcher.error)
    assert store.workload_by_ip("", "127.0.0.1") is not None
    assert watcher.config is not None and len(watcher.config.addresses) == 3

    # The file disappears: still the last good state.
    path.unlink()
    assert watcher.poll() is None
    assert watcher.error is not None and "cannot read" in str(watcher.error)
    assert store.workload_by_ip("", "127.0.0.1") is not None

    # A fix resumes.
    path.write_text(LOCALHOST.read_text())
    change = watcher.poll()
    assert change is not None and watcher.error is None
    assert store.workload_by_ip("", "127.0.0.2") is not None


def test_a_second_write_within_the_mtime_granularity_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "local.yaml"
    path.write_text("workloads: [{uid: a, namespace: n, workloadIps: [10.0.0.1]}]")
    stat = path.stat()
    clock = Clock()
    clock.now_ns = stat.st_mtime_ns + 1  # checked right after the write
    store = StateStore()
    watcher = LocalConfigWatcher(path, store, now_ns=clock)
    assert watcher.poll() is not None
    # Rewritten with the same size and mtime (a coarse filesystem clock): the stamp is equal,
    # but the previous check was too close to the write to trust it.
    path.write_text("workloads: [{uid: b, namespace: n, workloadIps: [10.0.0.1]}]")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    clock.now_ns += 10**9
    assert watcher.poll() is not None
    found = store.workload_by_ip("", "10.0.0.1")
    assert found is not None and found.uid == "b"


def parse_and_drop_tcp_and_policy(text: str) -> str:
    head, _, rest = text.partition("- uid: cluster1//v1/Pod/default/local-tcp")
    _, _, services = rest.partition("services:\n- name: local")
    return f"{head}services:\n- name: local{services}"

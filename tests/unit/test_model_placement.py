"""Deployments become pods; pods get nodes and IPs, services get VIPs, deterministically."""

from __future__ import annotations

import re
import textwrap

import pytest
from model_helpers import load

from ambient_fast.controlplane.model import (
    Node,
    SourceFile,
    Topology,
    assemble,
    load_sources,
    parse_file,
)

SAFE = "[bcdfghjklmnpqrstvwxz2456789]"


def deployment(name: str = "web", replicas: int = 3, version: str = "v1", ns: str = "shop") -> str:
    return textwrap.dedent(f"""
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: {name}, namespace: {ns}}}
        spec:
          replicas: {replicas}
          selector: {{matchLabels: {{app: {name}}}}}
          template:
            metadata: {{labels: {{app: {name}, version: {version}}}}}
            spec:
              serviceAccountName: {name}-sa
              containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {{name: {ns}}}
    """)


def pod(name: str, extra_spec: str = "", status: str = "") -> str:
    return textwrap.dedent(f"""
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: {name}}}
        spec: {{{extra_spec}}}
        status: {{{status}}}
    """)


def service(name: str, cluster_ip: str = "") -> str:
    ip = f", clusterIP: {cluster_ip}" if cluster_ip else ""
    return (
        f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n"
        f"spec: {{ports: [{{port: 80}}]{ip}}}\n"
    )


def test_deployment_expands_into_named_labelled_pods() -> None:
    result = load(deployment())
    assert result.report.ok, result.report
    pods = result.mesh.pods_in("shop")
    assert len(pods) == 3
    template_hash = pods[0].labels["pod-template-hash"]
    for p in pods:
        assert re.fullmatch(f"web-{SAFE}{{10}}-{SAFE}{{5}}", p.name), p.name
        assert p.name.startswith(f"web-{template_hash}-")
        assert p.labels == {"app": "web", "version": "v1", "pod-template-hash": template_hash}
        assert p.service_account == "web-sa" and p.container_port("http") == 8080
        (owner,) = p.meta.owner_references
        assert (owner.kind, owner.name) == ("ReplicaSet", f"web-{template_hash}")
        assert p.meta.origin.document == 1  # points at the Deployment
    assert len({p.name for p in pods}) == 3
    assert result.mesh.deployment("shop", "web") is not None


def test_expansion_is_deterministic_and_follows_the_template() -> None:
    names = [p.name for p in load(deployment()).mesh.pods]
    assert names == [p.name for p in load(deployment()).mesh.pods]
    # scaling up keeps the existing replicas' names
    scaled = {p.name for p in load(deployment(replicas=5)).mesh.pods}
    assert set(names) < scaled
    # a template change is a rollout: every pod gets a new name
    rolled = {p.name for p in load(deployment(version="v2")).mesh.pods}
    assert not rolled & set(names)
    # the same template in another namespace gets other pod names
    other = {p.name for p in load(deployment(ns="other")).mesh.pods}
    assert not other & set(names)


def test_default_replicas_is_one_and_zero_is_none() -> None:
    text = deployment(replicas=1).replace("  replicas: 1\n", "")
    assert len(load(text).mesh.pods) == 1
    assert load(deployment(replicas=0)).mesh.pods == ()


def test_generated_pod_clashing_with_a_written_pod_is_reported_on_the_deployment() -> None:
    generated = load(deployment(replicas=1)).mesh.pods[0].name
    text = deployment(replicas=1) + textwrap.dedent(f"""
        ---
        apiVersion: v1
        kind: Pod
        metadata: {{name: {generated}, namespace: shop}}
    """)
    result = load(text, "d.yaml")
    assert result.report.lines() == [
        f"d.yaml doc 1 Deployment shop/web: pod {generated} already exists (d.yaml doc 3); skipped"
    ]
    assert len(result.mesh.pods) == 1


def test_pods_spread_over_least_loaded_nodes_with_ips_from_their_cidrs() -> None:
    result = load(deployment(replicas=4))
    placed = sorted((p.node_name, p.ip) for p in result.mesh.pods)
    assert placed == [
        ("node-a", "10.244.1.2"),
        ("node-a", "10.244.1.3"),
        ("node-b", "10.244.2.2"),
        ("node-b", "10.244.2.3"),
    ]
    assert all(p.placed for p in result.mesh.pods)
    assert len(result.mesh.pods_on_node("node-a")) == 2


def test_written_node_and_ip_are_kept_and_never_reused() -> None:
    text = (
        pod("fixed", "nodeName: node-a", "podIP: 10.244.1.2")
        + pod("ip-only", "", "podIP: 10.244.2.2")
        + pod("node-only", "nodeName: node-b")
        + pod("free")
    )
    result = load(text)
    assert result.report.ok, result.report
    mesh = result.mesh
    where = {p.name: (p.node_name, p.ip, p.placed) for p in mesh.pods}
    assert where["fixed"] == ("node-a", "10.244.1.2", False)
    assert where["ip-only"] == ("node-b", "10.244.2.2", True)  # the node whose CIDR has the IP
    assert where["node-only"] == ("node-b", "10.244.2.3", True)  # its node, next free IP
    # node-a has 1 pod, node-b 2: the free pod goes to node-a, past the written .2
    assert where["free"] == ("node-a", "10.244.1.3", True)
    assert mesh.pod_by_ip("10.244.2.2") == mesh.pod("default", "ip-only")


def test_written_ip_outside_every_node_cidr_is_kept() -> None:
    result = load(pod("elsewhere", "", "podIP: 192.168.7.7"))
    (p,) = result.mesh.pods
    assert p.ip == "192.168.7.7" and p.node_name == "node-a"


def test_duplicate_written_pod_ip_skips_the_later_pod() -> None:
    result = load(pod("first", "", "podIP: 10.244.1.9") + pod("second", "", "podIP: 10.244.1.9"))
    assert result.report.lines() == [
        "mesh.yaml doc 2 Pod default/second: status.podIP: 10.244.1.9 is already used by "
        "Pod default/first"
    ]
    assert [p.name for p in result.mesh.pods] == ["first"]


def test_unknown_node_without_ip_is_an_error() -> None:
    result = load(pod("lost", "nodeName: node-z"))
    assert result.report.lines() == [
        "mesh.yaml doc 1 Pod default/lost: spec.nodeName: unknown node 'node-z' "
        "(topology: node-a, node-b)"
    ]
    assert result.mesh.pods == ()


def test_unknown_node_with_written_ip_is_kept_as_written() -> None:
    result = load(pod("remote", "nodeName: node-z", "podIP: 10.9.9.9"))
    assert result.report.ok
    (p,) = result.mesh.pods
    assert (p.node_name, p.ip) == ("node-z", "10.9.9.9")


def test_host_network_pods_share_their_node_address() -> None:
    result = load(pod("agent", "hostNetwork: true, nodeName: node-b") + pod("other"))
    agent = result.mesh.pod("default", "agent")
    assert agent is not None and (agent.node_name, agent.ip) == ("node-b", "172.18.0.3")
    assert result.mesh.pod_by_ip("172.18.0.3") is None  # not a pod address
    other = result.mesh.pod("default", "other")
    assert other is not None and other.ip == "10.244.1.2"


def test_pod_ip_exhaustion_is_reported_per_pod() -> None:
    # /29 without network, gateway (.1) and broadcast: .2 .. .6, five addresses
    topology = Topology((Node("only", "10.1.0.0/29"),))
    result = load(deployment(replicas=7), topology=topology)
    assert len(result.mesh.pods) == 5
    assert sorted(p.ip or "" for p in result.mesh.pods) == [f"10.1.0.{i}" for i in range(2, 7)]
    assert len(result.report.errors) == 2
    for error in result.report.errors:
        assert str(error).startswith("mesh.yaml doc 1 Deployment shop/web: pod web-")
        assert str(error).endswith("no free pod IP on any node (only 10.1.0.0/29)")


def test_pinned_pod_on_a_full_node_is_reported_with_that_node() -> None:
    topology = Topology((Node("a", "10.1.0.0/30"), Node("b", "10.2.0.0/24")))
    result = load(pod("p1", "nodeName: a") + pod("p2", "nodeName: a"), topology=topology)
    assert result.report.lines() == [
        "mesh.yaml doc 2 Pod default/p2: status.podIP: no free pod IP on node a (10.1.0.0/30)"
    ]


def test_full_node_is_skipped_for_unpinned_pods() -> None:
    topology = Topology((Node("a", "10.1.0.0/30"), Node("b", "10.2.0.0/24")))
    result = load(
        pod("p1", "nodeName: a") + pod("p2", "nodeName: b") + pod("p3"), topology=topology
    )
    assert result.report.ok
    p3 = result.mesh.pod("default", "p3")
    assert p3 is not None and (p3.node_name, p3.ip) == ("b", "10.2.0.3")


def test_services_get_vips_written_ones_are_kept_and_never_reused() -> None:
    result = load(service("b") + service("a", "10.96.0.1") + service("c"))
    vips = {s.name: (s.cluster_ip, s.placed) for s in result.mesh.services}
    assert vips == {"a": ("10.96.0.1", False), "b": ("10.96.0.2", True), "c": ("10.96.0.3", True)}
    found = result.mesh.service_by_vip("10.96.0.2")
    assert found is not None and found.name == "b"


def test_duplicate_cluster_ip_skips_the_later_service() -> None:
    result = load(service("a", "10.96.0.5") + service("b", "10.96.0.5"))
    assert result.report.lines() == [
        "mesh.yaml doc 2 Service default/b: spec.clusterIP: 10.96.0.5 is already used by "
        "Service default/a"
    ]


def test_service_cidr_exhaustion() -> None:
    topology = Topology(service_cidr="10.96.0.0/30")  # .1 and .2
    result = load(service("a") + service("b") + service("c"), topology=topology)
    assert [s.cluster_ip for s in result.mesh.services] == ["10.96.0.1", "10.96.0.2"]
    assert result.report.lines() == [
        "mesh.yaml doc 3 Service default/c: spec.clusterIP: no free service IP in 10.96.0.0/30"
    ]


def test_previous_allocations_keep_addresses_stable() -> None:
    first = load_sources([SourceFile("m.yaml", pod("m") + pod("n") + service("s"))])
    before = {p.name: (p.node_name, p.ip) for p in first.mesh.pods}
    # "a" sorts first and would take m's address on a fresh load; with history it does not
    files = [
        parse_file(
            SourceFile("m.yaml", pod("a") + pod("m") + pod("n") + service("0") + service("s"))
        )
    ]
    second = assemble(files, previous=first.mesh.allocations)
    after = {p.name: (p.node_name, p.ip) for p in second.mesh.pods}
    assert after["m"] == before["m"] and after["n"] == before["n"]
    assert after["a"] not in before.values()
    assert second.mesh.service("default", "s") == first.mesh.service("default", "s")
    fresh = assemble(files)
    assert {p.name: (p.node_name, p.ip) for p in fresh.mesh.pods}["a"] == before["m"]


def test_topology_validation_and_flags() -> None:
    parsed = Topology.parse(["n1=10.1.0.0/24,192.168.0.1", "n2=10.2.0.0/24"], "10.3.0.0/16")
    assert parsed.nodes == (
        Node("n1", "10.1.0.0/24", "192.168.0.1"),
        Node("n2", "10.2.0.0/24", None),
    )
    with pytest.raises(ValueError, match="overlap"):
        Topology((Node("a", "10.1.0.0/16"), Node("b", "10.1.2.0/24")))
    with pytest.raises(ValueError, match="listed twice"):
        Topology((Node("a", "10.1.0.0/24"), Node("a", "10.2.0.0/24")))
    with pytest.raises(ValueError, match="invalid CIDR"):
        Topology((Node("a", "10.1.0.0/40"),))
    with pytest.raises(ValueError, match="NAME=POD_CIDR"):
        Topology.parse(["just-a-name"])
    with pytest.raises(ValueError, match="overlap"):
        Topology(service_cidr="10.244.0.0/16")


def test_ipv6_pod_cidr() -> None:
    topology = Topology((Node("v6", "fd00:10:244::/64"),), service_cidr="fd00:10:96::/112")
    result = load(pod("p") + service("s"), topology=topology)
    p, s = result.mesh.pods[0], result.mesh.services[0]
    assert (p.ip, s.cluster_ip) == ("fd00:10:244::2", "fd00:10:96::1")

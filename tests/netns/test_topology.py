"""The namespace topology: nodes and pods as real network namespaces, reachable as in a
routed cluster, and gone after use (also after a failure, also after a crash)."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from ambient_fast import netns
from ambient_fast.cni.rules import PolicyRoute, capture_rules
from ambient_fast.topology import NodeSpec, PodSpec, Topology, TopologyError, build
from ambient_fast.topology.builder import NETNS_PREFIX, sweep_stale
from ambient_fast.topology.commands import in_netns, run

NODES = [NodeSpec("node-a", "10.244.1.0/24"), NodeSpec("node-b", "10.244.2.0/24")]
PODS = [
    PodSpec("default/client", "node-a", "10.244.1.10"),
    PodSpec("default/neighbour", "node-a", "10.244.1.11"),
    PodSpec("default/server", "node-b", "10.244.2.10"),
]


def namespaces() -> set[str]:
    """This process's topology namespaces (others, such as a perf run's, come and go)."""
    if not os.path.isdir(netns.NETNS_RUN_DIR):
        return set()
    ours = f"{NETNS_PREFIX}{os.getpid()}-"
    return {name for name in os.listdir(netns.NETNS_RUN_DIR) if name.startswith(ours)}


def connect(topology: Topology, source: str, target: str, ip: str) -> str:
    """Connects from namespace `source` to a listener in `target`; the source IP it came from."""
    with topology.entered(target):
        server = socket.create_server(("0.0.0.0", 9000))
    with server:
        server.settimeout(5)
        with topology.entered(source):
            client = socket.create_connection((ip, 9000), timeout=5)
        with client:
            accepted, (peer_ip, _) = server.accept()
            accepted.close()
            return str(peer_ip)


def test_pods_reach_pods_on_both_nodes_and_the_fabric_with_their_own_ip() -> None:
    with build(NODES, PODS) as topology:
        client = topology.pods["default/client"]
        server = topology.pods["default/server"]
        neighbour = topology.pods["default/neighbour"]
        assert connect(topology, client.netns, server.netns, server.ip) == client.ip
        assert connect(topology, client.netns, neighbour.netns, neighbour.ip) == client.ip
        assert connect(topology, server.netns, client.netns, client.ip) == server.ip
        fabric = topology.fabric_netns
        assert connect(topology, fabric, server.netns, server.ip) == topology.fabric_ip
        assert connect(topology, client.netns, fabric, topology.fabric_ip) == client.ip
        node_b = topology.nodes["node-b"]
        assert connect(topology, node_b.netns, client.netns, client.ip) == node_b.ip


def test_everything_is_deleted_on_exit_even_after_an_error() -> None:
    before = namespaces()
    with pytest.raises(RuntimeError, match="test failed"), build(NODES, PODS) as topology:
        assert set(topology.namespaces()) <= namespaces()
        raise RuntimeError("test failed")
    assert namespaces() == before


@pytest.mark.parametrize(
    ("pods", "message"),
    [
        ([PodSpec("p", "node-c", "10.244.1.5")], "no node 'node-c'"),
        ([PodSpec("p", "node-a", "10.244.2.5")], "outside node-a's 10.244.1.0/24"),
        ([PodSpec("p", "node-a", "10.244.1.5")] * 2, "defined twice"),
    ],
)
def test_bad_specs_are_named_and_nothing_is_left(pods: list[PodSpec], message: str) -> None:
    before = namespaces()
    with pytest.raises(TopologyError, match=message), build(NODES, pods):
        pass
    assert namespaces() == before


def test_leftovers_of_a_dead_process_are_swept_and_a_live_ones_kept() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{NETNS_PREFIX}{dead.pid}-0000-fabric"
    mine = f"{NETNS_PREFIX}{os.getpid()}-0000-fabric"
    run("ip", "netns", "add", stale)
    run("ip", "netns", "add", mine)
    try:
        assert stale in sweep_stale()
        assert stale not in namespaces() and mine in namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", mine], capture_output=True, check=False)


def test_capture_rules_and_policy_route_apply_in_a_pod_namespace() -> None:
    """The rendered rules are valid for this kernel's iptables (one restore transaction)."""
    with build(NODES[:1], PODS[:1]) as topology:
        pod = topology.pods["default/client"].netns
        in_netns(pod, "iptables-restore", "--noflush", stdin=capture_rules())
        route = PolicyRoute()
        run("ip", "-n", pod, "rule", "add", *route.rule)
        run("ip", "-n", pod, "route", "add", *route.route)
        listing = in_netns(pod, "iptables-save")
        assert "-j TPROXY --on-port 15006" in listing
        assert "-j REDIRECT --to-ports 15001" in listing
        assert "lookup 100" in run("ip", "-n", pod, "rule")

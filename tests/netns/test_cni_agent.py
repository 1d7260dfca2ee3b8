"""`ambient-fast cni` on the two-node mesh (`two_nodes.py`), starting with `demo` NOT in the
mesh: pods join and leave live by the namespace label, ztunnel and the agent restart under
enrolled pods, and a crashed agent's leftovers are cleaned up by the next one."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from mesh_harness import ask
from two_nodes import (
    CAPTURED,
    ECHO_PORT,
    ECHO_VIP,
    PODS,
    TRUST,
    Mesh,
    mesh_yaml,
    running_mesh,
    wait_captured,
    write_config,
)

from ambient_fast.topology.commands import in_netns, run


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with running_mesh(tmp_path_factory.mktemp("cni"), captured=False) as mesh:
        yield mesh


def label(mesh: Mesh, captured: bool) -> None:
    write_config(mesh, "mesh.yaml", mesh_yaml(captured))


def inbound_lines(mesh: Mesh) -> int:
    """Inbound access-log lines of node-b's ztunnel for the client's connections."""
    log = mesh.ztunnels["node-b"].log.read_text()
    return sum(
        1 for line in log.splitlines()
        if 'direction="inbound"' in line and f'src.identity="{TRUST}/client"' in line
    )  # fmt: skip


def rules(mesh: Mesh, pod: str) -> tuple[str, str]:
    netns = mesh.topology.pods[pod].netns
    return in_netns(netns, "iptables-save"), run("ip", "-n", netns, "rule")


def assert_no_capture_left(mesh: Mesh) -> None:
    for pod in CAPTURED:
        saved, ip_rules = rules(mesh, pod)
        assert "ISTIO" not in saved, saved
        assert "lookup 100" not in ip_rules, ip_rules


def test_not_enrolled_traffic_goes_direct(mesh: Mesh) -> None:
    reply = ask(mesh.topology, "client", PODS["server"].ip, ECHO_PORT)
    assert (reply.hostname, reply.ip) == ("server", PODS["client"].ip)
    assert inbound_lines(mesh) == 0
    assert_no_capture_left(mesh)


def test_labelling_the_namespace_captures_live_without_restarting_the_server(mesh: Mesh) -> None:
    label(mesh, captured=True)
    wait_captured(mesh, CAPTURED)
    # Through ztunnel now: HBONE to the server's node, logged there with the identities. The
    # echo servers are the ones started before the label: nothing in the pods restarted.
    before = inbound_lines(mesh)
    reply = ask(mesh.topology, "client", ECHO_VIP, 80)
    assert (reply.hostname, reply.ip) == ("server", PODS["client"].ip)
    mesh.ztunnels["node-b"].wait_for("the inbound line", lambda: inbound_lines(mesh) > before)
    for pod in CAPTURED:
        saved, ip_rules = rules(mesh, pod)
        assert saved.count("-A PREROUTING -j ISTIO_PRERT") == 1
        assert ip_rules.count("lookup 100") == 1


def test_restarting_ztunnel_keeps_pods_enrolled(mesh: Mesh) -> None:
    assert mesh.ztunnels["node-b"].stop() == 0
    mesh.start_ztunnel("node-b", "ztunnel-node-b-again")
    mesh.wait_ready("node-b")  # ready = the agent's snapshot arrived
    assert ask(mesh.topology, "client", ECHO_VIP, 80).hostname == "server"


def test_restarting_the_agent_adds_no_duplicate_rules(mesh: Mesh) -> None:
    topology = mesh.topology
    assert mesh.agents["node-a"].stop() == 0
    mesh.start_agent("node-a", "cni-node-a-again")
    wait_captured(mesh, ("client", "neighbour"))
    for pod in ("client", "neighbour"):
        saved, ip_rules = rules(mesh, pod)
        assert saved.count("-A PREROUTING -j ISTIO_PRERT") == 1
        assert saved.count("REDIRECT --to-ports 15001") == 1
        assert ip_rules.count("lookup 100") == 1
    assert ask(topology, "client", ECHO_VIP, 80).hostname == "server"


def test_a_crashed_agents_leftovers_are_removed_by_the_next(mesh: Mesh) -> None:
    topology = mesh.topology
    mesh.agents["node-a"].stop(signal.SIGKILL)  # crashed: the pods stay captured
    label(mesh, captured=False)  # while no agent runs on node-a
    mesh.agents["node-b"].wait_logged("released demo/server ")
    following = mesh.start_agent("node-a", "cni-node-a-next")
    following.wait_logged(*(f"leftover capture in /run/netns/{topology.pods[p].netns}"
                            for p in ("client", "neighbour")))  # fmt: skip
    assert_no_capture_left(mesh)
    # And traffic goes direct again.
    reply = ask(topology, "client", PODS["server"].ip, ECHO_PORT)
    assert (reply.hostname, reply.ip) == ("server", PODS["client"].ip)

"""`ambient-fast cni` on the two-node mesh (`two_nodes.py`), starting with `demo` NOT in the
mesh: pods join and leave live by the namespace label, ztunnel and the agent restart under
enrolled pods, and a crashed agent's leftovers are cleaned up by the next one. Once with
iptables capture, once with eBPF capture."""

from __future__ import annotations

import signal
from collections import Counter
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

from ambient_fast.cni.ebpf import attached
from ambient_fast.topology.commands import in_netns, run

# A captured pod's pieces, by mode: how often each is in its namespace (`capture_pieces`).
PIECES = {
    "iptables": {"policy rule": 1, "ISTIO chains": 3, "PREROUTING jump": 1,
                 "REDIRECT to 15001": 1},
    "ebpf": {"policy rule": 1, "af_ingress@1/TCX_INGRESS": 1, "af_ingress@2/TCX_INGRESS": 1,
             "af_egress@2/TCX_EGRESS": 1, "lo accept_local": 1},
}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(PIECES))
def mesh(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mesh]:
    redirect = request.param
    work = tmp_path_factory.mktemp(f"cni-{redirect}")
    with running_mesh(work, captured=False, capture=redirect) as mesh:
        yield mesh


def label(mesh: Mesh, captured: bool) -> None:
    write_config(mesh, "mesh.yaml", mesh_yaml(captured))


def enrolled(mesh: Mesh) -> None:
    """The demo pods captured (a test selected alone does not follow the labelling test)."""
    label(mesh, captured=True)
    wait_captured(mesh, CAPTURED)


def inbound_lines(mesh: Mesh) -> int:
    """Inbound access-log lines of node-b's ztunnel for the client's connections."""
    log = mesh.ztunnels["node-b"].log.read_text()
    return sum(
        1 for line in log.splitlines()
        if 'direction="inbound"' in line and f'src.identity="{TRUST}/client"' in line
    )  # fmt: skip


def capture_pieces(mesh: Mesh, pod: str) -> Counter[str]:
    """How often each piece of capture is in the pod's namespace: the policy rule, and
    iptables' chains, jumps and rules or eBPF's programs per hook and accept_local."""
    netns = mesh.topology.pods[pod].netns
    pieces = Counter({"policy rule": run("ip", "-n", netns, "rule").count("lookup 100")})
    if mesh.options.redirect == "iptables":
        saved = in_netns(netns, "iptables-save")
        pieces["PREROUTING jump"] = saved.count("-A PREROUTING -j ISTIO_PRERT")
        pieces["REDIRECT to 15001"] = saved.count("REDIRECT --to-ports 15001")
        pieces["ISTIO chains"] = saved.count(":ISTIO_")
        return pieces
    with mesh.topology.entered(netns):
        found = attached.find()
        with open("/proc/sys/net/ipv4/conf/lo/accept_local", encoding="ascii") as setting:
            pieces["lo accept_local"] = int(setting.read())
    for hook, prog_ids in found.programs.items():
        pieces[f"{hook.program}@{hook.ifindex}/{hook.direction.name}"] = len(prog_ids)
    return pieces


def assert_captured_once(mesh: Mesh, pod: str) -> None:
    assert +capture_pieces(mesh, pod) == Counter(PIECES[mesh.options.redirect])


def assert_no_capture_left(mesh: Mesh) -> None:
    for pod in CAPTURED:
        assert +capture_pieces(mesh, pod) == Counter(), pod


def test_not_enrolled_traffic_goes_direct(mesh: Mesh) -> None:
    reply = ask(mesh.topology, "client", PODS["server"].ip, ECHO_PORT)
    assert (reply.hostname, reply.ip) == ("server", PODS["client"].ip)
    assert inbound_lines(mesh) == 0
    assert_no_capture_left(mesh)


def test_labelling_the_namespace_captures_live_without_restarting_the_server(mesh: Mesh) -> None:
    enrolled(mesh)
    # Through ztunnel now: HBONE to the server's node, logged there with the identities. The
    # echo servers are the ones started before the label: nothing in the pods restarted.
    before = inbound_lines(mesh)
    reply = ask(mesh.topology, "client", ECHO_VIP, 80)
    assert (reply.hostname, reply.ip) == ("server", PODS["client"].ip)
    mesh.ztunnels["node-b"].wait_for("the inbound line", lambda: inbound_lines(mesh) > before)
    for pod in CAPTURED:
        assert_captured_once(mesh, pod)


def test_restarting_ztunnel_keeps_pods_enrolled(mesh: Mesh) -> None:
    enrolled(mesh)
    assert mesh.ztunnels["node-b"].stop() == 0
    mesh.start_ztunnel("node-b", "ztunnel-node-b-again")
    mesh.wait_ready("node-b")  # ready = the agent's snapshot arrived
    assert ask(mesh.topology, "client", ECHO_VIP, 80).hostname == "server"


def test_restarting_the_agent_adds_no_duplicate_rules(mesh: Mesh) -> None:
    enrolled(mesh)
    topology = mesh.topology
    assert mesh.agents["node-a"].stop() == 0
    mesh.start_agent("node-a", "cni-node-a-again")
    wait_captured(mesh, ("client", "neighbour"))
    for pod in ("client", "neighbour"):
        assert_captured_once(mesh, pod)
    assert ask(topology, "client", ECHO_VIP, 80).hostname == "server"


def test_a_crashed_agents_leftovers_are_removed_by_the_next(mesh: Mesh) -> None:
    enrolled(mesh)
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

"""The two-node mesh the netns suites share (`ambient_fast.mesh.cluster` on the fixture
tests/fixtures/meshes/two-nodes), with echo servers in the pods:

  node-a: demo/client, demo/neighbour (captured), legacy/outsider (not captured)
  node-b: demo/server (captured, behind Service echo 10.96.0.10:80 -> 8080, and behind
          echo-waypoint 10.96.0.12:80 bound to the waypoint), demo/guarded (captured, its own
          traffic bound to the waypoint), demo/waypoint (the waypoint: HBONE, not captured),
          legacy/plain
  fabric: the control plane, and an echo outside the mesh
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

from mesh_harness import Echo, echoes

from ambient_fast.mesh.cluster import Cluster, ClusterOptions, run_cluster
from ambient_fast.topology import NodeSpec, PodSpec

FIXTURE = Path(__file__).parents[1] / "fixtures" / "meshes" / "two-nodes" / "mesh.yaml"
NODES = [NodeSpec("node-a", "10.244.1.0/24"), NodeSpec("node-b", "10.244.2.0/24")]
PODS = {
    "client": PodSpec("client", "node-a", "10.244.1.10"),
    "neighbour": PodSpec("neighbour", "node-a", "10.244.1.11"),
    "outsider": PodSpec("outsider", "node-a", "10.244.1.20"),
    "server": PodSpec("server", "node-b", "10.244.2.10"),
    "guarded": PodSpec("guarded", "node-b", "10.244.2.11"),
    "plain": PodSpec("plain", "node-b", "10.244.2.20"),
    "waypoint": PodSpec("waypoint", "node-b", "10.244.2.30"),
}
CAPTURED = ("client", "neighbour", "server", "guarded")
ECHO_VIP, NOBODY_VIP, WAYPOINT_BOUND_VIP = "10.96.0.10", "10.96.0.11", "10.96.0.12"
ECHO_PORT, OUTSIDE_PORT = 8080, 9090
TRUST = "spiffe://cluster.local/ns/demo/sa"
# Policy edits reach both ztunnels through the watcher and xDS within this.
PROPAGATION_S = 15.0

Mesh = Cluster
# The node agents' capture mechanisms: istio-cni's iptables rules (TPROXY inbound, the
# default; nat REDIRECT inbound), and eBPF.
CAPTURE_MODES = {
    "iptables": ClusterOptions(redirect="iptables"),
    "iptables-redirect": ClusterOptions(redirect="iptables", iptables_variant="redirect"),
    "ebpf": ClusterOptions(redirect="ebpf"),
}


def mesh_yaml(captured: bool) -> str:
    """The fixture, with or without the `demo` namespace's ambient label."""
    text = FIXTURE.read_text()
    if captured:
        return text
    return text.replace("  labels:\n    istio.io/dataplane-mode: ambient\n", "")


def write_config(mesh: Mesh, name: str, text: str) -> None:
    """Replaces one file of the watched configuration in one step."""
    staged = mesh.work / f"{name}.new"
    staged.write_text(text)
    staged.replace(mesh.config_dir / name)


def wait_captured(mesh: Mesh, pods: Iterable[str]) -> None:
    """Until each node agent has logged the capture of its pods among `pods`."""
    for pod in pods:
        mesh.agents[PODS[pod].node].wait_logged(f"captured demo/{pod} ")


@contextlib.contextmanager
def running_mesh(
    work: Path,
    cert_ttl: str | None = None,
    *,
    captured: bool = True,
    capture: str = "iptables",
    capture_dns: bool = False,
) -> Iterator[Mesh]:
    """The cluster up with echo servers and, with `captured`, the `demo` pods enrolled.
    `capture`: a key of CAPTURE_MODES; `capture_dns`: the pods' DNS to the ztunnels too."""
    config = work / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(mesh_yaml(captured))
    (config / "policies.yaml").write_text("# no policies yet\n")
    options = replace(CAPTURE_MODES[capture], cert_ttl=cert_ttl, capture_dns=capture_dns)
    with run_cluster(NODES, list(PODS.values()), config, work, options) as mesh:
        if captured:
            wait_captured(mesh, CAPTURED)
        topology = mesh.topology
        servers = {"server": ECHO_PORT, "neighbour": ECHO_PORT, "plain": ECHO_PORT,
                   "guarded": ECHO_PORT}  # fmt: skip
        with echoes(topology, servers):
            outside = Echo(topology, "outside", OUTSIDE_PORT, netns=topology.fabric_netns)
            try:
                yield mesh
            finally:
                outside.close()

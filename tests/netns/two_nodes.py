"""The two-node mesh the netns suites share: topology, control plane, a ztunnel per node in
shared mode and `ambient-fast cni` per node (istio-cni's rules + ZDS), echo servers.

  node-a: demo/client, demo/neighbour (captured), legacy/outsider (not captured)
  node-b: demo/server (captured, behind Service echo 10.96.0.10:80 -> 8080), legacy/plain
  fabric: the control plane, and an echo outside the mesh
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mesh_harness import (
    READINESS_PORT,
    STATS_PORT,
    XDS_PORT,
    Echo,
    MeshProcess,
    echoes,
    http_get,
    process_in,
    tcp_open,
)

from ambient_fast.topology import NodeSpec, PodSpec, Topology, build

FIXTURE = Path(__file__).parents[1] / "fixtures" / "meshes" / "two-nodes" / "mesh.yaml"
NODES = [NodeSpec("node-a", "10.244.1.0/24"), NodeSpec("node-b", "10.244.2.0/24")]
PODS = {
    "client": PodSpec("client", "node-a", "10.244.1.10"),
    "neighbour": PodSpec("neighbour", "node-a", "10.244.1.11"),
    "outsider": PodSpec("outsider", "node-a", "10.244.1.20"),
    "server": PodSpec("server", "node-b", "10.244.2.10"),
    "plain": PodSpec("plain", "node-b", "10.244.2.20"),
}
CAPTURED = ("client", "neighbour", "server")
ECHO_VIP, NOBODY_VIP = "10.96.0.10", "10.96.0.11"
ECHO_PORT, OUTSIDE_PORT = 8080, 9090
TRUST = "spiffe://cluster.local/ns/demo/sa"
# Policy edits reach both ztunnels through the watcher and xDS within this.
PROPAGATION_S = 15.0


@dataclass
class Mesh:
    topology: Topology
    work: Path
    ztunnels: dict[str, MeshProcess]
    agents: dict[str, MeshProcess]  # `ambient-fast cni` per node
    controlplane: list[MeshProcess]  # the current one last (the CP is restarted by a test)
    cert_ttl: str | None
    redirect: str
    # Processes a test starts for the rest of the module (a restarted ztunnel or agent).
    stack: contextlib.ExitStack

    def start(self, namespace: str, name: str, argv: list[str]) -> MeshProcess:
        return self.stack.enter_context(
            process_in(self.topology, namespace, name, argv, {}, self.work)
        )

    def stop_extra_controlplanes(self) -> None:
        for process in self.controlplane[1:]:
            process.stop()

    def policies(self, text: str) -> None:
        """Replaces the policies file the control plane watches."""
        staged = self.work / "policies.yaml.new"
        staged.write_text(text)
        staged.replace(self.work / "config" / "policies.yaml")

    def metrics(self, node: str) -> str:
        status, text = http_get(
            self.topology, self.topology.nodes[node].netns, f"http://127.0.0.1:{STATS_PORT}/metrics"
        )
        assert status == 200
        return text


def controlplane_argv(work: Path, topology: Topology, cert_ttl: str | None) -> list[str]:
    return [
        "controlplane", "-f", str(work / "config"), "--state-dir", str(work / "controlplane"),
        "--listen", f"{topology.fabric_ip}:{XDS_PORT}",
        *(["--min-cert-lifetime", cert_ttl] if cert_ttl else []),
        *(arg for n in NODES for arg in ("--node", f"{n.name}={n.pod_cidr}")),
    ]  # fmt: skip


def ztunnel_argv(work: Path, topology: Topology, node: str, cert_ttl: str | None) -> list[str]:
    address = f"https://{topology.fabric_ip}:{XDS_PORT}"
    root = str(work / "controlplane" / "root-cert.pem")
    return [
        "ztunnel", "--proxy-mode", "shared", "--inpod-uds", str(work / f"{node}.sock"),
        "--xds-address", address, "--ca-address", address,
        "--xds-root-cert", root, "--ca-root-cert", root,
        "--token-file", str(work / "controlplane" / "node-tokens" / f"{node}.token"),
        "--node-name", node, "--instance-ip", topology.nodes[node].ip,
        *(["--secret-ttl", cert_ttl] if cert_ttl else []),
    ]  # fmt: skip


def cni_argv(work: Path, topology: Topology, node: str, redirect: str) -> list[str]:
    return [
        "cni", "--node-name", node, "--ztunnel-socket", str(work / f"{node}.sock"),
        "--xds-address", f"https://{topology.fabric_ip}:{XDS_PORT}",
        "--xds-root-cert", str(work / "controlplane" / "root-cert.pem"),
        "--token-file", str(work / "controlplane" / "node-tokens" / f"{node}.token"),
        "--redirect", redirect,
    ]  # fmt: skip


def wait_ready(topology: Topology, node: str, process: MeshProcess) -> None:
    netns = topology.nodes[node].netns
    url = f"http://127.0.0.1:{READINESS_PORT}/healthz/ready"

    def ready() -> bool:
        return http_get(topology, netns, url)[0] == 200

    process.wait_for("readiness", ready)


def wait_logged(process: MeshProcess, lines: Iterable[str]) -> None:
    """Until `process` has logged each of `lines` (substrings)."""
    for line in lines:
        process.wait_for(repr(line), functools.partial(_logged, process, line))


def wait_captured(mesh: Mesh, pods: Iterable[str]) -> None:
    """Until each node agent has logged the capture of its pods among `pods`."""
    for pod in pods:
        wait_logged(mesh.agents[PODS[pod].node], [f"captured demo/{pod} "])


def _logged(process: MeshProcess, text: str) -> bool:
    return text in process.log.read_text()


def mesh_yaml(captured: bool) -> str:
    text = FIXTURE.read_text()
    return (
        text
        if captured
        else text.replace("istio.io/dataplane-mode: ambient", "{}").replace(
            "  labels:\n    {}", "  labels: {}"
        )
    )


@contextlib.contextmanager
def running_mesh(
    work: Path, cert_ttl: str | None = None, *, captured: bool = True, redirect: str = "iptables"
) -> Iterator[Mesh]:
    """Everything up (control plane, a CNI agent and a ztunnel per node, echoes) and, with
    `captured`, the `demo` pods enrolled; all of it stopped and deleted on exit.
    `cert_ttl`: workload certificate lifetime (the control plane's minimum follows it)."""
    (work / "config").mkdir()
    (work / "config" / "mesh.yaml").write_text(mesh_yaml(captured))
    (work / "config" / "policies.yaml").write_text("# no policies yet\n")
    with build(NODES, list(PODS.values())) as topology:
        fabric = topology.fabric_netns
        with contextlib.ExitStack() as stack:
            controlplane = stack.enter_context(process_in(
                topology, fabric, "controlplane", controlplane_argv(work, topology, cert_ttl), {},
                work,
            ))  # fmt: skip
            controlplane.wait_for(
                "xDS port", lambda: tcp_open(topology, fabric, topology.fabric_ip, XDS_PORT)
            )
            mesh = Mesh(topology, work, {}, {}, [controlplane], cert_ttl, redirect, stack)
            stack.callback(mesh.stop_extra_controlplanes)
            for node in (n.name for n in NODES):
                netns = topology.nodes[node].netns
                mesh.agents[node] = stack.enter_context(process_in(
                    topology, netns, f"cni-{node}", cni_argv(work, topology, node, redirect), {},
                    work,
                ))  # fmt: skip
                mesh.ztunnels[node] = stack.enter_context(process_in(
                    topology, netns, f"ztunnel-{node}",
                    ztunnel_argv(work, topology, node, cert_ttl), {}, work,
                ))  # fmt: skip
            for node, process in mesh.ztunnels.items():
                wait_ready(topology, node, process)
            if captured:
                wait_captured(mesh, CAPTURED)
            stack.enter_context(echoes(topology, {"server": ECHO_PORT, "neighbour": ECHO_PORT,
                                                  "plain": ECHO_PORT}))  # fmt: skip
            outside = Echo(topology, "outside", OUTSIDE_PORT, netns=fabric)
            stack.callback(outside.close)
            yield mesh

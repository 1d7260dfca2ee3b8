"""A running cluster on one machine: the topology's namespaces, `ambient-fast controlplane` in
the fabric (TLS xDS + CA on 15012, node tokens), and on every node `ambient-fast cni` and
`ambient-fast ztunnel` in shared mode, each with that node's token. Pods are plain namespaces:
whatever runs in them (echo servers, iperf3) is the caller's.

Order: control plane (its root and node tokens are the others' credentials), then per node the
agent (it serves the ZDS socket) and ztunnel, then readiness of every ztunnel (config warm and
the agent's snapshot in). Everything stops, and every namespace goes, on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ambient_fast.mesh.process import MeshProcess, http_get, running_in, tcp_open
from ambient_fast.topology import NodeSpec, PodSpec, Topology, build

XDS_PORT = 15012
ADMIN_PORT = 15000
STATS_PORT = 15020
READINESS_PORT = 15021


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    # Workload certificate lifetime; the control plane's minimum follows it. None: defaults.
    cert_ttl: str | None = None
    redirect: str = "iptables"  # the agents' capture: iptables or ebpf
    iptables_variant: str = "tproxy"  # iptables' inbound capture: tproxy or redirect
    # The pods' DNS to the ztunnels' DNS proxies (iptables only); it forwards what the mesh
    # does not know to the nodes' nameserver, the fabric address (topology).
    capture_dns: bool = False


@dataclass
class Cluster:
    topology: Topology
    config_dir: Path  # the YAML the control plane watches
    work: Path  # logs, the control plane's state, ZDS sockets
    options: ClusterOptions
    stack: contextlib.ExitStack  # processes started later live until the cluster stops
    controlplane: list[MeshProcess] = field(default_factory=list)  # the current one last
    agents: dict[str, MeshProcess] = field(default_factory=dict)
    ztunnels: dict[str, MeshProcess] = field(default_factory=dict)

    @property
    def xds_address(self) -> str:
        return f"https://{self.topology.fabric_ip}:{XDS_PORT}"

    def _state(self, *parts: str) -> str:
        return str(self.work.joinpath("controlplane", *parts))

    def controlplane_argv(self) -> list[str]:
        ttl = self.options.cert_ttl
        return [
            "controlplane", "-f", str(self.config_dir), "--state-dir", self._state(),
            "--listen", f"{self.topology.fabric_ip}:{XDS_PORT}",
            *(["--min-cert-lifetime", ttl] if ttl else []),
            *(arg for n in self.topology.nodes.values()
              for arg in ("--node", f"{n.name}={n.pod_cidr}")),
        ]  # fmt: skip

    def cni_argv(self, node: str) -> list[str]:
        return [
            "cni", "--node-name", node, "--ztunnel-socket", str(self.work / f"{node}.sock"),
            "--xds-address", self.xds_address, "--xds-root-cert", self._state("root-cert.pem"),
            "--token-file", self._state("node-tokens", f"{node}.token"),
            "--redirect", self.options.redirect,
            "--iptables-variant", self.options.iptables_variant,
            "--netns-prefix", self.topology.pod_netns_prefix,
            *(["--capture-dns"] if self.options.capture_dns else []),
        ]  # fmt: skip

    def ztunnel_argv(self, node: str) -> list[str]:
        ttl = self.options.cert_ttl
        root = self._state("root-cert.pem")
        return [
            "ztunnel", "--proxy-mode", "shared", "--inpod-uds", str(self.work / f"{node}.sock"),
            "--xds-address", self.xds_address, "--ca-address", self.xds_address,
            "--xds-root-cert", root, "--ca-root-cert", root,
            "--token-file", self._state("node-tokens", f"{node}.token"),
            "--node-name", node, "--instance-ip", self.topology.nodes[node].ip,
            *(["--secret-ttl", ttl] if ttl else []),
        ]  # fmt: skip

    def start(self, namespace: str, name: str, argv: list[str]) -> MeshProcess:
        """A process that lives until the cluster stops (or until stopped)."""
        return self.stack.enter_context(running_in(self.topology, namespace, name, argv, self.work))

    def start_controlplane(self, name: str = "controlplane") -> MeshProcess:
        fabric, ip = self.topology.fabric_netns, self.topology.fabric_ip
        process = self.start(fabric, name, self.controlplane_argv())
        process.wait_for("the xDS port", lambda: tcp_open(self.topology, fabric, ip, XDS_PORT))
        self.controlplane.append(process)
        return process

    def start_agent(self, node: str, name: str | None = None) -> MeshProcess:
        netns = self.topology.nodes[node].netns
        self.agents[node] = self.start(netns, name or f"cni-{node}", self.cni_argv(node))
        return self.agents[node]

    def start_ztunnel(self, node: str, name: str | None = None) -> MeshProcess:
        netns = self.topology.nodes[node].netns
        self.ztunnels[node] = self.start(netns, name or f"ztunnel-{node}", self.ztunnel_argv(node))
        return self.ztunnels[node]

    def wait_ready(self, node: str) -> None:
        """Until the node's ztunnel is ready: config warm, listeners up, the agent's snapshot."""
        netns = self.topology.nodes[node].netns
        url = f"http://127.0.0.1:{READINESS_PORT}/healthz/ready"
        self.ztunnels[node].wait_for(
            "readiness", lambda: http_get(self.topology, netns, url)[0] == 200
        )

    def metrics(self, node: str) -> str:
        """The node's ztunnel's Prometheus text."""
        return self._ztunnel_get(node, STATS_PORT, "/metrics")

    def config_dump(self, node: str) -> dict[str, Any]:
        """The node's ztunnel's /config_dump (what `istioctl ztunnel-config` reads)."""
        dump: dict[str, Any] = orjson.loads(self._ztunnel_get(node, ADMIN_PORT, "/config_dump"))
        return dump

    def _ztunnel_get(self, node: str, port: int, path: str) -> str:
        netns = self.topology.nodes[node].netns
        status, text = http_get(self.topology, netns, f"http://127.0.0.1:{port}{path}")
        if status != 200:
            raise OSError(f"{path} of {node}'s ztunnel: HTTP {status}")
        return text


@contextlib.contextmanager
def run_cluster(
    nodes: Sequence[NodeSpec], pods: Sequence[PodSpec], config_dir: Path, work: Path,
    options: ClusterOptions = ClusterOptions(),
) -> Iterator[Cluster]:  # fmt: skip
    with build(nodes, pods) as topology, contextlib.ExitStack() as stack:
        cluster = Cluster(topology, config_dir, work, options, stack)
        cluster.start_controlplane()
        for node in topology.nodes:
            cluster.start_agent(node)
            cluster.start_ztunnel(node)
        for node in topology.nodes:
            cluster.wait_ready(node)
        yield cluster

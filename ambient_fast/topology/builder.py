"""A cluster on one machine: a fabric namespace (the network between nodes, and where the
control plane lives), one namespace per node, one per pod.

```
 pod netns (eth0: pod IP/32, default via the node's pod gateway)
   └─veth─ node netns (p<i>: gateway/32 + route pod/32; eth0 on the underlay; forwarding)
             └─veth─ fabric netns (bridge br0: FABRIC_IP; routes each node's pod CIDR)
```

Pods reach pods on other nodes through their node and the fabric, as with a routed CNI
plugin; every node and pod reaches the fabric address, which is also the nameserver of every
node's and pod's resolv.conf (what `ip netns exec` shows as /etc/resolv.conf): the cluster's
DNS belongs in the fabric, as the control plane does, and a caller may run one there.
Namespace names carry the creating process's pid (`af-<pid>-<tag>-...`), so a later build
deletes leftovers of a process that died before it could clean up, and never touches those of
a live one.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ambient_fast import netns
from ambient_fast.topology.commands import (
    NETNS_ETC_DIR,
    TopologyError,
    delete_netns,
    in_netns,
    run,
)

NETNS_PREFIX = "af-"
DEFAULT_UNDERLAY = "172.30.0.0/24"
_OWNED = re.compile(rf"^{NETNS_PREFIX}(\d+)-")
_SYSCTLS = ("net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")

__all__ = ["Node", "NodeSpec", "Pod", "PodSpec", "Topology", "TopologyError", "build"]


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    pod_cidr: str


@dataclass(frozen=True, slots=True)
class PodSpec:
    name: str
    node: str
    ip: str


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    netns: str
    ip: str  # on the underlay
    pod_cidr: str
    pod_gateway: str  # the first address of pod_cidr, on every pod's node-side veth


@dataclass(frozen=True, slots=True)
class Pod:
    name: str
    node: str
    netns: str
    ip: str


@dataclass(slots=True)
class Topology:
    tag: str
    fabric_netns: str
    fabric_ip: str
    nodes: dict[str, Node] = field(default_factory=dict)
    pods: dict[str, Pod] = field(default_factory=dict)

    def namespaces(self) -> list[str]:
        """Every namespace, pods first (the order they are deleted in)."""
        return [
            *(p.netns for p in self.pods.values()),
            *(n.netns for n in self.nodes.values()),
            self.fabric_netns,
        ]

    @property
    def pod_netns_prefix(self) -> str:
        """What every pod namespace's name of this topology starts with."""
        return f"{NETNS_PREFIX}{self.tag}-pod-"

    def exec_argv(self, namespace: str, argv: Sequence[str]) -> list[str]:
        """A command line that runs `argv` in `namespace` (exec'd in place: same pid)."""
        return ["ip", "netns", "exec", namespace, *argv]

    def resolv_conf(self, namespace: str) -> Path:
        """The namespace's resolv.conf (for processes `exec_argv` starts)."""
        return NETNS_ETC_DIR / namespace / "resolv.conf"

    def entered(self, namespace: str) -> contextlib.AbstractContextManager[None]:
        """The calling thread in `namespace` until exit (sockets opened meanwhile stay)."""
        return netns.entered_named(namespace)

    def open_netns(self, namespace: str) -> int:
        """An fd of the namespace, as the CNI agent hands it to the node proxy."""
        return os.open(netns.named_path(namespace), os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        for namespace in self.namespaces():
            delete_netns(namespace)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _listed(directory: str | Path) -> set[str]:
    try:
        return set(os.listdir(directory))
    except FileNotFoundError:
        return set()


def sweep_stale() -> list[str]:
    """Deletes namespaces (and their /etc/netns files) this module made in processes that are
    gone; returns their names."""
    names = _listed(netns.NETNS_RUN_DIR) | _listed(NETNS_ETC_DIR)
    stale = [n for n in sorted(names) if (m := _OWNED.match(n)) and not _alive(int(m.group(1)))]
    for name in stale:
        delete_netns(name)
    return stale


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _add_netns(name: str, created: list[str], nameserver: str | None = None) -> None:
    run("ip", "netns", "add", name)
    created.append(name)
    run("ip", "-n", name, "link", "set", "lo", "up")
    in_netns(name, "sysctl", "-qw", *_SYSCTLS)
    if nameserver is not None:
        etc = NETNS_ETC_DIR / name
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(f"nameserver {nameserver}\n")


def _veth(ns_a: str, dev_a: str, ns_b: str, dev_b: str) -> None:
    run("ip", "link", "add", dev_a, "netns", ns_a, "type", "veth", "peer", "name", dev_b,
        "netns", ns_b)  # fmt: skip
    run("ip", "-n", ns_a, "link", "set", dev_a, "up")
    run("ip", "-n", ns_b, "link", "set", dev_b, "up")


def _add_fabric(topology: Topology, underlay: ipaddress.IPv4Network, created: list[str]) -> None:
    _add_netns(topology.fabric_netns, created)
    ns = topology.fabric_netns
    run("ip", "-n", ns, "link", "add", "br0", "type", "bridge")
    run("ip", "-n", ns, "addr", "add", f"{topology.fabric_ip}/{underlay.prefixlen}", "dev", "br0")
    run("ip", "-n", ns, "link", "set", "br0", "up")


def _add_node(
    topology: Topology, spec: NodeSpec, ip: str, prefixlen: int, created: list[str]
) -> Node:
    cidr = ipaddress.IPv4Network(spec.pod_cidr)
    node = Node(
        spec.name, f"{NETNS_PREFIX}{topology.tag}-node-{_slug(spec.name)}", ip, str(cidr),
        str(next(cidr.hosts())),
    )  # fmt: skip
    _add_netns(node.netns, created, nameserver=topology.fabric_ip)
    uplink = f"n{len(topology.nodes)}"
    _veth(node.netns, "eth0", topology.fabric_netns, uplink)
    run("ip", "-n", topology.fabric_netns, "link", "set", uplink, "master", "br0")
    run("ip", "-n", node.netns, "addr", "add", f"{ip}/{prefixlen}", "dev", "eth0")
    in_netns(node.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    run("ip", "-n", topology.fabric_netns, "route", "add", node.pod_cidr, "via", ip)
    topology.nodes[node.name] = node
    return node


def _route_between_nodes(topology: Topology) -> None:
    for node in topology.nodes.values():
        for other in topology.nodes.values():
            if other is not node:
                run("ip", "-n", node.netns, "route", "add", other.pod_cidr, "via", other.ip)


def _add_pod(topology: Topology, spec: PodSpec, created: list[str]) -> Pod:
    node = topology.nodes.get(spec.node)
    if node is None:
        raise TopologyError(f"pod {spec.name}: no node {spec.node!r}")
    if ipaddress.IPv4Address(spec.ip) not in ipaddress.IPv4Network(node.pod_cidr):
        raise TopologyError(f"pod {spec.name}: {spec.ip} is outside {node.name}'s {node.pod_cidr}")
    if spec.name in topology.pods:
        raise TopologyError(f"pod {spec.name}: defined twice")
    pod = Pod(spec.name, node.name, topology.pod_netns_prefix + _slug(spec.name), spec.ip)
    _add_netns(pod.netns, created, nameserver=topology.fabric_ip)
    host_side = f"p{len(topology.pods)}"
    _veth(pod.netns, "eth0", node.netns, host_side)
    run("ip", "-n", pod.netns, "addr", "add", f"{pod.ip}/32", "dev", "eth0")
    run("ip", "-n", pod.netns, "route", "add", node.pod_gateway, "dev", "eth0", "scope", "link")
    run("ip", "-n", pod.netns, "route", "add", "default", "via", node.pod_gateway, "dev", "eth0")
    run("ip", "-n", node.netns, "addr", "add", f"{node.pod_gateway}/32", "dev", host_side)
    run("ip", "-n", node.netns, "route", "add", f"{pod.ip}/32", "dev", host_side)
    topology.pods[pod.name] = pod
    return pod


@contextlib.contextmanager
def build(
    nodes: Sequence[NodeSpec], pods: Sequence[PodSpec], *, underlay: str = DEFAULT_UNDERLAY
) -> Iterator[Topology]:
    """Creates the topology and deletes every namespace of it on exit, also on failure
    (a half-built topology included)."""
    sweep_stale()
    network = ipaddress.IPv4Network(underlay)
    addresses = network.hosts()
    tag = f"{os.getpid()}-{secrets.token_hex(2)}"
    topology = Topology(tag, f"{NETNS_PREFIX}{tag}-fabric", str(next(addresses)))
    created: list[str] = []
    try:
        _add_fabric(topology, network, created)
        for spec in nodes:
            if spec.name in topology.nodes:
                raise TopologyError(f"node {spec.name}: defined twice")
            _add_node(topology, spec, str(next(addresses)), network.prefixlen, created)
        _route_between_nodes(topology)
        for pod_spec in pods:
            _add_pod(topology, pod_spec, created)
        yield topology
    finally:
        for name in reversed(created):
            delete_netns(name)

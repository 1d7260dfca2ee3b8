"""Where pods run and which addresses they and services get, when the YAML does not say.

Pods without spec.nodeName go to the least-loaded node (ties: topology order); pods without
status.podIP get the next free address of their node's pod CIDR; ClusterIP services without
spec.clusterIP get the next free address of the service CIDR. Addresses written in the
input are kept and never handed out again. With the previous load's `Allocations`, a pod or
service keeps what it had (as in a cluster, an edit elsewhere does not renumber it).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ambient_fast.controlplane.model.core import Pod, PodPlacement, Service
from ambient_fast.controlplane.model.indexes import ByNamespace
from ambient_fast.controlplane.model.meta import ObjectKey

# kind's defaults: per-node /24s out of 10.244.0.0/16, services in 10.96.0.0/16 (kubeadm).
DEFAULT_SERVICE_CIDR = "10.96.0.0/16"


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    pod_cidr: str
    address: str | None = None  # the node's own IP (hostNetwork pods share it)


DEFAULT_NODES = (
    Node("node-a", "10.244.1.0/24", "172.18.0.2"),
    Node("node-b", "10.244.2.0/24", "172.18.0.3"),
)


@dataclass(frozen=True, slots=True)
class Topology:
    """The nodes pods can be placed on and the address ranges the model allocates from."""

    nodes: tuple[Node, ...] = DEFAULT_NODES
    service_cidr: str = DEFAULT_SERVICE_CIDR

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ValueError("topology: at least one node is required")
        seen: dict[str, str] = {}
        networks: list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]] = []
        for node in self.nodes:
            if node.name in seen:
                raise ValueError(f"topology: node {node.name!r} listed twice")
            seen[node.name] = node.pod_cidr
            networks.append((node.name, _network(node.pod_cidr, f"node {node.name}")))
        networks.append(("services", _network(self.service_cidr, "service CIDR")))
        for i, (a, net_a) in enumerate(networks):
            for b, net_b in networks[i + 1 :]:
                if net_a.version == net_b.version and net_a.overlaps(net_b):
                    raise ValueError(f"topology: CIDRs of {a} and {b} overlap")

    @classmethod
    def parse(cls, nodes: Sequence[str], service_cidr: str = DEFAULT_SERVICE_CIDR) -> Topology:
        """From flags of the form NAME=POD_CIDR[,NODE_IP], e.g. node-a=10.244.1.0/24,172.18.0.2."""
        parsed = []
        for text in nodes:
            name, sep, rest = text.partition("=")
            cidr, _, address = rest.partition(",")
            if not sep or not name or not cidr:
                raise ValueError(f"node {text!r}: expected NAME=POD_CIDR[,NODE_IP]")
            parsed.append(Node(name, cidr, address or None))
        return cls(tuple(parsed), service_cidr)

    def node(self, name: str) -> Node | None:
        for node in self.nodes:
            if node.name == name:
                return node
        return None


class Allocations:
    """What the model chose (not what the input said): pod -> (node, ip), service -> VIP.

    Read off the placed objects (`Pod.allocated`, `Service.placed`) in a Mesh's indexes,
    not kept beside them: a mapping of its own cost about 170 bytes a pod.
    """

    __slots__ = ("_pods", "_services")

    def __init__(
        self,
        pods: ByNamespace[Pod] | None = None,
        services: ByNamespace[Service] | None = None,
    ) -> None:
        self._pods: ByNamespace[Pod] = pods if pods is not None else ByNamespace()
        self._services = services if services is not None else ByNamespace[Service]()

    def pod(self, key: ObjectKey) -> tuple[str, str | None] | None:
        """(node, ip) the model gave the pod (ip None for a host-network pod), if it did."""
        pod = self._pods.get(key.namespace, key.name)
        if pod is None or not pod.allocated or pod.node_name is None:
            return None
        return pod.node_name, None if pod.host_network else pod.ip

    def service(self, key: ObjectKey) -> str | None:
        """The VIP the model gave the service, if it did."""
        service = self._services.get(key.namespace, key.name)
        return service.cluster_ip if service is not None and service.placed else None

    def as_dicts(
        self,
    ) -> tuple[dict[ObjectKey, tuple[str, str | None]], dict[ObjectKey, str]]:
        """Every allocation: pods by key, services by key."""
        pods = {}
        for pod in self._pods.values():
            allocation = self.pod(pod.key)
            if allocation is not None:
                pods[pod.key] = allocation
        services = {}
        for service in self._services.values():
            vip = self.service(service.key)
            if vip is not None:
                services[service.key] = vip
        return pods, services

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Allocations):
            return NotImplemented
        return self.as_dicts() == other.as_dicts()

    def __repr__(self) -> str:
        pods, services = self.as_dicts()
        return f"<Allocations {len(pods)} pods, {len(services)} services>"


@dataclass(frozen=True, slots=True)
class PlacementProblem:
    key: ObjectKey
    field: str
    message: str


@dataclass(slots=True)
class PlacementResult:
    pods: list[Pod]
    services: list[Service]
    problems: list[PlacementProblem]


def _network(cidr: str, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise ValueError(f"topology: {what}: invalid CIDR {cidr!r}") from None


def _ip_text(number: int, version: int) -> str:
    if version == 4:  # the hot path: ipaddress' own formatting is several times slower
        return f"{number >> 24}.{(number >> 16) & 255}.{(number >> 8) & 255}.{number & 255}"
    return str(ipaddress.IPv6Address(number))


class _Pool:
    """Free addresses of one CIDR, handed out lowest first."""

    __slots__ = ("_cursor", "_last", "_used", "cidr", "exhausted", "network")

    def __init__(self, cidr: str, used: set[str], *, skip: int) -> None:
        self.cidr = cidr
        self.network = ipaddress.ip_network(cidr, strict=False)
        first = int(self.network.network_address)
        # Pod CIDRs skip the network address and the bridge/gateway (.1), as host-local
        # IPAM does; the service CIDR skips only the network address. No broadcast for v4.
        self._cursor = first + skip
        self._last = int(self.network.broadcast_address) - (1 if self.network.version == 4 else 0)
        self._used = used
        self.exhausted = False

    def __contains__(self, ip: str) -> bool:
        return ipaddress.ip_address(ip) in self.network

    def take(self) -> str | None:
        version = self.network.version
        while self._cursor <= self._last:
            ip = _ip_text(self._cursor, version)
            self._cursor += 1
            if ip not in self._used:
                self._used.add(ip)
                return ip
        self.exhausted = True
        return None


def place(
    pods: Iterable[Pod],
    services: Iterable[Service],
    topology: Topology,
    previous: Allocations | None = None,
) -> PlacementResult:
    """Give every pod a node and an IP and every ClusterIP service a VIP (see module doc)."""
    previous = previous or Allocations()
    problems: list[PlacementProblem] = []
    placed_pods = _place_pods(list(pods), topology, previous, problems)
    placed_services = _place_services(list(services), topology, previous, problems)
    return PlacementResult(placed_pods, placed_services, problems)


def _place_pods(
    pods: list[Pod],
    topology: Topology,
    previous: Allocations,
    problems: list[PlacementProblem],
) -> list[Pod]:
    used: set[str] = set()
    pools = {node.name: _Pool(node.pod_cidr, used, skip=2) for node in topology.nodes}
    load = dict.fromkeys(pools, 0)
    owner_of_ip: dict[str, ObjectKey] = {}
    kept: dict[int, Pod] = {}  # by id() of the input pod, so input order can be restored
    pending: list[Pod] = []
    # Pass 1, input order: addresses written in the input are reserved first.
    for pod in pods:
        if pod.ip is None:
            pending.append(pod)
            continue
        if not pod.host_network:  # host-network pods share their node's address
            owner = owner_of_ip.get(pod.ip)
            if owner is not None:
                message = f"{pod.ip} is already used by {owner}"
                problems.append(PlacementProblem(pod.key, "status.podIP", message))
                continue
            for address in pod.ips:
                owner_of_ip[address] = pod.key
                used.add(address)
        node_name = pod.node_name
        placed = pod
        if node_name is None:
            node_name = next((n.name for n in topology.nodes if pod.ip in pools[n.name]), None)
            node_name = node_name or _least_loaded(load, pools, need_ip=False)
            placed = dataclasses.replace(pod, node_name=node_name, placement=PodPlacement.NODE)
        if node_name in load:
            load[node_name] += 1
        kept[id(pod)] = placed
    # Pass 2, by name: pods the previous load placed keep their node and address.
    pending.sort(key=lambda p: (p.meta.namespace, p.meta.name))
    fresh: list[Pod] = []
    for pod in pending:
        before = previous.pod(pod.key)
        if before is not None and _still_fits(pod, *before, pools, used):
            node_name, ip = before
            if ip is not None:
                used.add(ip)
            load[node_name] += 1
            kept[id(pod)] = _with(pod, node_name, ip, topology)
        else:
            fresh.append(pod)
    # Pass 3, by name: everything else gets the least-loaded node and its next free address.
    for pod, placed in _place_fresh(fresh, topology, load, pools, problems):
        kept[id(pod)] = placed
    return [kept[id(pod)] for pod in pods if id(pod) in kept]


def _place_fresh(
    fresh: list[Pod],
    topology: Topology,
    load: dict[str, int],
    pools: dict[str, _Pool],
    problems: list[PlacementProblem],
) -> list[tuple[Pod, Pod]]:
    """Pass 3, in the given order: (pod, placed pod) for each pod that fits."""
    out = []
    for pod in fresh:
        if pod.node_name is not None and pod.node_name not in pools:
            known = ", ".join(pools)
            message = f"unknown node {pod.node_name!r} (topology: {known})"
            problems.append(PlacementProblem(pod.key, "spec.nodeName", message))
            continue
        if pod.host_network:
            target = pod.node_name or _least_loaded(load, pools, need_ip=False)
            assert target is not None
            ip = None
        else:
            target, ip = _allocate(pod.node_name, load, pools)
            if ip is None:
                where = f"node {target} ({pools[target].cidr})" if target else "any node"
                if not target:
                    ranges = ", ".join(f"{name} {pool.cidr}" for name, pool in pools.items())
                    where = f"any node ({ranges})"
                problems.append(
                    PlacementProblem(pod.key, "status.podIP", f"no free pod IP on {where}")
                )
                continue
        load[target] += 1
        out.append((pod, _with(pod, target, ip, topology)))
    return out


def place_added(
    pods: Iterable[Pod],
    services: Iterable[Service],
    topology: Topology,
    placed_pods: Iterable[Pod],
    placed_services: Iterable[Service],
) -> PlacementResult:
    """Places new pods and services (none with an address written) among placed ones that
    keep their places: what `place` does for them when the previous load placed everything
    else."""
    used: set[str] = set()
    pools = {node.name: _Pool(node.pod_cidr, used, skip=2) for node in topology.nodes}
    load = dict.fromkeys(pools, 0)
    for pod in placed_pods:
        if not pod.host_network:
            used.update(pod.ips)
        if pod.node_name in load:
            load[pod.node_name] += 1
    problems: list[PlacementProblem] = []
    fresh = sorted(pods, key=lambda p: (p.meta.namespace, p.meta.name))
    placed = _place_fresh(fresh, topology, load, pools, problems)
    vips = {ip for service in placed_services for ip in service.cluster_ips}
    pool = _Pool(topology.service_cidr, vips, skip=1)
    new_services = sorted(services, key=lambda s: (s.meta.namespace, s.meta.name))
    services_placed = _place_fresh_services(new_services, pool, topology, problems)
    return PlacementResult([p for _, p in placed], services_placed, problems)


def placement_inputs(obj: Pod | Service) -> tuple[object, ...]:
    """What placement reads of a pod or service besides its key: with the same inputs (and
    everything else the same) an object is placed exactly where it was."""
    if isinstance(obj, Pod):
        return obj.ip, obj.ips, obj.node_name, obj.host_network
    return obj.cluster_ip, obj.cluster_ips, obj.headless, obj.type


def place_again(pod: Pod, placed: Pod, allocations: Allocations, topology: Topology) -> Pod:
    """`pod` where `placed` (its previous version, same `placement_inputs`) was placed."""
    allocation = allocations.pod(pod.key)
    if allocation is not None:
        return _with(pod, *allocation, topology)
    if pod.node_name is None:  # the address was written, the node chosen (pass 1)
        return dataclasses.replace(pod, node_name=placed.node_name, placement=PodPlacement.NODE)
    return pod


def vip_again(service: Service, allocations: Allocations) -> Service:
    """`service` with the VIP its previous version (same `placement_inputs`) was given."""
    vip = allocations.service(service.key)
    return _with_vip(service, vip) if vip is not None else service


def _allocate(
    node_name: str | None, load: dict[str, int], pools: dict[str, _Pool]
) -> tuple[str, str | None]:
    """A node (the given one, else the least loaded with room) and its next free IP."""
    if node_name is not None:
        return node_name, pools[node_name].take()
    while True:
        target = _least_loaded(load, pools, need_ip=True)
        if target is None:
            return "", None
        ip = pools[target].take()
        if ip is not None:
            return target, ip


def _still_fits(
    pod: Pod, node_name: str, ip: str | None, pools: dict[str, _Pool], used: set[str]
) -> bool:
    """Whether a pod can keep the node and address the previous load gave it."""
    if node_name not in pools or pod.node_name not in (None, node_name):
        return False
    if pod.host_network:
        return ip is None
    return ip is not None and ip not in used and ip in pools[node_name]


def _with(pod: Pod, node_name: str, ip: str | None, topology: Topology) -> Pod:
    if ip is None:  # hostNetwork: the node's address
        node = topology.node(node_name)
        ip = node.address if node is not None else None
    # Spelled out rather than dataclasses.replace: this runs once per pod on every load.
    return Pod(
        meta=pod.meta,
        service_account=pod.service_account,
        node_name=node_name,
        ip=ip,
        ips=(ip,) if ip else (),
        host_network=pod.host_network,
        ports=pod.ports,
        phase=pod.phase,
        ready=pod.ready,
        placement=PodPlacement.ALLOCATED,
    )


def _least_loaded(load: dict[str, int], pools: dict[str, _Pool], *, need_ip: bool) -> str | None:
    best: str | None = None
    for name, count in load.items():
        if need_ip and pools[name].exhausted:
            continue
        if best is None or count < load[best]:
            best = name
    return best


def _place_services(
    services: list[Service],
    topology: Topology,
    previous: Allocations,
    problems: list[PlacementProblem],
) -> list[Service]:
    used: set[str] = set()
    owner_of_ip: dict[str, ObjectKey] = {}
    kept: dict[ObjectKey, Service] = {}
    pending: list[Service] = []
    for service in services:
        if service.cluster_ip is None:
            if service.headless or service.type == "ExternalName":
                kept[service.key] = service
            else:
                pending.append(service)
            continue
        owner = owner_of_ip.get(service.cluster_ip)
        if owner is not None:
            message = f"{service.cluster_ip} is already used by {owner}"
            problems.append(PlacementProblem(service.key, "spec.clusterIP", message))
            continue
        for ip in service.cluster_ips:
            owner_of_ip[ip] = service.key
            used.add(ip)
        kept[service.key] = service
    pool = _Pool(topology.service_cidr, used, skip=1)
    pending.sort(key=lambda s: (s.meta.namespace, s.meta.name))
    fresh: list[Service] = []
    for service in pending:
        vip = previous.service(service.key)
        if vip is not None and vip not in used and vip in pool:
            used.add(vip)
            kept[service.key] = _with_vip(service, vip)
        else:
            fresh.append(service)
    for service in _place_fresh_services(fresh, pool, topology, problems):
        kept[service.key] = service
    return [kept[s.key] for s in services if s.key in kept]


def _place_fresh_services(
    fresh: list[Service], pool: _Pool, topology: Topology, problems: list[PlacementProblem]
) -> list[Service]:
    """Pass 3 for services, in the given order: the next free VIP each."""
    placed: list[Service] = []
    for service in fresh:
        vip = pool.take()
        if vip is None:
            problems.append(
                PlacementProblem(
                    service.key,
                    "spec.clusterIP",
                    f"no free service IP in {topology.service_cidr}",
                )
            )
            continue
        placed.append(_with_vip(service, vip))
    return placed


def _with_vip(service: Service, vip: str) -> Service:
    return dataclasses.replace(service, cluster_ip=vip, cluster_ips=(vip,), placed=True)

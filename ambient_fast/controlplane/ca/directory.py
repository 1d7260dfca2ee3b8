"""Which workload identities run on which node: what node authorization asks.

`NodeDirectory` is the narrow question the CA asks (istiod answers it from its pod informer's
node+service-account index). `MeshNodeDirectory` answers it from the control plane's current
`Mesh` snapshot; `InMemoryNodeDirectory` is fed by hand (tests, small setups).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from ambient_fast.identity.spiffe import DEFAULT_TRUST_DOMAIN, Identity

if TYPE_CHECKING:
    from ambient_fast.controlplane.model import Mesh, Pod


class NodeDirectory(Protocol):
    """Which workload identities have at least one pod on a node (istiod's node+sa index)."""

    def identities_on(self, node: str) -> frozenset[Identity]: ...


class InMemoryNodeDirectory:
    """A `NodeDirectory` fed by hand: pods placed on and removed from nodes."""

    def __init__(self, pods: Iterable[tuple[str, Identity]] = ()) -> None:
        self._pods: defaultdict[str, Counter[Identity]] = defaultdict(Counter)
        # Answers are built once per change, not per certificate request.
        self._answers: dict[str, frozenset[Identity]] = {}
        for node, identity in pods:
            self.add_pod(node, identity)

    def add_pod(self, node: str, identity: Identity) -> None:
        self._pods[node][identity] += 1
        self._answers.pop(node, None)

    def remove_pod(self, node: str, identity: Identity) -> None:
        counts = self._pods.get(node)
        if counts is not None and counts[identity] > 0:
            counts[identity] -= 1
            if counts[identity] == 0:
                del counts[identity]
            self._answers.pop(node, None)

    def identities_on(self, node: str) -> frozenset[Identity]:
        answer = self._answers.get(node)
        if answer is None:
            answer = self._answers[node] = frozenset(self._pods.get(node, ()))
        return answer


class MeshNodeDirectory:
    """The identities of the pods on each node of the latest published `Mesh`.

    As istiod's index: every pod with a node counts, whatever its namespace's mesh mode,
    because a node proxy asks for a pod's identity before any traffic flows.
    """

    def __init__(self, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> None:
        self._trust_domain = trust_domain
        self._by_node: dict[str, frozenset[Identity]] = {}
        self._mesh: Mesh | None = None

    def update(self, mesh: Mesh) -> None:
        """Indexes a new snapshot (once per publish, not per certificate request). A Mesh
        derived from the last one (`Mesh.changes_since`) re-indexes only the nodes its
        changed pods ran on or run on."""
        changes = mesh.changes_since(self._mesh) if self._mesh is not None else None
        if changes is None or self._mesh is None:
            by_node: defaultdict[str, set[Identity]] = defaultdict(set)
            for pod in mesh.pods:
                if pod.node_name:
                    by_node[pod.node_name].add(self._identity(pod))
            self._by_node = {node: frozenset(ids) for node, ids in by_node.items()}
        else:
            nodes = set()
            for key in changes:
                if key.kind == "Pod":
                    for snapshot in (self._mesh, mesh):
                        found = snapshot.pod(key.namespace, key.name)
                        if found is not None and found.node_name:
                            nodes.add(found.node_name)
            if nodes:
                self._by_node = dict(self._by_node)
                for node in nodes:
                    ids = frozenset(self._identity(pod) for pod in mesh.pods_on_node(node))
                    if ids:
                        self._by_node[node] = ids
                    else:
                        self._by_node.pop(node, None)
        self._mesh = mesh

    def _identity(self, pod: Pod) -> Identity:
        return Identity.of(pod.meta.namespace, pod.service_account, self._trust_domain)

    def identities_on(self, node: str) -> frozenset[Identity]:
        return self._by_node.get(node, frozenset())

"""Which identities run on which node: by hand, and from the control plane's model."""

from __future__ import annotations

import textwrap

from ambient_fast.controlplane.ca import InMemoryNodeDirectory, MeshNodeDirectory
from ambient_fast.controlplane.model import LiveModel, SourceFile, load_sources
from ambient_fast.identity import Identity

SLEEP = Identity.of("default", "sleep")

PODS = """
apiVersion: v1
kind: Pod
metadata: {name: sleep-1, namespace: default}
spec: {serviceAccountName: sleep, nodeName: node-a}
---
apiVersion: v1
kind: Pod
metadata: {name: sleep-2, namespace: default}
spec: {serviceAccountName: sleep, nodeName: node-b}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop}
spec: {nodeName: node-a}
"""


def test_in_memory_directory_counts_pods() -> None:
    directory = InMemoryNodeDirectory([("node-a", SLEEP)])
    directory.add_pod("node-a", SLEEP)
    directory.remove_pod("node-a", SLEEP)
    assert directory.identities_on("node-a") == {SLEEP}
    directory.remove_pod("node-a", SLEEP)
    directory.remove_pod("node-a", SLEEP)  # one too many: ignored
    assert directory.identities_on("node-a") == frozenset()
    assert directory.identities_on("node-x") == frozenset()


def test_mesh_directory_follows_published_snapshots() -> None:
    directory = MeshNodeDirectory(trust_domain="example.org")
    loaded = load_sources([SourceFile("pods.yaml", textwrap.dedent(PODS))])
    assert len(loaded.mesh.pods) == 3
    directory.update(loaded.mesh)
    assert directory.identities_on("node-a") == {
        Identity.of("default", "sleep", "example.org"),
        Identity.of("shop", "default", "example.org"),  # no serviceAccountName: `default`
    }
    assert directory.identities_on("node-b") == {Identity.of("default", "sleep", "example.org")}
    # sleep-2 leaves node-b: the next snapshot no longer has it.
    documents = textwrap.dedent(PODS).split("---")
    without = "---".join(d for d in documents if "sleep-2" not in d)
    directory.update(load_sources([SourceFile("pods.yaml", without)]).mesh)
    assert directory.identities_on("node-b") == frozenset()


def test_mesh_directory_follows_edits_as_a_fresh_index_would() -> None:
    live = LiveModel()
    directory = MeshNodeDirectory(trust_domain="example.org")
    text = textwrap.dedent(PODS)
    directory.update(live.apply({"pods.yaml": SourceFile("pods.yaml", text)}).mesh)
    for old, new in [
        ("spec: {serviceAccountName: sleep, nodeName: node-b}", "spec: {nodeName: node-b}"),
        ("name: web, namespace: shop}\nspec: {nodeName: node-a}", "name: web, namespace: shop}"),
    ]:
        text = text.replace(old, new)
        mesh = live.apply({"pods.yaml": SourceFile("pods.yaml", text)}).mesh
        directory.update(mesh)
        fresh = MeshNodeDirectory(trust_domain="example.org")
        fresh.update(load_sources([SourceFile("pods.yaml", text)]).mesh)
        for node in ("node-a", "node-b"):
            assert directory.identities_on(node) == fresh.identities_on(node), (new, node)
    assert directory.identities_on("node-b") == {Identity.of("default", "default", "example.org")}

"""Edits take the incremental path (reparse the changed documents, patch the Mesh, translate
what the change reaches) and end exactly where a full reload and translation would: the same
Mesh, the same report, the same store contents, edit after edit."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from ambient_fast.controlplane.model import (
    Allocations,
    LiveModel,
    LoadResult,
    Mesh,
    Node,
    SourceFile,
    Topology,
    assemble,
    parse_file,
)
from ambient_fast.controlplane.translate import LiveTranslation, translate
from ambient_fast.xds.resources import ResourceStore

TOPOLOGY = Topology(
    (
        Node("node-a", "10.244.1.0/24", "172.18.0.2"),
        Node("node-b", "10.244.2.0/24", "172.18.0.3"),
        Node("node-c", "10.244.3.0/24", "172.18.0.4"),
    )
)

CLUSTER = """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio-waypoint}
spec: {controllerName: istio.io/mesh-controller}
---
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: PERMISSIVE}}
"""

APPS = """
# the apps namespace runs a waypoint, and uses it for everything
apiVersion: v1
kind: Namespace
metadata:
  name: apps
  labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: apps, labels: {istio.io/waypoint-for: all}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata:
  name: waypoint
  namespace: apps
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
spec:
  selector: {gateway.networking.k8s.io/gateway-name: waypoint}
  ports: [{port: 15008, name: mesh}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: apps}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, version: v1}}
    spec:
      serviceAccountName: web
      containers: [{name: web, image: web, ports: [{containerPort: 8080, name: http}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: apps}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http, name: http}, {port: 9090, name: metrics}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: apps, labels: {app: db, version: v1}}
spec:
  containers: [{name: db, image: db, ports: [{containerPort: 5432, name: pg}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-2, namespace: apps, labels: {app: db, version: v1}}
spec:
  containers: [{name: db, image: db, ports: [{containerPort: 5432, name: pg}]}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: apps}
spec:
  selector: {app: db}
  ports: [{port: 5432, targetPort: pg, name: tcp-pg}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db-from-web, namespace: apps}
spec:
  selector: {matchLabels: {app: db}}
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/apps/sa/web]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: canary-deny, namespace: apps}
spec:
  selector: {matchLabels: {version: v2}}
  action: DENY
  rules: [{to: [{operation: {ports: ["9090"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-get, namespace: apps}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: db-strict, namespace: apps}
spec:
  selector: {matchLabels: {app: db}}
  mtls: {mode: STRICT}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: apps}
spec:
  parentRefs: [{kind: Service, group: "", name: web, port: 80}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
"""

CLIENTS = """
apiVersion: v1
kind: Namespace
metadata: {name: clients, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: curl, namespace: clients, labels: {app: curl}}
spec: {containers: [{name: curl, image: curl}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: tester
  namespace: clients
  labels:
    app: tester
    istio.io/use-waypoint: waypoint
    istio.io/use-waypoint-namespace: apps
spec: {containers: [{name: t, image: t, ports: [{containerPort: 8000, name: http}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: pinned, namespace: clients, labels: {app: pinned}}
spec: {nodeName: node-c, containers: [{name: p, image: p}]}
status: {podIP: 10.244.3.77}
---
apiVersion: v1
kind: Service
metadata: {name: tester, namespace: clients}
spec:
  selector: {app: tester}
  ports: [{port: 80, targetPort: http, name: http}]
"""


def store_contents(store: ResourceStore) -> dict[str, dict[str, tuple[str, bytes]]]:
    return {
        type_url: {
            name: (resource.version, resource.resource.value)
            for name in store.names(type_url)
            if (resource := store.get(type_url, name)) is not None
        }
        for type_url in store.type_urls
    }


def mesh_view(mesh: Mesh) -> dict[str, Any]:
    """Everything the Mesh answers, through its public lookups (origins included)."""
    pods, services = mesh.pods, mesh.services
    label_queries = {(p.namespace, label, value) for p in pods for label, value in p.labels.items()}
    return {
        "objects": [(o.key, o, o.meta.origin) for o in mesh.objects()],
        "by_namespace": {ns: mesh.pods_in(ns) for ns in {p.namespace for p in pods}},
        "selected": {q: mesh.pods_selected_by(q[0], {q[1]: q[2]}) for q in sorted(label_queries)},
        "service_pods": {s.key: mesh.service_pods(s) for s in services},
        "services_of_pod": {p.key: mesh.services_of_pod(p) for p in pods},
        "by_ip": {ip: mesh.pod_by_ip(ip) for p in pods for ip in p.ips},
        "by_node": {n.name: mesh.pods_on_node(n.name) for n in mesh.topology.nodes},
        "by_vip": {vip: mesh.service_by_vip(vip) for s in services for vip in s.cluster_ips},
        "routes": {s.key: mesh.routes_for_service(s.namespace, s.name) for s in services},
        "allocations": mesh.allocations,
    }


@dataclass
class Pipeline:
    """The control plane's path (LiveModel -> LiveTranslation -> store) next to the reference:
    every file parsed anew, assembled with the last allocations, translated in full."""

    texts: dict[str, str]
    live: LiveModel = field(default_factory=lambda: LiveModel(TOPOLOGY))
    translation: LiveTranslation = field(default_factory=LiveTranslation)
    store: ResourceStore = field(default_factory=ResourceStore)
    allocations: Allocations | None = None
    incremental: list[bool] = field(default_factory=list)

    def start(self) -> None:
        self.edit(dict(self.texts))
        assert self.incremental == [False]

    def edit(self, changes: dict[str, str]) -> bool:
        """Applies the edit on both paths, checks they agree; whether it was incremental."""
        self.texts.update(changes)
        update = self.live.apply({path: SourceFile(path, text) for path, text in changes.items()})
        assert update.published
        published = self.translation.publish(update.mesh, self.store)
        self.incremental.append(published.incremental)

        files = [parse_file(SourceFile(path, self.texts[path])) for path in sorted(self.texts)]
        expected: LoadResult = assemble(files, TOPOLOGY, self.allocations)
        self.allocations = expected.mesh.allocations
        assert update.report == expected.report
        assert mesh_view(update.mesh) == mesh_view(expected.mesh)
        full = translate(expected.mesh)
        reference = ResourceStore()
        full.publish(reference)
        assert store_contents(self.store) == store_contents(reference)
        assert published.notes == tuple(full.notes.problems)
        return published.incremental


@pytest.fixture
def pipeline() -> Pipeline:
    texts = {
        "cluster.yaml": textwrap.dedent(CLUSTER),
        "apps.yaml": textwrap.dedent(APPS),
        "clients.yaml": textwrap.dedent(CLIENTS),
    }
    p = Pipeline(texts)
    p.start()
    return p


Change = Callable[[dict[str, str]], dict[str, str]]


def replace(file: str, old: str, new: str) -> Change:
    def change(texts: dict[str, str]) -> dict[str, str]:
        assert old in texts[file], old
        return {file: texts[file].replace(old, new, 1)}

    return change


def append(file: str, document: str) -> Change:
    return lambda texts: {file: texts[file] + "---\n" + textwrap.dedent(document).lstrip()}


def prepend(file: str, text: str) -> Change:
    return lambda texts: {file: text + texts[file]}


def drop(file: str, marker: str) -> Change:
    def change(texts: dict[str, str]) -> dict[str, str]:
        documents = texts[file].split("\n---\n")
        kept = [d for d in documents if marker not in d]
        assert len(kept) == len(documents) - 1, marker
        return {file: "\n---\n".join(kept)}

    return change


@dataclass(frozen=True)
class Edit:
    name: str
    change: Change
    patched: bool  # the model patched the last Mesh
    incremental: bool  # and the translation followed the changes only


DB_1 = "name: db-1, namespace: apps, labels: {app: db, version: v1}"
DB_1_V2 = DB_1.replace("v1", "v2")
DB_3 = """
    apiVersion: v1
    kind: Pod
    metadata: {name: db-3, namespace: apps, labels: {app: db, version: v1}}
    spec:
      containers: [{name: db, image: db, ports: [{containerPort: 5432, name: pg}]}]
"""
CURL_SERVICE = """
    apiVersion: v1
    kind: Service
    metadata: {name: curl, namespace: clients}
    spec: {selector: {app: curl}, ports: [{port: 8080}]}
"""
VIA_APPS_WAYPOINT = "istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: apps"
WAYPOINT_PORTS = "ports: [{port: 15008, name: mesh}]"
AMBIENT = "labels: {istio.io/dataplane-mode: ambient}"
STRAY_POD = "{apiVersion: v1, kind: Pod, metadata: {name: stray, namespace: nowhere}}\n"
WEB_ACCOUNT = "{apiVersion: v1, kind: ServiceAccount, metadata: {name: web, namespace: apps}}\n"

# In order: each edit applies to the files as the ones before left them.
EDITS = [
    Edit("pod label", replace("apps.yaml", DB_1, DB_1_V2), True, True),
    Edit(
        "pod leaves its waypoint",
        replace(
            "apps.yaml", "app: db, version: v2", "app: db, version: v2, istio.io/use-waypoint: none"
        ),
        True,
        True,
    ),
    Edit(
        "pod leaves a service for another",
        replace("apps.yaml", "{app: db, version: v2,", "{app: web, version: v2,"),
        True,
        True,
    ),
    Edit(
        "pod joins a waypoint",
        replace(
            "clients.yaml", "labels: {app: curl}", f"labels: {{app: curl, {VIA_APPS_WAYPOINT}}}"
        ),
        True,
        True,
    ),
    Edit("pod added", append("apps.yaml", DB_3), True, True),
    Edit("pod removed", drop("apps.yaml", "name: db-2,"), True, True),
    Edit("replicas up", replace("apps.yaml", "replicas: 2", "replicas: 3"), True, True),
    Edit(
        "template edit renames the pods",
        replace("apps.yaml", "{app: web, version: v1}", "{app: web, version: v3}"),
        True,
        True,
    ),
    Edit("replicas down", replace("apps.yaml", "replicas: 3", "replicas: 1"), True, True),
    Edit(
        "service port",
        replace("apps.yaml", "{port: 9090, name: metrics}", "{port: 9091, name: metrics}"),
        True,
        True,
    ),
    Edit(
        "service selector",
        replace("clients.yaml", "selector: {app: tester}", "selector: {app: curl}"),
        True,
        True,
    ),
    Edit("service added", append("clients.yaml", CURL_SERVICE), True, True),
    Edit(
        "service joins a waypoint",
        replace(
            "clients.yaml",
            "{name: curl, namespace: clients}",
            f"{{name: curl, namespace: clients, labels: {{{VIA_APPS_WAYPOINT}}}}}",
        ),
        True,
        False,
    ),
    Edit(
        "the waypoint's own service",
        replace(
            "apps.yaml",
            WAYPOINT_PORTS,
            WAYPOINT_PORTS.replace("}]", "}, {port: 15021, name: status}]"),
        ),
        True,
        False,
    ),
    Edit("policy", replace("apps.yaml", "methods: [GET]", "methods: [GET, HEAD]"), True, False),
    Edit(
        "namespace label",
        replace("clients.yaml", AMBIENT, AMBIENT.replace("ambient", "none")),
        True,
        False,
    ),
    Edit("documents move down", prepend("apps.yaml", "# a comment\n# another\n"), True, True),
    Edit("comment only", prepend("apps.yaml", "# a third\n"), True, True),
    Edit(
        "written address",
        replace("clients.yaml", "podIP: 10.244.3.77", "podIP: 10.244.3.78"),
        False,
        False,
    ),
    Edit("pod in an undeclared namespace", append("clients.yaml", STRAY_POD), False, False),
    Edit("service account added", append("cluster.yaml", WEB_ACCOUNT), True, False),
    Edit("document removed", drop("clients.yaml", "name: stray"), False, False),
    Edit("pod label again", replace("apps.yaml", "version: v2", "version: v4"), True, True),
]


def test_every_edit_matches_a_full_reload_and_translation(pipeline: Pipeline) -> None:
    for edit in EDITS:
        before = pipeline.live.result
        assert before is not None
        incremental = pipeline.edit(edit.change(pipeline.texts))
        after = pipeline.live.result
        assert after is not None
        patched = after.mesh.changes_since(before.mesh) is not None
        assert (patched, incremental) == (edit.patched, edit.incremental), edit.name


def test_a_pod_edit_updates_only_its_workload(pipeline: Pipeline) -> None:
    changed: list[frozenset[str]] = []
    pipeline.store.subscribe(lambda change: changed.append(change.names))
    assert pipeline.edit(replace("apps.yaml", DB_1, DB_1_V2)(pipeline.texts))
    assert changed == [frozenset({"Kubernetes//Pod/apps/db-1"})]


def test_a_broken_edit_then_its_fix(pipeline: Pipeline) -> None:
    broken = pipeline.live.apply({"apps.yaml": SourceFile("apps.yaml", "kind: [")})
    assert not broken.published
    assert pipeline.edit(replace("apps.yaml", DB_1, DB_1_V2)(pipeline.texts))

"""A seeded, realistic mesh as YAML text: namespaces, apps, services, waypoints, policies.

One file per namespace (plus `cluster.yaml` for the cluster-wide documents), written the way
users write manifests: block YAML with the fields Kubernetes needs and the model ignores
(images, resources, probes), so YAML loading costs what it would on real input. Every app has
a ServiceAccount, a Deployment (v1, and a v2 canary for larger apps) or a few bare Pods, and
a Service with named and numeric targetPorts. Some namespaces have a waypoint (Gateway plus
its Deployment and Service, counted in the totals); AuthorizationPolicies mix namespace-wide,
selector and targetRef policies with from/to/when; some PeerAuthentications are STRICT.

The pod, service and policy totals are exact. `SyntheticMesh.edit_probe(version)` rewrites the
one file holding the probe pod (a bare Pod) with a new `version` label, as a user's edit.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml  # type: ignore[import-untyped,unused-ignore]

from ambient_fast.controlplane.model import Node, SourceFile, Topology

# libyaml's emitter when PyYAML has it (same text, much faster).
_Dumper: Any = getattr(yaml, "CSafeDumper", None) or yaml.SafeDumper

ROOT_NAMESPACE = "istio-system"  # istiod's default root namespace
WAYPOINT = "waypoint"
WAYPOINT_CLASS = "istio-waypoint"
TRUST_DOMAIN = "cluster.local"
# Every 4th namespace runs a waypoint; the next one uses it through use-waypoint-namespace.
_WAYPOINT_EVERY = 4
# Apps of at least this many pods also run a one-replica v2 canary Deployment.
_CANARY_FROM = 4
_BARE_POD_SHARE = 0.08  # apps written as bare Pods (no controller)
_CANARY_SERVICE_SHARE = 0.3  # canaries that also get their own Service


@dataclass(frozen=True, slots=True)
class MeshShape:
    pods: int = 10_000
    services: int = 2_000
    policies: int = 1_000
    namespaces: int = 20
    # About 100 pods per node (Kubernetes allows 110), one /24 pod CIDR each.
    nodes: int = 100
    seed: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.namespaces <= 250 or not 1 <= self.nodes <= 250:
            raise ValueError("namespaces and nodes must be 1..250")
        if self.services < 2 * self.namespaces or self.pods < 2 * self.services:
            raise ValueError("need at least 2 services per namespace and 2 pods per service")
        if self.policies < 4 * self.namespaces:
            raise ValueError("need at least 4 policies per namespace")
        if self.pods > 200 * self.nodes:
            raise ValueError(f"{self.pods} pods do not fit on {self.nodes} nodes")

    def topology(self) -> Topology:
        return topology(self.nodes)


def topology(nodes: int) -> Topology:
    """`nodes` nodes, node-000 on 10.244.0.0/24 and so on (kind's per-node /24s)."""
    return Topology(
        tuple(
            Node(f"node-{i:03d}", f"10.244.{i}.0/24", f"172.18.{i // 250}.{i % 250 + 2}")
            for i in range(nodes)
        )
    )


@dataclass(slots=True)
class _App:
    name: str
    namespace: str
    pods: int
    kind: str  # "web" (one named port), "api" (named + numeric grpc), "db" (numeric tcp)
    bare: bool
    canary: bool  # a one-replica v2 Deployment besides v1
    canary_service: bool = False  # and a Service selecting only v2


@dataclass(frozen=True, slots=True)
class Probe:
    """The bare pod that `edit_probe` relabels."""

    path: str
    index: int  # position of its document in the file
    namespace: str
    name: str
    app: _App

    @property
    def uid(self) -> str:
        return f"Kubernetes//Pod/{self.namespace}/{self.name}"


@dataclass(slots=True)
class Counts:
    pods: int = 0
    services: int = 0
    policies: int = 0
    peer_authentications: int = 0
    documents: int = 0
    yaml_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "pods": self.pods,
            "services": self.services,
            "authorization_policies": self.policies,
            "peer_authentications": self.peer_authentications,
            "documents": self.documents,
            "yaml_bytes": self.yaml_bytes,
        }


def _dump(document: dict[str, Any]) -> str:
    text: str = yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
    return text


def _split(total: int, parts: int, rng: random.Random, minimum: int = 1) -> list[int]:
    """`total` as `parts` positive integers with a long tail (a few big apps, many small)."""
    weights = [rng.lognormvariate(0, 0.8) for _ in range(parts)]
    spare = total - minimum * parts
    scale = spare / sum(weights)
    shares = [minimum + int(w * scale) for w in weights]
    for i in rng.sample(range(parts), total - sum(shares)):
        shares[i] += 1
    return shares


class SyntheticMesh:
    """The mesh's files; deterministic for a given `MeshShape`."""

    def __init__(self, shape: MeshShape | None = None) -> None:
        self.shape = shape or MeshShape()
        self.topology = self.shape.topology()
        self.counts = Counts()
        self._rng = random.Random(self.shape.seed)
        self._documents: dict[str, list[str]] = {}
        self._probe: Probe | None = None
        self._build()
        assert self._probe is not None
        self.probe: Probe = self._probe

    # -- public ---------------------------------------------------------------------------

    def sources(self) -> list[SourceFile]:
        return [SourceFile(path, "---\n".join(docs)) for path, docs in self._documents.items()]

    def edit_probe(self, version: str) -> SourceFile:
        """The probe pod's file with the pod's `version` label set to `version`."""
        probe = self.probe
        documents = list(self._documents[probe.path])
        labels = {**self._pod_labels(probe.app, "v1"), "version": version}
        documents[probe.index] = _dump(self._bare_pod(probe.app, probe.name, labels))
        return SourceFile(probe.path, "---\n".join(documents))

    # -- building -------------------------------------------------------------------------

    def namespace_names(self) -> list[str]:
        return [f"ns-{i:02d}" for i in range(self.shape.namespaces)]

    def _build(self) -> None:
        shape, rng = self.shape, self._rng
        names = self.namespace_names()
        waypoint_ns = [i % _WAYPOINT_EVERY == 0 for i in range(shape.namespaces)]
        services = _split(shape.services, shape.namespaces, rng, minimum=2)
        # Pods follow services (about the same pods per service in every namespace).
        pods = [shape.pods * s // shape.services for s in services]
        pods[0] += shape.pods - sum(pods)
        policies = [shape.policies // shape.namespaces] * shape.namespaces
        policies[0] += shape.policies - sum(policies)
        self._add("cluster.yaml", self._cluster_documents(names))
        for i, ns in enumerate(names):
            docs: list[dict[str, Any]] = [self._namespace(i, ns, waypoint_ns)]
            path = f"{ns}.yaml"
            apps = self._apps(ns, services[i], pods[i], waypoint_ns[i])
            if waypoint_ns[i]:
                docs += self._waypoint(ns, serves="all" if i == 0 else None)
            for app in apps:
                docs += self._app_documents(path, len(docs), app, waypoint_ns[i], names)
            docs += self._policies(ns, apps, policies[i], names, waypoint_ns[i])
            if i % 3 == 0:
                docs.append(self._peer_authentication(ns, "default", "STRICT"))
            self._add(path, docs)

    def _add(self, path: str, documents: list[dict[str, Any]]) -> None:
        texts = [_dump(d) for d in documents]
        self._documents[path] = texts
        self.counts.documents += len(texts)
        self.counts.yaml_bytes += sum(len(t) + 4 for t in texts)

    def _cluster_documents(self, names: list[str]) -> list[dict[str, Any]]:
        return [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": ROOT_NAMESPACE},
            },
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "GatewayClass",
                "metadata": {"name": WAYPOINT_CLASS},
                "spec": {"controllerName": "istio.io/mesh-controller"},
            },
            # Mesh-wide PERMISSIVE (the default, written out as clusters do).
            self._peer_authentication(ROOT_NAMESPACE, "default", "PERMISSIVE"),
        ]

    def _namespace(self, index: int, name: str, waypoint_ns: list[bool]) -> dict[str, Any]:
        labels = {"istio.io/dataplane-mode": "ambient", "team": f"team-{index % 7}"}
        if waypoint_ns[index]:
            labels["istio.io/use-waypoint"] = WAYPOINT
        elif index > 0 and waypoint_ns[index - 1]:
            labels["istio.io/use-waypoint"] = WAYPOINT
            labels["istio.io/use-waypoint-namespace"] = f"ns-{index - 1:02d}"
        return {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": labels},
        }

    def _apps(self, ns: str, services: int, pods: int, has_waypoint: bool) -> list[_App]:
        """Apps whose Services (plus canary Services and the waypoint's) number `services`."""
        rng = self._rng
        if has_waypoint:
            services, pods = services - 1, pods - 1
        # Canary services come out of the total; guess, then settle on an exact split.
        apps_count = max(1, round(services / (1 + _CANARY_SERVICE_SHARE * 0.35)))
        while True:
            sizes = _split(pods, apps_count, rng, minimum=2)
            canaries = [s >= _CANARY_FROM for s in sizes]
            canary_services = services - apps_count
            if 0 <= canary_services <= sum(canaries):
                break
            apps_count += 1 if canary_services > sum(canaries) else -1
        with_service = set(rng.sample([i for i, c in enumerate(canaries) if c], canary_services))
        apps = []
        for i, size in enumerate(sizes):
            kind = rng.choices(("web", "api", "db"), (0.6, 0.25, 0.15))[0]
            app = _App(
                name=f"{kind}-{i:03d}",
                namespace=ns,
                pods=size,
                kind=kind,
                bare=rng.random() < _BARE_POD_SHARE,
                canary=canaries[i],
                canary_service=i in with_service,
            )
            apps.append(app)
        return apps

    def _pod_labels(self, app: _App, version: str) -> dict[str, str]:
        tier = {"web": "frontend", "api": "backend", "db": "data"}[app.kind]
        return {"app": app.name, "version": version, "tier": tier}

    def _containers(self, app: _App) -> list[dict[str, Any]]:
        ports: list[dict[str, Any]] = {
            "web": [{"name": "http", "containerPort": 8080}],
            "api": [
                {"name": "http", "containerPort": 8080},
                {"name": "grpc", "containerPort": 9090},
            ],
            "db": [{"name": "tcp", "containerPort": 5432}],
        }[app.kind]
        return [
            {
                "name": app.name,
                "image": f"registry.example.com/{app.namespace}/{app.name}:1.{len(app.name)}.0",
                "ports": [*ports, {"name": "metrics", "containerPort": 15090}],
                "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "APP", "value": app.name}],
                "resources": {
                    "requests": {"cpu": "100m", "memory": "128Mi"},
                    "limits": {"memory": "256Mi"},
                },
                "readinessProbe": {
                    "tcpSocket": {"port": ports[0]["containerPort"]},
                    "periodSeconds": 5,
                },
            }
        ]

    def _pod_spec(self, app: _App) -> dict[str, Any]:
        return {"serviceAccountName": app.name, "containers": self._containers(app)}

    def _deployment(
        self, app: _App, name: str, version: str, replicas: int, labels: dict[str, str]
    ) -> dict[str, Any]:
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": app.namespace, "labels": {"app": app.name}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": app.name, "version": version}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": self._pod_spec(app),
                },
            },
        }

    def _bare_pod(self, app: _App, name: str, labels: dict[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": app.namespace, "labels": labels},
            "spec": self._pod_spec(app),
        }

    def _service(self, app: _App, name: str, selector: dict[str, str]) -> dict[str, Any]:
        ports: list[dict[str, Any]] = {
            "web": [{"name": "http", "port": 80, "targetPort": "http"}],
            "api": [
                {"name": "http", "port": 80, "targetPort": "http"},
                {"name": "grpc", "port": 9090, "targetPort": 9090, "appProtocol": "grpc"},
            ],
            "db": [{"name": "tcp-postgres", "port": 5432, "targetPort": 5432}],
        }[app.kind]
        labels = {"app": app.name}
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": app.namespace, "labels": labels},
            "spec": {"selector": selector, "ports": ports},
        }

    def _app_documents(
        self, path: str, position: int, app: _App, has_waypoint: bool, names: list[str]
    ) -> Iterator[dict[str, Any]]:
        rng = self._rng
        yield {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": app.name, "namespace": app.namespace},
        }
        service = self._service(app, app.name, {"app": app.name})
        if has_waypoint and rng.random() < 0.1:
            service["metadata"]["labels"]["istio.io/use-waypoint"] = "none"
        elif not has_waypoint and rng.random() < 0.05:
            # A waypoint in another namespace, named on the Service itself.
            service["metadata"]["labels"]["istio.io/use-waypoint"] = WAYPOINT
            service["metadata"]["labels"]["istio.io/use-waypoint-namespace"] = names[0]
        yield service
        self.counts.services += 1
        stable = app.pods - (1 if app.canary else 0)
        if app.bare:
            for n in range(stable):
                name = f"{app.name}-{n}"
                if self._probe is None and app.namespace != names[0]:
                    index = position + 2 + n
                    self._probe = Probe(path, index, app.namespace, name, app)
                yield self._bare_pod(app, name, self._pod_labels(app, "v1"))
        else:
            labels = self._pod_labels(app, "v1")
            yield self._deployment(app, f"{app.name}-v1", "v1", stable, labels)
        self.counts.pods += stable
        if app.canary:
            yield self._deployment(app, f"{app.name}-v2", "v2", 1, self._pod_labels(app, "v2"))
            self.counts.pods += 1
            if app.canary_service:
                yield self._service(app, f"{app.name}-canary", {"app": app.name, "version": "v2"})
                self.counts.services += 1

    def _waypoint(self, ns: str, serves: str | None) -> list[dict[str, Any]]:
        """The Gateway and what istiod would deploy for it (one pod, one Service)."""
        gateway_labels = {"istio.io/waypoint-for": serves} if serves else {}
        owned = {"gateway.networking.k8s.io/gateway-name": WAYPOINT}
        self.counts.pods += 1
        self.counts.services += 1
        return [
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "Gateway",
                "metadata": {"name": WAYPOINT, "namespace": ns, "labels": gateway_labels},
                "spec": {
                    "gatewayClassName": WAYPOINT_CLASS,
                    "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
                },
            },
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": WAYPOINT, "namespace": ns, "labels": owned},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": owned},
                    "template": {
                        "metadata": {"labels": {**owned, "istio.io/dataplane-mode": "none"}},
                        "spec": {
                            "serviceAccountName": WAYPOINT,
                            "containers": [
                                {
                                    "name": "istio-proxy",
                                    "image": "docker.io/istio/proxyv2:1.24.0",
                                    "ports": [
                                        {"name": "mesh", "containerPort": 15008},
                                        {"name": "status-port", "containerPort": 15021},
                                    ],
                                }
                            ],
                        },
                    },
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": WAYPOINT, "namespace": ns, "labels": owned},
                "spec": {
                    "selector": owned,
                    "ports": [
                        {"name": "mesh", "port": 15008, "targetPort": 15008},
                        {"name": "status-port", "port": 15021, "targetPort": 15021},
                    ],
                },
            },
        ]

    # -- security ---------------------------------------------------------------------------

    def _principal(self, names: list[str], apps: list[_App]) -> str:
        """Some app's identity (accounts need not exist: policies often name future ones)."""
        return f"{TRUST_DOMAIN}/ns/{self._rng.choice(names)}/sa/{self._rng.choice(apps).name}"

    def _policy(
        self, ns: str, name: str, spec: dict[str, Any], dry_run: bool = False
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "namespace": ns}
        if dry_run:
            meta["annotations"] = {"istio.io/dry-run": "true"}
        self.counts.policies += 1
        return {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": meta,
            "spec": spec,
        }

    def _selector_rule(self, app: _App, names: list[str], apps: list[_App]) -> dict[str, Any]:
        rng = self._rng
        rule: dict[str, Any] = {}
        choice = rng.random()
        if choice < 0.5:
            principals = sorted({self._principal(names, apps) for _ in range(rng.randint(1, 3))})
            rule["from"] = [{"source": {"principals": principals}}]
        elif choice < 0.8:
            rule["from"] = [{"source": {"namespaces": sorted(set(rng.sample(names, 2)))}}]
        else:
            rule["from"] = [{"source": {"ipBlocks": [f"10.244.{rng.randrange(250)}.0/24"]}}]
        port = {"web": "8080", "api": rng.choice(("8080", "9090")), "db": "5432"}[app.kind]
        if app.kind == "web" and rng.random() < 0.3:
            # HTTP attributes: the node proxy drops this rule (ALLOW), the waypoint keeps it.
            rule["to"] = [{"operation": {"methods": ["GET", "HEAD"], "paths": ["/api/*"]}}]
        else:
            rule["to"] = [{"operation": {"ports": [port]}}]
        if rng.random() < 0.25:
            rule["when"] = [
                rng.choice(
                    (
                        {"key": "source.namespace", "values": [rng.choice(names)]},
                        {"key": "destination.port", "values": [port]},
                        {"key": "source.ip", "notValues": ["10.0.0.0/8"]},
                        {"key": "request.headers[x-tenant]", "values": ["acme", "globex"]},
                    )
                )
            ]
        return rule

    def _policies(
        self, ns: str, apps: list[_App], count: int, names: list[str], has_waypoint: bool
    ) -> list[dict[str, Any]]:
        rng = self._rng
        docs = [
            self._policy(
                ns,
                "allow-from-own-namespace",
                {"rules": [{"from": [{"source": {"namespaces": [ns, names[0]]}}]}]},
            ),
            self._policy(
                ns,
                "deny-db-from-elsewhere",
                {
                    "action": "DENY",
                    "rules": [
                        {
                            "from": [{"source": {"notNamespaces": [ns]}}],
                            "to": [{"operation": {"ports": ["5432"]}}],
                        }
                    ],
                },
            ),
        ]
        targeted = max(1, (count - 2) // 5)
        for i in range(count - 2 - targeted):
            app = apps[i % len(apps)]
            action = "DENY" if rng.random() < 0.15 else "ALLOW"
            if action == "DENY":
                rules = [
                    {
                        "from": [{"source": {"notPrincipals": [f"{TRUST_DOMAIN}/ns/{ns}/sa/*"]}}],
                        "to": [{"operation": {"paths": ["/admin/*"], "ports": ["8080"]}}],
                    }
                ]
            else:
                rules = [self._selector_rule(app, names, apps) for _ in range(rng.randint(1, 3))]
            spec = {
                "selector": {"matchLabels": {"app": app.name}},
                "action": action,
                "rules": rules,
            }
            docs.append(self._policy(ns, f"{app.name}-{i:03d}", spec, dry_run=rng.random() < 0.03))
        for i in range(targeted):
            app = apps[rng.randrange(len(apps))]
            ref = (
                {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": WAYPOINT}
                if has_waypoint and i % 4 == 0
                else {"group": "", "kind": "Service", "name": app.name}
            )
            spec = {
                "targetRefs": [ref],
                "action": "ALLOW",
                "rules": [
                    {
                        "from": [{"source": {"principals": [self._principal(names, apps)]}}],
                        "to": [{"operation": {"methods": ["GET", "POST"], "paths": ["/v1/*"]}}],
                        "when": [{"key": "request.auth.claims[groups]", "values": ["admins"]}],
                    }
                ],
            }
            docs.append(self._policy(ns, f"l7-{app.name}-{i:03d}", spec))
        return docs

    def _peer_authentication(self, ns: str, name: str, mode: str) -> dict[str, Any]:
        self.counts.peer_authentications += 1
        return {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"mtls": {"mode": mode}},
        }

"""Inline-YAML meshes for translation tests: text in, resources (as JSON dicts) out."""

from __future__ import annotations

import textwrap
from typing import Any

from google.protobuf import json_format

from ambient_fast.controlplane.model import SourceFile, load_sources
from ambient_fast.controlplane.translate.translate import TranslateOptions, Translation, translate

GATEWAY_CLASS = """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio-waypoint}
spec: {controllerName: istio.io/mesh-controller}
"""


def waypoint(name: str, namespace: str, serves: str | None = None) -> str:
    labels = f"labels: {{istio.io/waypoint-for: {serves}}}" if serves else ""
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: {name}
  namespace: {namespace}
  {labels}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
"""


def namespace(name: str, **labels: str) -> str:
    rendered = ", ".join(
        f"{k}: {v}" for k, v in {"istio.io/dataplane-mode": "ambient", **labels}.items()
    )
    return f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {name}, labels: {{{rendered}}}}}
"""


def app(name: str, ns: str, service_labels: str = "", pod_labels: str = "") -> str:
    """A pod and its service (port 80 -> 8080)."""
    return f"""
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels: {{app: {name}{", " + pod_labels if pod_labels else ""}}}
spec:
  containers: [{{name: app, image: echo, ports: [{{containerPort: 8080, name: http}}]}}]
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {ns}
  labels: {{{service_labels}}}
spec:
  selector: {{app: {name}}}
  ports: [{{port: 80, targetPort: http, name: http}}]
"""


def translate_yaml(*documents: str, options: TranslateOptions | None = None) -> Translation:
    text = "\n---\n".join(textwrap.dedent(d) for d in documents)
    result = load_sources([SourceFile("mesh.yaml", text)])
    assert not result.report.errors, [str(e) for e in result.report.errors]
    return translate(result.mesh, options)


def as_json(message: Any) -> dict[str, Any]:
    rendered: dict[str, Any] = json_format.MessageToDict(message)
    return rendered


def service_json(t: Translation, ns: str, name: str) -> dict[str, Any]:
    return as_json(t.addresses[f"{ns}/{name}.{ns}.svc.cluster.local"])["service"]  # type: ignore[no-any-return]


def workload_json(t: Translation, ns: str, name: str) -> dict[str, Any]:
    return as_json(t.addresses[f"Kubernetes//Pod/{ns}/{name}"])["workload"]  # type: ignore[no-any-return]

"""Values that repeat on many objects are held once: label maps, port lists, names."""

from __future__ import annotations

from model_helpers import load

from ambient_fast.controlplane.model.core import ContainerPort
from ambient_fast.controlplane.model.sharing import SharedMaps, SharedValues

APPS = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, version: v1}}
    spec:
      serviceAccountName: web
      containers: [{name: web, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: default}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers: [{name: api, ports: [{name: http, containerPort: 8080}]}]
"""


def test_equal_label_maps_ports_and_names_are_one_object_each() -> None:
    result = load(APPS)
    assert result.report.ok, result.report
    mesh = result.mesh
    service = mesh.service("default", "web")
    web, api = mesh.deployment("default", "web"), mesh.deployment("default", "api")
    assert service is not None and web is not None and api is not None
    assert service.selector is web.selector is service.labels is web.labels
    assert web.template.spec.ports is api.template.spec.ports
    pods = mesh.pods_in("default")
    assert len(pods) == 3 and pods[0].ports is pods[-1].ports
    web_pod = next(p for p in pods if p.labels.get("app") == "web")
    assert web_pod.service_account is web.name  # interned: one string


def test_the_tables_are_bounded_and_keep_the_order_written() -> None:
    ports: SharedValues[tuple[ContainerPort, ...]] = SharedValues(limit=2)
    first = (ContainerPort(80),)
    assert ports.get(first) is first and ports.get((ContainerPort(80),)) is first
    ports.get((ContainerPort(81),))
    ports.get((ContainerPort(82),))  # the oldest entry goes
    assert ports.get((ContainerPort(80),)) is not first

    maps = SharedMaps(limit=8)
    labels = {"a": "1", "b": "2"}
    assert maps.get(labels) is labels and maps.get({"a": "1", "b": "2"}) is labels
    reordered = {"b": "2", "a": "1"}
    assert maps.get(reordered) is reordered  # equal, but written in another order

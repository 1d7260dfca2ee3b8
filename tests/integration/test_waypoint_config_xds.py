"""The waypoint L7 config over real delta xDS: YAML files -> control plane -> a gRPC client
subscribed to our WaypointConfig type, which is pushed again when an attached policy changes."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from xds_harness import ads_client

from ambient_fast.controlplane.model import ModelWatcher
from ambient_fast.controlplane.run import ControlPlane
from ambient_fast.controlplane.translate import TranslateOptions
from ambient_fast.policy import Request
from ambient_fast.policy.request import HttpAttributes
from ambient_fast.waypoint import WaypointView, load_waypoint_config
from ambient_fast.xds.proto.discovery_pb2 import DeltaDiscoveryResponse
from ambient_fast.xds.proto.waypoint_pb2 import WaypointConfig
from ambient_fast.xds.resources import WAYPOINT_CONFIG_TYPE_URL
from ambient_fast.xds.server import XdsServer

MESH = """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio-waypoint}
spec: {controllerName: istio.io/mesh-controller}
---
apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: apps}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: apps, labels: {istio.io/use-waypoint: waypoint}}
spec:
  selector: {app: reviews}
  ports: [{port: 80, name: http}]
"""
POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-methods, namespace: apps}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  rules: [{to: [{operation: {methods: [METHOD]}}]}]
"""


def views(response: DeltaDiscoveryResponse) -> dict[str, WaypointView]:
    out = {}
    for resource in response.resources:
        assert resource.resource.type_url == WAYPOINT_CONFIG_TYPE_URL
        out[resource.name] = load_waypoint_config(
            WaypointConfig.FromString(resource.resource.value)
        )
    return out


def allowed(view: WaypointView, method: str) -> bool:
    request = Request(
        source_ip=ipaddress.ip_address("10.0.0.9"),
        destination_ip=ipaddress.ip_address("10.96.0.10"),
        destination_port=80,
        source_identity="spiffe://cluster.local/ns/apps/sa/productpage",
        http=HttpAttributes(method, "/reviews/1", "reviews.apps.svc.cluster.local"),
    )
    return view.authorize(("apps", "reviews"), request).allowed


async def test_a_waypoint_receives_its_config_and_a_push_when_an_attached_policy_changes(
    tmp_path: Path,
) -> None:
    (tmp_path / "mesh.yaml").write_text(MESH)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.replace("METHOD", "GET"))
    plane = ControlPlane(ModelWatcher([tmp_path]), TranslateOptions())
    plane.watcher.poll()
    server = XdsServer(plane.store, ssl=None)
    await server.start("127.0.0.1", 0)
    try:
        async with ads_client(server.port) as client:
            await client.request(WAYPOINT_CONFIG_TYPE_URL, subscribe=("apps/waypoint",))
            first = await client.recv()
            view = views(first)["apps/waypoint"]
            assert view.problems == ()
            assert view.services == {"apps/reviews.apps.svc.cluster.local"}
            assert [p.key for p in view.policies_for(("apps", "reviews"))] == [
                "apps/reviews-methods"
            ]
            assert allowed(view, "GET") and not allowed(view, "DELETE")
            await client.ack(first)

            policy.write_text(POLICY.replace("METHOD", "DELETE"))
            plane.watcher.poll()
            pushed = await client.recv()
            assert list(views(pushed)) == ["apps/waypoint"]
            view = views(pushed)["apps/waypoint"]
            assert allowed(view, "DELETE") and not allowed(view, "GET")
            await client.ack(pushed)

            policy.unlink()  # detached: the waypoint's config no longer carries it
            plane.watcher.poll()
            emptied = await client.recv()
            assert views(emptied)["apps/waypoint"].policies == ()
            assert allowed(views(emptied)["apps/waypoint"], "PATCH")
    finally:
        await server.close()

"""Golden translation tests for every waypoint-binding rule of reference 03."""

from __future__ import annotations

from translate_helpers import (
    GATEWAY_CLASS,
    app,
    namespace,
    service_json,
    translate_yaml,
    waypoint,
    workload_json,
)

WAYPOINT_HOST = {"hostname": {"namespace": "apps", "hostname": "waypoint.apps.svc.cluster.local"}}
WAYPOINT = {**WAYPOINT_HOST, "hboneMtlsPort": 15008}


def bound(resource: dict[str, object]) -> object:
    return resource.get("waypoint")


def test_namespace_label_binds_services_to_a_service_waypoint_but_not_pods() -> None:
    t = translate_yaml(
        GATEWAY_CLASS,
        namespace("apps", **{"istio.io/use-waypoint": "waypoint"}),
        waypoint("waypoint", "apps"),
        app("echo", "apps"),
    )
    assert bound(service_json(t, "apps", "echo")) == WAYPOINT
    assert bound(workload_json(t, "apps", "echo")) is None


def test_workload_waypoint_serves_pods_only() -> None:
    t = translate_yaml(
        GATEWAY_CLASS,
        namespace("apps", **{"istio.io/use-waypoint": "waypoint"}),
        waypoint("waypoint", "apps", serves="workload"),
        app("echo", "apps"),
    )
    assert bound(service_json(t, "apps", "echo")) is None
    assert bound(workload_json(t, "apps", "echo")) == WAYPOINT


def test_all_waypoint_serves_both_and_none_serves_neither() -> None:
    docs = (
        GATEWAY_CLASS,
        namespace("apps", **{"istio.io/use-waypoint": "waypoint"}),
        app("echo", "apps"),
    )
    t = translate_yaml(*docs, waypoint("waypoint", "apps", serves="all"))
    assert bound(service_json(t, "apps", "echo")) == WAYPOINT
    assert bound(workload_json(t, "apps", "echo")) == WAYPOINT
    t = translate_yaml(*docs, waypoint("waypoint", "apps", serves="none"))
    assert bound(service_json(t, "apps", "echo")) is None


def test_the_objects_own_label_beats_the_namespace_label() -> None:
    t = translate_yaml(
        GATEWAY_CLASS,
        namespace("apps", **{"istio.io/use-waypoint": "waypoint"}),
        waypoint("waypoint", "apps"),
        waypoint("special", "apps"),
        app("echo", "apps", service_labels="istio.io/use-waypoint: special"),
    )
    special = service_json(t, "apps", "echo")["waypoint"]
    assert special["hostname"]["hostname"] == "special.apps.svc.cluster.local"


def test_opting_out_does_not_fall_back_to_the_namespace() -> None:
    for value in ("none", "'#none'"):
        t = translate_yaml(
            GATEWAY_CLASS,
            namespace("apps", **{"istio.io/use-waypoint": "waypoint"}),
            waypoint("waypoint", "apps"),
            app("echo", "apps", service_labels=f"istio.io/use-waypoint: {value}"),
        )
        assert bound(service_json(t, "apps", "echo")) is None, value


def test_use_waypoint_namespace_names_a_waypoint_elsewhere() -> None:
    t = translate_yaml(
        GATEWAY_CLASS,
        namespace("shared"),
        namespace(
            "apps",
            **{"istio.io/use-waypoint": "egress", "istio.io/use-waypoint-namespace": "shared"},
        ),
        waypoint("egress", "shared"),
        app("echo", "apps"),
    )
    assert service_json(t, "apps", "echo")["waypoint"]["hostname"] == {
        "namespace": "shared",
        "hostname": "egress.shared.svc.cluster.local",
    }


def test_a_missing_waypoint_means_direct_traffic() -> None:
    t = translate_yaml(
        GATEWAY_CLASS,
        namespace("apps", **{"istio.io/use-waypoint": "ghost"}),
        app("echo", "apps"),
    )
    assert bound(service_json(t, "apps", "echo")) is None


def test_only_istio_waypoint_gateways_bind() -> None:
    t = translate_yaml(
        GATEWAY_CLASS,
        namespace("apps", **{"istio.io/use-waypoint": "ingress"}),
        waypoint("ingress", "apps").replace("istio-waypoint", "istio"),
        app("echo", "apps"),
    )
    assert bound(service_json(t, "apps", "echo")) is None


def test_waypoint_services_never_get_a_waypoint() -> None:
    t = translate_yaml(
        GATEWAY_CLASS,
        namespace("apps", **{"istio.io/use-waypoint": "waypoint"}),
        waypoint("waypoint", "apps"),
        app("waypoint", "apps", service_labels="gateway.networking.k8s.io/gateway-name: waypoint"),
        app("echo", "apps"),
    )
    assert bound(service_json(t, "apps", "waypoint")) is None
    # A waypoint with a Service VIP is addressed by that VIP.
    echo = service_json(t, "apps", "echo")["waypoint"]
    assert set(echo) == {"address", "hboneMtlsPort"}


def test_the_gateway_class_label_sets_the_default_traffic_type() -> None:
    t = translate_yaml(
        GATEWAY_CLASS.replace(
            "metadata: {name: istio-waypoint}",
            "metadata: {name: istio-waypoint, labels: {istio.io/waypoint-for: workload}}",
        ),
        namespace("apps", **{"istio.io/use-waypoint": "waypoint"}),
        waypoint("waypoint", "apps"),
        app("echo", "apps"),
    )
    assert bound(service_json(t, "apps", "echo")) is None
    assert bound(workload_json(t, "apps", "echo")) == WAYPOINT


def test_a_pod_label_decides_over_its_namespace_and_sidecars_stay_out() -> None:
    """istio-cni's enablement: the pod's own dataplane-mode label wins (ambient opts in, any
    other value out); a pod with an injected sidecar is never captured."""
    plain_ns = """
apiVersion: v1
kind: Namespace
metadata: {name: plain}
"""
    sidecar = """
apiVersion: v1
kind: Pod
metadata:
  name: injected
  namespace: apps
  annotations: {sidecar.istio.io/status: '{"containers":["istio-proxy"]}'}
spec: {containers: [{name: app, image: echo}]}
"""
    t = translate_yaml(
        namespace("apps"),
        plain_ns,
        app("joined", "plain", pod_labels="istio.io/dataplane-mode: ambient"),
        app("odd", "apps", pod_labels="istio.io/dataplane-mode: sidecar"),
        sidecar,
    )
    assert workload_json(t, "plain", "joined")["tunnelProtocol"] == "HBONE"
    assert "tunnelProtocol" not in workload_json(t, "apps", "odd")
    assert "tunnelProtocol" not in workload_json(t, "apps", "injected")


def test_capture_follows_the_namespace_label_and_the_pod_opt_out() -> None:
    t = translate_yaml(
        namespace("apps"),
        app("echo", "apps"),
        app("legacy", "apps", pod_labels="istio.io/dataplane-mode: none"),
    )
    assert workload_json(t, "apps", "echo")["tunnelProtocol"] == "HBONE"
    assert "tunnelProtocol" not in workload_json(t, "apps", "legacy")  # NONE, the default
    # Named targetPort resolved per pod; the Service keeps 0 (differs per pod).
    assert workload_json(t, "apps", "echo")["services"] == {
        "apps/echo.apps.svc.cluster.local": {"ports": [{"servicePort": 80, "targetPort": 8080}]}
    }
    assert service_json(t, "apps", "echo")["ports"] == [
        {"servicePort": 80, "appProtocol": "HTTP11"}
    ]

"""Golden tests: istiod's PILOT_AUTO_ALLOW_WAYPOINT_POLICY, a synthetic ALLOW of each
waypoint's identities listed by the workloads whose traffic it carries (off by default)."""

from __future__ import annotations

import argparse

import pytest
from translate_helpers import (
    GATEWAY_CLASS,
    app,
    as_json,
    namespace,
    translate_yaml,
    waypoint,
    workload_json,
)

from ambient_fast.controlplane.commands import add_model_arguments, options_of
from ambient_fast.controlplane.model import SourceFile
from ambient_fast.controlplane.model.watch import LiveModel
from ambient_fast.controlplane.translate import LiveTranslation, TranslateOptions, translate
from ambient_fast.xds.resources import ResourceStore

ENABLED = TranslateOptions(auto_allow_waypoint_policy=True)


def instances(gateway: str, ns: str, account: str, replicas: int = 1) -> str:
    """The waypoint's Deployment, as istiod's deployment controller labels its pods."""
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {gateway}, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{gateway.networking.k8s.io/gateway-name: {gateway}}}}}
  template:
    metadata: {{labels: {{gateway.networking.k8s.io/gateway-name: {gateway}}}}}
    spec: {{serviceAccountName: {account}}}
"""


ALLOW_SLEEP = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-sleep, namespace: apps}
spec:
  selector: {matchLabels: {app: reviews}}
  rules: [{from: [{source: {principals: [cluster.local/ns/sleep/sa/sleep]}}]}]
"""

MESH = (
    GATEWAY_CLASS,
    namespace("apps"),
    waypoint("waypoint", "apps", serves="all"),
    instances("waypoint", "apps", "waypoint", replicas=2),
    waypoint("other", "apps"),  # serves Service traffic (the default)
    instances("other", "apps", "other-sa"),
    waypoint("idle", "apps"),  # no instances: istiod makes no policy for it
    # Its own waypoint (workload) and its Service's (other): both, own last.
    app(
        "reviews",
        "apps",
        service_labels="istio.io/use-waypoint: other",
        pod_labels="istio.io/use-waypoint: waypoint",
    ),
    app("details", "apps", service_labels="istio.io/use-waypoint: waypoint"),
    app("ratings", "apps"),
    app("idle-user", "apps", service_labels="istio.io/use-waypoint: idle"),
    ALLOW_SLEEP,
)
WAYPOINT_POLICY = "apps/istio_allow_waypoint_apps_waypoint"
OTHER_POLICY = "apps/istio_allow_waypoint_apps_other"


def policies_of(*pods: str, options: TranslateOptions = ENABLED) -> dict[str, list[str]]:
    t = translate_yaml(*MESH, options=options)
    return {p: workload_json(t, "apps", p).get("authorizationPolicies", []) for p in pods}


def test_each_waypoint_with_instances_gets_an_allow_of_their_identities() -> None:
    t = translate_yaml(*MESH, options=ENABLED)
    assert as_json(t.authorizations[WAYPOINT_POLICY]) == {
        "name": "istio_allow_waypoint_apps_waypoint",
        "namespace": "apps",
        "scope": "WORKLOAD_SELECTOR",
        # ALLOW is the enum's zero value. One principal per instance, as istiod lists them.
        # (istiod's Groups/Rules are rules/clauses here: same field numbers, ztunnel's names.)
        "rules": [
            {
                "clauses": [
                    {
                        "matches": [
                            {
                                "principals": [
                                    {"exact": "cluster.local/ns/apps/sa/waypoint"},
                                    {"exact": "cluster.local/ns/apps/sa/waypoint"},
                                ]
                            }
                        ]
                    }
                ]
            }
        ],
    }
    assert as_json(t.authorizations[OTHER_POLICY])["rules"][0]["clauses"][0]["matches"] == [
        {"principals": [{"exact": "cluster.local/ns/apps/sa/other-sa"}]}
    ]
    synthetic = sorted(name for name in t.authorizations if "istio_allow_waypoint" in name)
    assert synthetic == [OTHER_POLICY, WAYPOINT_POLICY]  # none for the idle waypoint


def test_workloads_list_their_service_waypoints_then_their_own_after_selector_policies() -> None:
    pods = ("reviews", "details", "ratings", "idle-user")
    assert policies_of(*pods) == {
        "reviews": ["apps/only-sleep", OTHER_POLICY, WAYPOINT_POLICY],
        "details": [WAYPOINT_POLICY],
        "ratings": [],
        "idle-user": [],
    }


def test_a_waypoints_own_pods_list_nothing() -> None:
    t = translate_yaml(*MESH, options=ENABLED)
    own = [
        name
        for name, address in t.addresses.items()
        if address.HasField("workload") and address.workload.workload_name in ("waypoint", "other")
    ]
    assert len(own) == 3
    assert all(not t.addresses[name].workload.authorization_policies for name in own)


def test_off_by_default_as_in_istiod() -> None:
    assert policies_of("reviews", "details", options=TranslateOptions()) == {
        "reviews": ["apps/only-sleep"],
        "details": [],
    }
    t = translate_yaml(*MESH)
    assert not any("istio_allow_waypoint" in name for name in t.authorizations)


def test_a_pod_edit_publishes_what_a_full_translation_would() -> None:
    live, translation, store = LiveModel(), LiveTranslation(ENABLED), ResourceStore()

    def publish(*documents: str) -> bool:
        text = "\n---\n".join(documents)
        mesh = live.apply({"mesh.yaml": SourceFile("mesh.yaml", text)}).mesh
        published = translation.publish(mesh, store)
        reference = ResourceStore()
        translate(mesh, ENABLED).publish(reference)
        for type_url in reference.type_urls:
            expected = {n: reference.version(type_url, n) for n in reference.names(type_url)}
            assert {n: store.version(type_url, n) for n in store.names(type_url)} == expected
        return published.incremental

    publish(*MESH)
    uses_waypoint = app("ratings", "apps", pod_labels="istio.io/use-waypoint: waypoint")
    ratings = MESH.index(app("ratings", "apps"))
    assert publish(*MESH[:ratings], uses_waypoint, *MESH[ratings + 1 :])  # the pod alone
    # An instance of the waypoint changes its identities: everything is translated again.
    third = instances("waypoint", "apps", "waypoint", replicas=3)
    assert not publish(*[third if d == MESH[3] else d for d in MESH])


def parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    return parser.parse_args(["-f", "mesh.yaml", *argv])


def test_the_flag_and_istiods_environment_variable() -> None:
    env = "PILOT_AUTO_ALLOW_WAYPOINT_POLICY"
    assert not options_of(parsed(), {}).auto_allow_waypoint_policy
    assert options_of(parsed(), {env: "true"}).auto_allow_waypoint_policy
    assert options_of(parsed("--auto-allow-waypoint-policy"), {}).auto_allow_waypoint_policy
    assert not options_of(
        parsed("--no-auto-allow-waypoint-policy"), {env: "1"}
    ).auto_allow_waypoint_policy
    with pytest.raises(ValueError, match=r"PILOT_AUTO_ALLOW_WAYPOINT_POLICY='yes'"):
        options_of(parsed(), {env: "yes"})

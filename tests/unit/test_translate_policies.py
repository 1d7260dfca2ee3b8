"""Golden translation tests for AuthorizationPolicy / PeerAuthentication (reference 02, 03)."""

from __future__ import annotations

from typing import Any

from translate_helpers import app, as_json, namespace, translate_yaml, workload_json


def policy(name: str, ns: str, spec: str, annotations: str = "") -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {name}
  namespace: {ns}
  {annotations}
spec:
{spec}
"""


def sent(*docs: str) -> dict[str, dict[str, Any]]:
    """What ztunnel receives: the Authorization resources by name."""
    t = translate_yaml(namespace("apps"), app("echo", "apps"), *docs)
    return {name: as_json(a) for name, a in t.authorizations.items()}


def test_allow_with_no_rules_is_sent_without_rules_and_denies_all() -> None:
    assert sent(policy("deny-all", "apps", "  action: ALLOW")) == {
        "apps/deny-all": {"name": "deny-all", "namespace": "apps", "scope": "NAMESPACE"}
    }


def test_allow_with_one_empty_rule_is_one_rule_without_clauses() -> None:
    assert sent(policy("allow-all", "apps", "  rules: [{}]"))["apps/allow-all"]["rules"] == [{}]


def test_from_to_when_become_clauses() -> None:
    spec = """
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/client/sa/*"]}
    - source: {namespaces: [batch]}
    to:
    - operation: {ports: ["8080"]}
    when:
    - key: source.ip
      values: [10.0.0.0/8]
"""
    rules = sent(policy("p", "apps", spec))["apps/p"]["rules"]
    assert rules == [
        {
            "clauses": [
                {
                    "matches": [
                        {"principals": [{"prefix": "cluster.local/ns/client/sa/"}]},
                        {"namespaces": [{"exact": "batch"}]},
                    ]
                },
                {"matches": [{"destinationPorts": [8080]}]},
                {"matches": [{"sourceIps": [{"address": "CgAAAA==", "length": 8}]}]},
            ]
        }
    ]


def test_http_only_allow_rules_are_dropped_for_the_node_proxy() -> None:
    spec = """
  rules:
  - to: [{operation: {methods: [GET]}}]
  - from: [{source: {namespaces: [client]}}]
"""
    assert sent(policy("p", "apps", spec))["apps/p"]["rules"] == [
        {"clauses": [{"matches": [{"namespaces": [{"exact": "client"}]}]}]}
    ]


def test_deny_rules_keep_only_their_l4_part() -> None:
    spec = """
  action: DENY
  rules:
  - from: [{source: {namespaces: [client]}}]
    to: [{operation: {paths: [/admin*]}}]
"""
    assert sent(policy("p", "apps", spec))["apps/p"]["rules"] == [
        {"clauses": [{"matches": [{"namespaces": [{"exact": "client"}]}]}]}
    ]


def test_waypoint_audit_and_custom_policies_are_not_sent_to_ztunnel() -> None:
    target = "  targetRefs: [{kind: Service, group: '', name: echo}]\n  rules: [{}]"
    assert (
        sent(
            policy("at-waypoint", "apps", target),
            policy("audit", "apps", "  action: AUDIT\n  rules: [{}]"),
            policy("ext", "apps", "  action: CUSTOM\n  provider: {name: ext}\n  rules: [{}]"),
        )
        == {}
    )


def test_scopes_follow_namespace_and_selector() -> None:
    t = translate_yaml(
        namespace("apps"),
        namespace("istio-system"),
        app("echo", "apps"),
        policy("mesh", "istio-system", "  rules: [{}]"),
        policy("ns", "apps", "  rules: [{}]"),
        policy("selected", "apps", "  selector: {matchLabels: {app: echo}}\n  rules: [{}]"),
        policy("elsewhere", "apps", "  selector: {matchLabels: {app: other}}\n  rules: [{}]"),
    )
    scopes = {name: as_json(a).get("scope", "GLOBAL") for name, a in t.authorizations.items()}
    assert scopes == {
        "istio-system/mesh": "GLOBAL",
        "apps/ns": "NAMESPACE",
        "apps/selected": "WORKLOAD_SELECTOR",
        "apps/elsewhere": "WORKLOAD_SELECTOR",
    }
    assert workload_json(t, "apps", "echo")["authorizationPolicies"] == ["apps/selected"]


def test_strict_peer_authentication_denies_requests_without_identity() -> None:
    strict = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: apps}
spec: {mtls: {mode: STRICT}}
"""
    assert sent(strict)["apps/istio_converted_peer_authentication_strict"] == {
        "name": "istio_converted_peer_authentication_strict",
        "namespace": "apps",
        "scope": "NAMESPACE",
        "action": "DENY",
        "rules": [{"clauses": [{"matches": [{"notPrincipals": [{"presence": {}}]}]}]}],
    }


def test_an_allow_rule_with_an_unknown_when_key_is_skipped_and_noted() -> None:
    spec = """
  rules:
  - when: [{key: experimental.thing, values: [x]}]
  - from: [{source: {namespaces: [client]}}]
"""
    t = translate_yaml(namespace("apps"), app("echo", "apps"), policy("p", "apps", spec))
    assert len(as_json(t.authorizations["apps/p"])["rules"]) == 1
    assert t.notes.problems == [
        "AuthorizationPolicy apps/p: rule 0: when key 'experimental.thing' is not supported;"
        " rule skipped"
    ]


def test_dry_run_annotation_is_carried() -> None:
    dry = policy(
        "p", "apps", "  action: DENY\n  rules: [{}]", 'annotations: {istio.io/dry-run: "true"}'
    )
    assert sent(dry)["apps/p"]["dryRun"] is True

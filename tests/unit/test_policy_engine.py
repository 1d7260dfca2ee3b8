"""The authorization engine's semantics (reference 02 Authorization, 03 AuthorizationPolicy)."""

from __future__ import annotations

import ipaddress

import pytest

from ambient_fast.policy import (
    Action,
    Clause,
    Condition,
    Match,
    Policy,
    PolicyTable,
    Request,
    Rule,
    Scope,
    StringMatch,
)
from ambient_fast.policy.request import HttpAttributes

CLIENT = "spiffe://cluster.local/ns/client/sa/sleep"
OTHER = "spiffe://cluster.local/ns/other/sa/batch"


def s(*patterns: str) -> tuple[StringMatch, ...]:
    return tuple(StringMatch.parse(p) for p in patterns)


def nets(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


def rule(*clauses: tuple[Match, ...]) -> Rule:
    return Rule(tuple(Clause(c) for c in clauses))


def policy(
    action: Action,
    *rules: Rule,
    name: str = "p",
    scope: Scope = Scope.NAMESPACE,
    dry_run: bool = False,
) -> Policy:
    return Policy(name, "server", scope, action, tuple(rules), dry_run)


def request(
    identity: str | None = CLIENT,
    port: int = 8080,
    method: str | None = None,
    path: str = "/",
    host: str = "echo.server.svc.cluster.local",
    headers: dict[str, str] | None = None,
) -> Request:
    """A connection; with `method`, also the HTTP request a waypoint sees."""
    attrs = HttpAttributes(method, path, host, headers or {}) if method else None
    return Request(
        source_ip=ipaddress.ip_address("10.244.1.5"),
        destination_ip=ipaddress.ip_address("10.244.2.7"),
        destination_port=port,
        source_identity=identity,
        http=attrs,
    )


def decide(policies: list[Policy], req: Request) -> bool:
    return PolicyTable(policies).evaluate("server", (), req).allowed


def test_no_policy_allows() -> None:
    assert decide([], request())


def test_allow_policy_without_rules_denies_everything() -> None:
    assert not decide([policy(Action.ALLOW)], request())


def test_allow_with_one_empty_rule_allows_everything() -> None:
    assert decide([policy(Action.ALLOW, Rule())], request(identity=None))


def test_deny_with_one_empty_rule_denies_everything() -> None:
    assert not decide([policy(Action.DENY, Rule())], request())


def test_an_empty_match_never_satisfies_its_clause() -> None:
    assert not decide([policy(Action.ALLOW, rule((Match(),)))], request())


def test_deny_beats_allow() -> None:
    allow = policy(Action.ALLOW, Rule(), name="allow-all")
    deny = policy(Action.DENY, rule((Match(destination_ports=(8080,)),)), name="deny-8080")
    decision = PolicyTable([allow, deny]).evaluate("server", (), request())
    assert (decision.allowed, decision.policy) == (False, "server/deny-8080")
    assert PolicyTable([allow, deny]).evaluate("server", (), request(port=9090)).allowed


def test_unmatched_allow_denies_and_names_no_policy() -> None:
    only_other = policy(Action.ALLOW, rule((Match(principals=s(OTHER[9:])),)))
    decision = PolicyTable([only_other]).evaluate("server", (), request())
    assert not decision.allowed
    assert decision.policy is None
    assert decision.reason == "no ALLOW policy matched"


def test_principals_compare_without_the_spiffe_scheme() -> None:
    allow = policy(Action.ALLOW, rule((Match(principals=s("cluster.local/ns/client/sa/*")),)))
    assert decide([allow], request())
    assert not decide([allow], request(identity=OTHER))


def test_any_principal_never_matches_plaintext() -> None:
    allow = policy(Action.ALLOW, rule((Match(principals=s("*")),)))
    assert decide([allow], request())
    assert not decide([allow], request(identity=None))


def test_strict_peer_authentication_denies_only_plaintext() -> None:
    strict = policy(Action.DENY, rule((Match(not_principals=s("*")),)), name="strict")
    assert not decide([strict], request(identity=None))
    assert decide([strict], request())


def test_fields_of_a_match_are_anded_and_values_ored() -> None:
    allow = policy(
        Action.ALLOW,
        rule((Match(namespaces=s("client", "x"), destination_ports=(8080, 8081)),)),
    )
    assert decide([allow], request(port=8081))
    assert not decide([allow], request(port=9000))
    assert not decide([allow], request(identity=OTHER, port=8080))


def test_clauses_of_a_rule_are_anded_and_rules_ored() -> None:
    from_client = (Match(namespaces=s("client")),)
    to_8080 = (Match(destination_ports=(8080,)),)
    both = policy(Action.ALLOW, rule(from_client, to_8080))
    assert decide([both], request())
    assert not decide([both], request(port=9))
    either = policy(Action.ALLOW, rule(from_client), rule(to_8080))
    assert decide([either], request(port=9))


def test_service_accounts_and_source_ips() -> None:
    allow = policy(
        Action.ALLOW,
        rule((Match(service_accounts=("client/sleep",), source_ips=nets("10.244.1.0/24")),)),
    )
    assert decide([allow], request())
    deny = policy(Action.DENY, rule((Match(not_source_ips=nets("10.244.0.0/16")),)))
    assert decide([deny], request())


def test_dry_run_is_recorded_but_never_decides_or_counts_as_allow() -> None:
    dry_deny = policy(Action.DENY, Rule(), name="dry-deny", dry_run=True)
    dry_allow = policy(Action.ALLOW, name="dry-allow", dry_run=True)
    decision = PolicyTable([dry_deny, dry_allow]).evaluate("server", (), request())
    assert decision.allowed
    assert decision.dry_run_matches == ("server/dry-deny",)


def test_audit_and_custom_never_decide() -> None:
    assert decide([policy(Action.AUDIT, Rule()), policy(Action.CUSTOM, Rule())], request())


def test_scopes_select_the_applicable_policies() -> None:
    mesh_wide = Policy(
        "deny-9",
        "istio-system",
        Scope.GLOBAL,
        Action.DENY,
        (rule((Match(destination_ports=(9,)),)),),
    )
    other_ns = Policy("deny-all", "elsewhere", Scope.NAMESPACE, Action.DENY, (Rule(),))
    selected = Policy(
        "only-client",
        "server",
        Scope.WORKLOAD_SELECTOR,
        Action.ALLOW,
        (rule((Match(namespaces=s("client")),)),),
    )
    table = PolicyTable([mesh_wide, other_ns, selected])
    assert not table.evaluate("server", (), request(port=9)).allowed
    assert table.evaluate("server", (), request(identity=OTHER)).allowed
    assert not table.evaluate("server", ("server/only-client",), request(identity=OTHER)).allowed


def test_node_proxy_drops_http_allow_rules_failing_safe() -> None:
    http_only = policy(Action.ALLOW, rule((Match(methods=s("GET")),)))
    l4 = http_only.for_node_proxy()
    assert l4 is not None and l4.rules == ()
    assert not decide([l4], request())


def test_node_proxy_keeps_the_l4_part_of_deny_rules() -> None:
    deny = policy(
        Action.DENY,
        rule((Match(namespaces=s("client"), paths=s("/admin*")),)),
        rule((Match(methods=s("DELETE")),)),
    )
    l4 = deny.for_node_proxy()
    assert l4 is not None
    assert not decide([l4], request())  # first rule, broadened to all of namespace client
    assert not decide([l4], request(identity=OTHER))  # second rule lost its only clause


def test_node_proxy_gets_no_audit_or_custom_policies() -> None:
    assert policy(Action.AUDIT, Rule()).for_node_proxy() is None


def test_http_operations_at_the_waypoint() -> None:
    deny_admin = policy(Action.DENY, rule((Match(paths=s("/allow/admin")),)), name="deny")
    allow_prefix = policy(Action.ALLOW, rule((Match(paths=s("/allow*")),)), name="allow")
    both = [deny_admin, allow_prefix]
    assert decide(both, request(method="GET", path="/allow/x"))
    assert not decide(both, request(method="GET", path="/allow/admin"))
    assert not decide(both, request(method="GET", path="/other"))


def test_hosts_compare_case_insensitively() -> None:
    allow = policy(Action.ALLOW, rule((Match(hosts=s("Echo.Server.svc.cluster.local")),)))
    assert decide([allow], request(method="GET", host="ECHO.server.svc.cluster.local"))


@pytest.mark.parametrize(
    ("condition", "allowed"),
    [
        (Condition("request.headers[x-user]", s("alice")), True),
        (Condition("request.headers[x-user]", s("bob")), False),
        (Condition("source.ip", s("10.244.1.0/24")), True),
        (Condition("source.ip", (), s("10.244.1.5")), False),
        (Condition("destination.port", s("8080")), True),
        (Condition("source.namespace", s("client")), True),
        (Condition("no.such.key", s("*")), False),
    ],
)
def test_when_conditions(condition: Condition, allowed: bool) -> None:
    allow = policy(Action.ALLOW, rule((Match(conditions=(condition,)),)))
    assert decide([allow], request(method="GET", headers={"x-user": "alice"})) is allowed

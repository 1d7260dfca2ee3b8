"""Compiled policy tables and the decision procedure (reference 03, AuthorizationPolicy).

Order: DENY match -> deny; no ALLOW policy -> allow; ALLOW match -> allow; else deny.
Dry-run policies are evaluated for the record only; AUDIT and CUSTOM never decide here.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from ambient_fast.policy.model import (
    Action,
    Condition,
    IpNetwork,
    Match,
    Policy,
    Scope,
    StringMatch,
    StringMatchKind,
)
from ambient_fast.policy.request import Request

# Istio's default root namespace: policies there without a selector apply mesh-wide.
DEFAULT_ROOT_NAMESPACE = "istio-system"


class StringSet:
    """A list of StringMatch compiled for lookup: a set for exact values, short lists else."""

    __slots__ = ("exact", "prefixes", "presence", "suffixes")

    def __init__(self, patterns: Iterable[StringMatch], fold_case: bool = False) -> None:
        patterns = tuple(patterns)

        def values(kind: StringMatchKind) -> tuple[str, ...]:
            return tuple(
                p.value.lower() if fold_case else p.value for p in patterns if p.kind is kind
            )

        self.exact = frozenset(values(StringMatchKind.EXACT))
        self.prefixes = values(StringMatchKind.PREFIX)
        self.suffixes = values(StringMatchKind.SUFFIX)
        self.presence = any(p.kind is StringMatchKind.PRESENCE for p in patterns)

    def contains(self, value: str | None) -> bool:
        if value is None:
            return False
        return (
            value in self.exact
            or (self.presence and value != "")
            or any(value.startswith(p) for p in self.prefixes)
            or any(value.endswith(s) for s in self.suffixes)
        )


def _in_networks(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None, nets: tuple[IpNetwork, ...]
) -> bool:
    return ip is not None and any(ip in net for net in nets)


def _lookup(request: Request, key: str) -> str | None:
    """The value of a `when` key for this request; None when absent or unknown."""
    http = request.http
    if key.startswith("request.headers[") and key.endswith("]"):
        return http.headers.get(key[16:-1].lower()) if http else None
    simple = {
        "source.ip": str(request.source_ip),
        "source.namespace": request.source_namespace,
        "source.principal": request.principal,
        "destination.ip": str(request.destination_ip),
        "destination.port": str(request.destination_port),
        "connection.sni": request.sni,
        "remote.ip": str(http.remote_ip) if http and http.remote_ip else None,
        "request.auth.principal": http.request_principal if http else None,
    }
    if key in simple:
        return simple[key]
    if key.startswith("request.auth.claims[") and http is not None:
        value: object = http.claims
        for part in key[len("request.auth.claims") :].strip("[]").split("]["):
            value = value.get(part) if isinstance(value, dict) else None
        return value if isinstance(value, str) else None
    if key in ("request.auth.audiences", "request.auth.presenter") and http is not None:
        claim = http.claims.get("aud" if key.endswith("audiences") else "azp")
        return claim if isinstance(claim, str) else None
    return None


_IP_KEYS = ("source.ip", "destination.ip", "remote.ip")


def _networks(patterns: tuple[StringMatch, ...]) -> tuple[IpNetwork, ...]:
    return tuple(ipaddress.ip_network(p.value, strict=False) for p in patterns)


def _condition_holds(cond: Condition, request: Request) -> bool:
    value = _lookup(request, cond.key)
    if cond.key in _IP_KEYS:
        ip = ipaddress.ip_address(value) if value else None
        ok = not cond.values or _in_networks(ip, _networks(cond.values))
        return ok and not _in_networks(ip, _networks(cond.not_values))
    ok = not cond.values or any(m.matches(value) for m in cond.values)
    return ok and not any(m.matches(value) for m in cond.not_values)


class CompiledMatch:
    """One Match with its string lists turned into StringSets."""

    __slots__ = ("match", "sets")

    def __init__(self, match: Match) -> None:
        self.match = match
        self.sets = {
            name: StringSet(getattr(match, name), fold_case=name.endswith("hosts"))
            for name in (
                "principals",
                "not_principals",
                "namespaces",
                "not_namespaces",
                "request_principals",
                "not_request_principals",
                "hosts",
                "not_hosts",
                "methods",
                "not_methods",
                "paths",
                "not_paths",
            )
            if getattr(match, name)
        }

    def _strings(self, name: str, value: str | None) -> bool:
        """True unless the field is set and does not contain the value (negated for not_)."""
        if name not in self.sets:
            return True
        found = self.sets[name].contains(value)
        return not found if name.startswith("not_") else found

    def matches(self, request: Request) -> bool:
        m = self.match
        if m.is_empty():
            return False  # an empty Match never satisfies its clause (ztunnel)
        http = request.http
        principal, namespace = request.principal, request.source_namespace
        host = http.host.lower() if http else None
        checks = (
            self._strings("principals", principal),
            self._strings("not_principals", principal),
            self._strings("namespaces", namespace),
            self._strings("not_namespaces", namespace),
            not m.service_accounts or request.source_service_account in m.service_accounts,
            request.source_service_account not in m.not_service_accounts,
            not m.source_ips or _in_networks(request.source_ip, m.source_ips),
            not _in_networks(request.source_ip, m.not_source_ips),
            not m.destination_ips or _in_networks(request.destination_ip, m.destination_ips),
            not _in_networks(request.destination_ip, m.not_destination_ips),
            not m.destination_ports or request.destination_port in m.destination_ports,
            request.destination_port not in m.not_destination_ports,
            self._strings("request_principals", http.request_principal if http else None),
            self._strings("not_request_principals", http.request_principal if http else None),
            not m.remote_ips or _in_networks(http.remote_ip if http else None, m.remote_ips),
            not _in_networks(http.remote_ip if http else None, m.not_remote_ips),
            self._strings("hosts", host),
            self._strings("not_hosts", host),
            self._strings("methods", http.method if http else None),
            self._strings("not_methods", http.method if http else None),
            self._strings("paths", http.path if http else None),
            self._strings("not_paths", http.path if http else None),
            all(_condition_holds(c, request) for c in m.conditions),
        )
        return all(checks)


class CompiledPolicy:
    __slots__ = ("policy", "rules")

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.rules = tuple(
            tuple(tuple(CompiledMatch(m) for m in clause.matches) for clause in rule.clauses)
            for rule in policy.rules
        )

    def first_matching_rule(self, request: Request) -> int | None:
        """Index (into the YAML rules) of the first rule that matches, else None."""
        origins = self.policy.rule_origins or tuple(range(len(self.rules)))
        for rule, origin in zip(self.rules, origins, strict=True):
            if all(not clause or any(m.matches(request) for m in clause) for clause in rule):
                return origin
        return None


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    policy: str | None  # "namespace/name" of the deciding policy
    rule: int | None  # index of its deciding rule
    reason: str
    dry_run_matches: tuple[str, ...] = ()


class PolicyTable:
    """All policies of a mesh (or of one enforcement point), compiled and indexed by scope."""

    def __init__(
        self, policies: Iterable[Policy], root_namespace: str = DEFAULT_ROOT_NAMESPACE
    ) -> None:
        self.root_namespace = root_namespace
        self._global: list[CompiledPolicy] = []
        self._by_namespace: defaultdict[str, list[CompiledPolicy]] = defaultdict(list)
        self._by_key: dict[str, CompiledPolicy] = {}
        for policy in policies:
            compiled = CompiledPolicy(policy)
            self._by_key[policy.key] = compiled
            if policy.scope is Scope.GLOBAL:
                self._global.append(compiled)
            elif policy.scope is Scope.NAMESPACE:
                self._by_namespace[policy.namespace].append(compiled)

    def applicable(self, namespace: str, selected: Iterable[str] = ()) -> list[CompiledPolicy]:
        """GLOBAL, then the namespace's, then the workload's own selector policies."""
        own = [self._by_key[k] for k in selected if k in self._by_key]
        return [*self._global, *self._by_namespace.get(namespace, ()), *own]

    @staticmethod
    def decide(policies: Iterable[CompiledPolicy], request: Request) -> Decision:
        live = [p for p in policies if p.policy.action in (Action.ALLOW, Action.DENY)]
        dry = tuple(
            p.policy.key
            for p in live
            if p.policy.dry_run and p.first_matching_rule(request) is not None
        )
        live = [p for p in live if not p.policy.dry_run]
        for p in live:
            if p.policy.action is Action.DENY:
                rule = p.first_matching_rule(request)
                if rule is not None:
                    return Decision(False, p.policy.key, rule, "denied by DENY policy", dry)
        allows = [p for p in live if p.policy.action is Action.ALLOW]
        if not allows:
            return Decision(True, None, None, "no ALLOW policy applies", dry)
        for p in allows:
            rule = p.first_matching_rule(request)
            if rule is not None:
                return Decision(True, p.policy.key, rule, "allowed by ALLOW policy", dry)
        return Decision(False, None, None, "no ALLOW policy matched", dry)

    def evaluate(self, namespace: str, selected: Iterable[str], request: Request) -> Decision:
        return self.decide(self.applicable(namespace, selected), request)

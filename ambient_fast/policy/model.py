"""Authorization policies in the CNF form of Istio's workload API (authorization.proto),
extended with the HTTP attributes a waypoint evaluates.

A policy matches when any rule matches; a rule when all its clauses match; a clause when
any of its matches matches; a match when every field it sets matches and none of its
`not_` fields does. istiod builds one clause per `from`, `to` and `when` entry of an
AuthorizationPolicy rule, and so does our translation.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field, fields, replace

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Action(enum.Enum):
    ALLOW = "ALLOW"
    DENY = "DENY"
    AUDIT = "AUDIT"
    CUSTOM = "CUSTOM"


class Scope(enum.Enum):
    """Which workloads a policy applies to (authorization.proto Scope)."""

    GLOBAL = "GLOBAL"  # every workload: policies in the root namespace without a selector
    NAMESPACE = "NAMESPACE"  # every workload of the policy's namespace
    WORKLOAD_SELECTOR = "WORKLOAD_SELECTOR"  # workloads listing it in authorization_policies


class StringMatchKind(enum.Enum):
    EXACT = "exact"
    PREFIX = "prefix"
    SUFFIX = "suffix"
    PRESENCE = "presence"


@dataclass(frozen=True, slots=True)
class StringMatch:
    kind: StringMatchKind
    value: str = ""

    @classmethod
    def parse(cls, pattern: str) -> StringMatch:
        """Istio's notation: `abc` exact, `abc*` prefix, `*abc` suffix, `*` presence."""
        if pattern == "*":
            return cls(StringMatchKind.PRESENCE)
        if pattern.endswith("*"):
            return cls(StringMatchKind.PREFIX, pattern[:-1])
        if pattern.startswith("*"):
            return cls(StringMatchKind.SUFFIX, pattern[1:])
        return cls(StringMatchKind.EXACT, pattern)

    def matches(self, value: str | None) -> bool:
        if value is None:
            return False
        match self.kind:
            case StringMatchKind.EXACT:
                return value == self.value
            case StringMatchKind.PREFIX:
                return value.startswith(self.value)
            case StringMatchKind.SUFFIX:
                return value.endswith(self.value)
            case StringMatchKind.PRESENCE:
                return value != ""

    def __str__(self) -> str:
        match self.kind:
            case StringMatchKind.PRESENCE:
                return "*"
            case StringMatchKind.PREFIX:
                return f"{self.value}*"
            case StringMatchKind.SUFFIX:
                return f"*{self.value}"
            case StringMatchKind.EXACT:
                return self.value


@dataclass(frozen=True, slots=True)
class Condition:
    """One `when` entry: a request attribute key and the values it must (not) take."""

    key: str
    values: tuple[StringMatch, ...] = ()
    not_values: tuple[StringMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class Match:
    """Fields are AND'ed, the values of one field OR'ed; `not_` fields must not match."""

    # Source (L4): principals are compared without the spiffe:// prefix.
    principals: tuple[StringMatch, ...] = ()
    not_principals: tuple[StringMatch, ...] = ()
    namespaces: tuple[StringMatch, ...] = ()
    not_namespaces: tuple[StringMatch, ...] = ()
    service_accounts: tuple[str, ...] = ()  # "namespace/name"
    not_service_accounts: tuple[str, ...] = ()
    source_ips: tuple[IpNetwork, ...] = ()
    not_source_ips: tuple[IpNetwork, ...] = ()
    # Destination (L4).
    destination_ips: tuple[IpNetwork, ...] = ()
    not_destination_ips: tuple[IpNetwork, ...] = ()
    destination_ports: tuple[int, ...] = ()
    not_destination_ports: tuple[int, ...] = ()
    # HTTP (waypoint only).
    request_principals: tuple[StringMatch, ...] = ()
    not_request_principals: tuple[StringMatch, ...] = ()
    remote_ips: tuple[IpNetwork, ...] = ()
    not_remote_ips: tuple[IpNetwork, ...] = ()
    hosts: tuple[StringMatch, ...] = ()
    not_hosts: tuple[StringMatch, ...] = ()
    methods: tuple[StringMatch, ...] = ()
    not_methods: tuple[StringMatch, ...] = ()
    paths: tuple[StringMatch, ...] = ()
    not_paths: tuple[StringMatch, ...] = ()
    conditions: tuple[Condition, ...] = ()

    def is_empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self))

    def has_http(self) -> bool:
        return any(getattr(self, name) for name in HTTP_FIELDS)

    def without_http(self) -> Match:
        return replace(self, **{name: () for name in HTTP_FIELDS})


# Attributes only a waypoint can see; a node proxy treats them specially (reference 03).
HTTP_FIELDS = (
    "request_principals",
    "not_request_principals",
    "remote_ips",
    "not_remote_ips",
    "hosts",
    "not_hosts",
    "methods",
    "not_methods",
    "paths",
    "not_paths",
    "conditions",
)


@dataclass(frozen=True, slots=True)
class Clause:
    """True when any match matches; an empty clause is true."""

    matches: tuple[Match, ...] = ()


@dataclass(frozen=True, slots=True)
class Rule:
    """True when every clause is; a rule without clauses matches everything."""

    clauses: tuple[Clause, ...] = ()


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    namespace: str
    scope: Scope
    action: Action
    rules: tuple[Rule, ...] = ()  # none: the policy never matches
    dry_run: bool = False
    # Which YAML rule each CNF rule came from, for explanations ("rule 2").
    rule_origins: tuple[int, ...] = field(default=(), compare=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def for_node_proxy(self) -> Policy | None:
        """The L4 form a node proxy enforces, or None when it is not sent there.

        ALLOW rules with any HTTP attribute are dropped (fail safe: they can never match
        at L4); DENY rules lose their HTTP attributes (broader, still safe).
        """
        if self.action is Action.ALLOW:
            kept = [
                (rule, origin)
                for rule, origin in zip(self.rules, self._origins(), strict=True)
                if not any(m.has_http() for c in rule.clauses for m in c.matches)
            ]
            return replace(
                self, rules=tuple(r for r, _ in kept), rule_origins=tuple(o for _, o in kept)
            )
        if self.action is Action.DENY:
            return replace(self, rules=tuple(_strip_http(rule) for rule in self.rules))
        return None

    def _origins(self) -> tuple[int, ...]:
        return self.rule_origins or tuple(range(len(self.rules)))


def _strip_http(rule: Rule) -> Rule:
    clauses = []
    for clause in rule.clauses:
        matches = tuple(m.without_http() for m in clause.matches)
        if any(m.is_empty() for m in matches):
            continue  # a match that only had HTTP parts now admits anything: drop the clause
        clauses.append(Clause(matches))
    return Rule(tuple(clauses))

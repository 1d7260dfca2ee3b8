"""AuthorizationPolicy and PeerAuthentication -> the engine's `Policy` (istiod's rules).

One clause per `from`, `to` and `when` entry; selector policies are WORKLOAD_SELECTOR, the
root namespace's selector-less ones GLOBAL, the rest NAMESPACE. targetRef policies belong
to waypoints. PeerAuthentication STRICT becomes a DENY of every request without identity.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ambient_fast.controlplane.model import AuthorizationPolicy, PeerAuthentication
from ambient_fast.controlplane.model.security import AuthorizationRule, Condition, Operation, Source
from ambient_fast.policy import Action, Clause, Match, Policy, Rule, Scope, StringMatch
from ambient_fast.policy import model as pm

# istiod's default root namespace (meshConfig.rootNamespace).
DEFAULT_ROOT_NAMESPACE = "istio-system"
# istiod's names for the policies it derives from PeerAuthentication (ztunnel sees these).
STRICT_POLICY_PREFIX = "istio_converted_peer_authentication_"

# `when` keys a node proxy can evaluate, and the Match field each becomes.
_L4_KEYS = {
    "source.ip": "source_ips",
    "source.namespace": "namespaces",
    "source.principal": "principals",
    "destination.ip": "destination_ips",
    "destination.port": "destination_ports",
}
_HTTP_KEYS = (
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "remote.ip",
    "connection.sni",
)


class InvalidValue(ValueError):
    """A policy value that cannot be compiled (bad CIDR, bad port, unknown when key)."""


@dataclass
class PolicyNotes:
    """What the translation had to change or skip, per policy, for the load report."""

    problems: list[str] = field(default_factory=list)

    def add(self, policy: str, message: str) -> None:
        self.problems.append(f"{policy}: {message}")


def _strings(values: Iterable[str]) -> tuple[StringMatch, ...]:
    return tuple(StringMatch.parse(v) for v in values)


def _networks(values: Iterable[str], field_name: str) -> tuple[pm.IpNetwork, ...]:
    try:
        return tuple(ipaddress.ip_network(v, strict=False) for v in values)
    except ValueError as e:
        raise InvalidValue(f"{field_name}: {e}") from None


def _ports(values: Iterable[str | int], field_name: str) -> tuple[int, ...]:
    ports = []
    for v in values:
        text = str(v)
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise InvalidValue(f"{field_name}: {v!r} is not a port")
        ports.append(int(text))
    return tuple(ports)


def _service_accounts(values: Iterable[str], namespace: str) -> tuple[str, ...]:
    """`ns/name`, or a bare name in the policy's own namespace."""
    return tuple(v if "/" in v else f"{namespace}/{v}" for v in values)


def _source_match(s: Source, namespace: str) -> Match:
    return Match(
        principals=_strings(s.principals),
        not_principals=_strings(s.not_principals),
        request_principals=_strings(s.request_principals),
        not_request_principals=_strings(s.not_request_principals),
        namespaces=_strings(s.namespaces),
        not_namespaces=_strings(s.not_namespaces),
        service_accounts=_service_accounts(s.service_accounts, namespace),
        not_service_accounts=_service_accounts(s.not_service_accounts, namespace),
        source_ips=_networks(s.ip_blocks, "ipBlocks"),
        not_source_ips=_networks(s.not_ip_blocks, "notIpBlocks"),
        remote_ips=_networks(s.remote_ip_blocks, "remoteIpBlocks"),
        not_remote_ips=_networks(s.not_remote_ip_blocks, "notRemoteIpBlocks"),
    )


def _operation_match(o: Operation) -> Match:
    return Match(
        hosts=_strings(o.hosts),
        not_hosts=_strings(o.not_hosts),
        destination_ports=_ports(o.ports, "ports"),
        not_destination_ports=_ports(o.not_ports, "notPorts"),
        methods=_strings(o.methods),
        not_methods=_strings(o.not_methods),
        paths=_strings(o.paths),
        not_paths=_strings(o.not_paths),
    )


def _condition_match(c: Condition) -> Match:
    if c.key in _L4_KEYS:
        name = _L4_KEYS[c.key]
        convert: Callable[[tuple[str, ...], str], tuple[object, ...]]
        if name.endswith("ips"):
            convert = _networks
        elif name.endswith("ports"):
            convert = _ports
        else:
            convert = lambda values, _: _strings(values)  # noqa: E731
        return Match(
            **{name: convert(c.values, c.key), f"not_{name}": convert(c.not_values, c.key)}  # type: ignore[arg-type]
        )
    known = c.key in _HTTP_KEYS or c.key.startswith(("request.headers[", "request.auth.claims["))
    if not known:
        raise InvalidValue(f"when key {c.key!r} is not supported")
    return Match(conditions=(pm.Condition(c.key, _strings(c.values), _strings(c.not_values)),))


def _rule(rule: AuthorizationRule, namespace: str) -> Rule:
    clauses = []
    if rule.sources:
        clauses.append(Clause(tuple(_source_match(s, namespace) for s in rule.sources)))
    if rule.operations:
        clauses.append(Clause(tuple(_operation_match(o) for o in rule.operations)))
    clauses.extend(Clause((_condition_match(c),)) for c in rule.conditions)
    return Rule(tuple(clauses))


def scope_of(policy: AuthorizationPolicy, root_namespace: str) -> Scope:
    if policy.selector:
        return Scope.WORKLOAD_SELECTOR
    return Scope.GLOBAL if policy.namespace == root_namespace else Scope.NAMESPACE


def translate_authorization(
    policy: AuthorizationPolicy, notes: PolicyNotes, root_namespace: str = DEFAULT_ROOT_NAMESPACE
) -> Policy:
    """The engine form of one AuthorizationPolicy (full L7: waypoints and offline tools).

    A rule that cannot be compiled is skipped in an ALLOW policy (fewer allows: safe) and
    turns the DENY policy's rule into one without conditions (broader: safe); both noted.
    """
    action = Action(policy.action)
    rules: list[Rule] = []
    origins: list[int] = []
    for index, rule in enumerate(policy.rules):
        try:
            rules.append(_rule(rule, policy.namespace))
        except InvalidValue as e:
            if action is Action.DENY:
                notes.add(
                    str(policy.key), f"rule {index}: {e}; denying without that rule's conditions"
                )
                rules.append(Rule())
            else:
                notes.add(str(policy.key), f"rule {index}: {e}; rule skipped")
                continue
        origins.append(index)
    return Policy(
        policy.name,
        policy.namespace,
        scope_of(policy, root_namespace),
        action,
        tuple(rules),
        policy.dry_run,
        tuple(origins),
    )


def translate_peer_authentication(
    peer: PeerAuthentication, root_namespace: str = DEFAULT_ROOT_NAMESPACE
) -> Policy | None:
    """STRICT -> DENY requests without identity (notPrincipals ["*"]); other modes: None."""
    if peer.mtls_mode != "STRICT":
        return None
    if peer.selector:
        scope = Scope.WORKLOAD_SELECTOR
    else:
        scope = Scope.GLOBAL if peer.namespace == root_namespace else Scope.NAMESPACE
    no_identity = Match(not_principals=(StringMatch.parse("*"),))
    return Policy(
        STRICT_POLICY_PREFIX + peer.name,
        peer.namespace,
        scope,
        Action.DENY,
        (Rule((Clause((no_identity,)),)),),
    )

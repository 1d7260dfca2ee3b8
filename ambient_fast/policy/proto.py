"""Policies <-> istio.security.Authorization (the node proxy's xDS form).

The control plane sends `Policy.for_node_proxy()` through `to_authorization`; ztunnel reads
what istiod (or we) sent through `from_authorization`. HTTP attributes have no wire form.
"""

from __future__ import annotations

import ipaddress

from google.protobuf.empty_pb2 import Empty

from ambient_fast.policy.model import (
    Action,
    Clause,
    IpNetwork,
    Match,
    Policy,
    Rule,
    Scope,
    StringMatch,
    StringMatchKind,
)
from ambient_fast.xds.proto import authorization_pb2 as pb


class UnsupportedPolicy(ValueError):
    """A policy that has no node-proxy wire form (AUDIT/CUSTOM, or HTTP attributes left)."""


_SCOPES = {
    Scope.GLOBAL: pb.GLOBAL,
    Scope.NAMESPACE: pb.NAMESPACE,
    Scope.WORKLOAD_SELECTOR: pb.WORKLOAD_SELECTOR,
}
_ACTIONS = {Action.ALLOW: pb.ALLOW, Action.DENY: pb.DENY}


def _string_to_pb(m: StringMatch) -> pb.StringMatch:
    match m.kind:
        case StringMatchKind.EXACT:
            return pb.StringMatch(exact=m.value)
        case StringMatchKind.PREFIX:
            return pb.StringMatch(prefix=m.value)
        case StringMatchKind.SUFFIX:
            return pb.StringMatch(suffix=m.value)
        case StringMatchKind.PRESENCE:
            return pb.StringMatch(presence=Empty())


def _string_from_pb(m: pb.StringMatch) -> StringMatch:
    kind = m.WhichOneof("match_type")
    if kind == "exact":
        return StringMatch(StringMatchKind.EXACT, m.exact)
    if kind == "prefix":
        return StringMatch(StringMatchKind.PREFIX, m.prefix)
    if kind == "suffix":
        return StringMatch(StringMatchKind.SUFFIX, m.suffix)
    # presence, or a match with no type set: istiod never sends the latter; be strict.
    return StringMatch(StringMatchKind.PRESENCE)


def _net_to_pb(net: IpNetwork) -> pb.Address:
    return pb.Address(address=net.network_address.packed, length=net.prefixlen)


def _net_from_pb(addr: pb.Address) -> IpNetwork:
    if len(addr.address) not in (4, 16):
        raise ValueError(f"address of {len(addr.address)} bytes: expected 4 or 16")
    ip = ipaddress.ip_address(addr.address)
    return ipaddress.ip_network((ip, addr.length), strict=False)


def _service_account(sa: str) -> pb.ServiceAccountMatch:
    namespace, _, name = sa.partition("/")
    return pb.ServiceAccountMatch(namespace=namespace, service_account=name)


def _match_to_pb(m: Match) -> pb.Match:
    if m.has_http():
        raise UnsupportedPolicy("HTTP attributes cannot be sent to a node proxy")
    return pb.Match(
        namespaces=[_string_to_pb(s) for s in m.namespaces],
        not_namespaces=[_string_to_pb(s) for s in m.not_namespaces],
        service_accounts=[_service_account(s) for s in m.service_accounts],
        not_service_accounts=[_service_account(s) for s in m.not_service_accounts],
        principals=[_string_to_pb(s) for s in m.principals],
        not_principals=[_string_to_pb(s) for s in m.not_principals],
        source_ips=[_net_to_pb(n) for n in m.source_ips],
        not_source_ips=[_net_to_pb(n) for n in m.not_source_ips],
        destination_ips=[_net_to_pb(n) for n in m.destination_ips],
        not_destination_ips=[_net_to_pb(n) for n in m.not_destination_ips],
        destination_ports=list(m.destination_ports),
        not_destination_ports=list(m.not_destination_ports),
    )


def _match_from_pb(m: pb.Match) -> Match:
    return Match(
        namespaces=tuple(_string_from_pb(s) for s in m.namespaces),
        not_namespaces=tuple(_string_from_pb(s) for s in m.not_namespaces),
        service_accounts=tuple(f"{s.namespace}/{s.service_account}" for s in m.service_accounts),
        not_service_accounts=tuple(
            f"{s.namespace}/{s.service_account}" for s in m.not_service_accounts
        ),
        principals=tuple(_string_from_pb(s) for s in m.principals),
        not_principals=tuple(_string_from_pb(s) for s in m.not_principals),
        source_ips=tuple(_net_from_pb(a) for a in m.source_ips),
        not_source_ips=tuple(_net_from_pb(a) for a in m.not_source_ips),
        destination_ips=tuple(_net_from_pb(a) for a in m.destination_ips),
        not_destination_ips=tuple(_net_from_pb(a) for a in m.not_destination_ips),
        destination_ports=tuple(m.destination_ports),
        not_destination_ports=tuple(m.not_destination_ports),
    )


def to_authorization(policy: Policy) -> pb.Authorization:
    """The wire form of a node-proxy policy (apply `Policy.for_node_proxy()` first)."""
    if policy.action not in _ACTIONS:
        raise UnsupportedPolicy(
            f"policy {policy.key}: {policy.action.value} is not sent to ztunnel"
        )
    try:
        rules = [
            pb.Rule(
                clauses=[pb.Clause(matches=[_match_to_pb(m) for m in c.matches]) for c in r.clauses]
            )
            for r in policy.rules
        ]
    except UnsupportedPolicy as e:
        raise UnsupportedPolicy(f"policy {policy.key}: {e}") from None
    return pb.Authorization(
        name=policy.name,
        namespace=policy.namespace,
        scope=_SCOPES[policy.scope],
        action=_ACTIONS[policy.action],
        rules=rules,
        dry_run=policy.dry_run,
    )


def from_authorization(message: pb.Authorization) -> Policy:
    """A policy from xDS; raises ValueError naming the policy when a field is malformed."""
    key = f"{message.namespace}/{message.name}"
    scope = next((s for s, v in _SCOPES.items() if v == message.scope), None)
    action = next((a for a, v in _ACTIONS.items() if v == message.action), None)
    if scope is None or action is None:
        raise ValueError(
            f"authorization {key}: unknown scope {message.scope} or action {message.action}"
        )
    try:
        rules = tuple(
            Rule(tuple(Clause(tuple(_match_from_pb(m) for m in c.matches)) for c in r.clauses))
            for r in message.rules
        )
    except ValueError as e:
        raise ValueError(f"authorization {key}: {e}") from None
    return Policy(message.name, message.namespace, scope, action, rules, message.dry_run)

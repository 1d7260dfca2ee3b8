"""Policies survive the trip through istio.security.Authorization unchanged."""

from __future__ import annotations

import ipaddress

import pytest

from ambient_fast.policy import Action, Clause, Match, Policy, Rule, Scope, StringMatch
from ambient_fast.policy.proto import UnsupportedPolicy, from_authorization, to_authorization
from ambient_fast.xds.proto import authorization_pb2 as pb


def test_round_trip_keeps_every_l4_field() -> None:
    match = Match(
        principals=(StringMatch.parse("cluster.local/ns/a/sa/*"),),
        not_principals=(StringMatch.parse("*"),),
        namespaces=(StringMatch.parse("a"),),
        not_namespaces=(StringMatch.parse("*-test"),),
        service_accounts=("a/sleep",),
        not_service_accounts=("a/batch",),
        source_ips=(ipaddress.ip_network("10.0.0.0/8"),),
        not_source_ips=(ipaddress.ip_network("10.1.2.3/32"),),
        destination_ips=(ipaddress.ip_network("fd00::/64"),),
        not_destination_ips=(ipaddress.ip_network("fd00::1/128"),),
        destination_ports=(80, 443),
        not_destination_ports=(8080,),
    )
    policy = Policy(
        "allow-a",
        "b",
        Scope.WORKLOAD_SELECTOR,
        Action.ALLOW,
        (Rule((Clause((match,)), Clause())), Rule()),
        dry_run=True,
    )
    wire = pb.Authorization.FromString(to_authorization(policy).SerializeToString())
    assert from_authorization(wire) == policy


def test_http_attributes_and_audit_have_no_wire_form() -> None:
    http = Policy(
        "p",
        "ns",
        Scope.NAMESPACE,
        Action.DENY,
        (Rule((Clause((Match(methods=(StringMatch.parse("GET"),)),)),)),),
    )
    with pytest.raises(UnsupportedPolicy, match="ns/p"):
        to_authorization(http)
    with pytest.raises(UnsupportedPolicy, match="AUDIT"):
        to_authorization(Policy("p", "ns", Scope.NAMESPACE, Action.AUDIT))


def test_a_malformed_address_names_the_policy() -> None:
    bad = pb.Authorization(
        name="p",
        namespace="ns",
        rules=[
            pb.Rule(
                clauses=[
                    pb.Clause(
                        matches=[pb.Match(source_ips=[pb.Address(address=b"\x01\x02", length=8)])]
                    )
                ]
            )
        ],
    )
    with pytest.raises(ValueError, match="authorization ns/p: address of 2 bytes"):
        from_authorization(bad)


def test_an_unknown_action_names_the_policy_and_the_value() -> None:
    with pytest.raises(ValueError, match="authorization ns/p: unknown scope 0 or action 7"):
        from_authorization(pb.Authorization(name="p", namespace="ns", action=7))  # type: ignore[arg-type]

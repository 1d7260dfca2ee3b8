"""The one authorization engine of ambient-fast: ztunnel (L4), the waypoint (L7) and the
offline `authz check` tool all evaluate policies here, so they can never disagree.

Policies arrive as `Policy` (the CNF form of Istio's workload API: rules of clauses of
matches), are compiled once into `PolicyTable` lookups, and evaluated against a
`Request` (the attributes of one connection or HTTP request) into a `Decision`.
"""

from ambient_fast.policy.engine import Decision, PolicyTable
from ambient_fast.policy.model import (
    Action,
    Clause,
    Condition,
    Match,
    Policy,
    Rule,
    Scope,
    StringMatch,
)
from ambient_fast.policy.request import Request

__all__ = [
    "Action",
    "Clause",
    "Condition",
    "Decision",
    "Match",
    "Policy",
    "PolicyTable",
    "Request",
    "Rule",
    "Scope",
    "StringMatch",
]

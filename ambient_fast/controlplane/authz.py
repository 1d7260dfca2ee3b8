"""`ambient-fast authz check` and `explain`: the policy decision and path of one connection,
computed offline by the same engine ztunnel and the waypoint use.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from ambient_fast.controlplane.commands import add_model_arguments, load_model, options_of
from ambient_fast.controlplane.model import Mesh, RequestAuthentication
from ambient_fast.controlplane.paths import (
    PASSTHROUGH,
    WAYPOINT,
    Client,
    Target,
    Trace,
    UnknownEndpoint,
    resolve_destination,
    resolve_source,
    trace,
    waypoint_identity,
)
from ambient_fast.controlplane.translate import Translation, translate
from ambient_fast.controlplane.translate.workloads import is_captured
from ambient_fast.policy import Decision, PolicyTable, Request
from ambient_fast.policy.jwt import Issuer, JwtRejected, parse_jwks, validate
from ambient_fast.policy.paths import normalize_path
from ambient_fast.policy.request import HttpAttributes
from ambient_fast.waypoint.config import load_waypoint_config


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    enforced_by: tuple[str, ...]
    policy: str | None
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {
            "decision": "ALLOW" if self.allowed else "DENY",
            "enforced_by": list(self.enforced_by),
            "policy": self.policy,
            "reason": self.reason,
        }


def _request(
    source_ip: str, identity: str | None, ip: str, port: int, http: HttpAttributes | None
) -> Request:
    return Request(
        source_ip=ipaddress.ip_address(source_ip),
        destination_ip=ipaddress.ip_address(ip),
        destination_port=port,
        source_identity=identity,
        http=http,
    )


def _explain_decision(decision: Decision, where: str) -> str:
    rule = f", rule {decision.rule}" if decision.rule is not None else ""
    return f"{where}: {decision.reason}" + (
        f" ({decision.policy}{rule})" if decision.policy else ""
    )


def _authenticate(
    token: str, http: HttpAttributes, authentications: Iterable[RequestAuthentication]
) -> HttpAttributes:
    """The request as the waypoint's RequestAuthentications leave it (JwtRejected: 401)."""
    issuers = []
    for ra in authentications:
        for rule in ra.jwt_rules:
            if rule.jwks is None:
                raise JwtRejected(f"{ra.key}: jwksUri {rule.jwks_uri!r} is not fetched offline")
            try:
                keys = parse_jwks(rule.jwks)
            except ValueError as e:
                raise JwtRejected(f"{ra.key}: {e}") from None
            issuers.append(Issuer(rule.issuer, rule.audiences, keys))
    if not issuers:
        return http  # no RequestAuthentication here: the token is not looked at
    valid = validate(token, issuers)
    return dataclasses.replace(http, request_principal=valid.principal, claims=valid.claims)


def check(
    mesh: Mesh,
    translation: Translation,
    client: Client,
    target: Target,
    http: HttpAttributes | None,
    trust_domain: str,
    jwt: str | None = None,
) -> tuple[Verdict, Trace]:
    path = trace(mesh, client, target, trust_domain)
    if path.path == PASSTHROUGH:
        return Verdict(True, (), None, "destination unknown to the mesh: passthrough"), path
    if not path.endpoints:
        return Verdict(False, (), None, "no healthy endpoint has this port"), path
    enforced: list[str] = []
    identity = client.identity
    if path.path == WAYPOINT and path.waypoint is not None:
        gateway = (path.waypoint.namespace, path.waypoint.name)
        service = (target.service.namespace, target.service.name) if target.service else None
        # Decided by the waypoint's own view of its configuration: the tool cannot disagree.
        view = load_waypoint_config(translation.waypoints[f"{gateway[0]}/{gateway[1]}"])
        if jwt is not None and http is not None:
            try:
                http = _authenticate(jwt, http, view.request_authentications_for(service))
            except JwtRejected as e:
                reason = f"waypoint {gateway[0]}/{gateway[1]}: JWT rejected (401): {e}"
                return Verdict(False, ("waypoint",), None, reason), path
        request = _request(client.ip, identity, target.ip, target.port, http)
        decision = view.authorize(service, request)
        enforced.append("waypoint")
        if not decision.allowed:
            reason = _explain_decision(decision, f"waypoint {gateway[0]}/{gateway[1]}")
            return Verdict(False, tuple(enforced), decision.policy, reason), path
        # The second hop carries the waypoint's identity, not the client's.
        identity = waypoint_identity(path.waypoint, trust_domain)
    pod, port = path.endpoints[0]
    if not is_captured(mesh, pod):
        reason = (
            f"destination {pod.namespace}/{pod.name} is not in the mesh: nothing enforces L4 policy"
        )
        return Verdict(True, tuple(enforced), None, reason), path
    node_policies = [p for p in (q.for_node_proxy() for q in translation.policies) if p is not None]
    uid = f"{translation.options.cluster_id}//Pod/{pod.namespace}/{pod.name}"
    workload = translation.addresses.get(uid)
    selected = tuple(workload.workload.authorization_policies) if workload else ()
    decision = PolicyTable(node_policies, translation.options.root_namespace).evaluate(
        pod.namespace, selected, _request(client.ip, identity, pod.ip or "", port, None)
    )
    enforced.append("ztunnel")
    reason = _explain_decision(decision, f"ztunnel of {pod.namespace}/{pod.name}")
    return Verdict(decision.allowed, tuple(enforced), decision.policy, reason), path


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--from", dest="source", required=True, metavar="NS/POD|plaintext:IP")
    parser.add_argument("--to", dest="target", required=True, metavar="NS/POD|HOST:PORT")
    parser.add_argument("--port", type=int, help="destination port for a NS/POD destination")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _load(args: argparse.Namespace) -> tuple[Mesh, Translation, Client, Target]:
    result = load_model(args)
    translation = translate(result.mesh, options_of(args))
    client = resolve_source(result.mesh, args.source, args.trust_domain)
    default_ns = client.pod.namespace if client.pod else "default"
    target = resolve_destination(result.mesh, args.target, args.port, default_ns)
    return result.mesh, translation, client, target


def run_check(args: argparse.Namespace) -> int:
    """`ambient-fast authz check`; exit 0 for ALLOW, 1 for DENY, 2 for bad input."""
    http = None
    if args.jwt and not args.http:
        print("authz check: --jwt needs --http (tokens travel in HTTP requests)", file=sys.stderr)
        return 2
    if args.http:
        method, path = args.http
        headers = {}
        for header in args.header:
            name, sep, value = header.partition(":")
            if not sep:
                print(f"authz check: -H {header!r}: expected NAME:VALUE", file=sys.stderr)
                return 2
            headers[name.strip().lower()] = value.strip()
        host = headers.get("host", args.target.rsplit(":", 1)[0])
        http = HttpAttributes(method.upper(), normalize_path(path), host, headers)
    try:
        mesh, translation, client, target = _load(args)
    except (UnknownEndpoint, ValueError) as e:
        print(f"authz check: {e}", file=sys.stderr)
        return 2
    verdict, _ = check(mesh, translation, client, target, http, args.trust_domain, args.jwt)
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(verdict.as_json()) + b"\n")
    else:
        print(f"{verdict.as_json()['decision']}  {verdict.reason}")
        print(f"enforced by: {', '.join(verdict.enforced_by) or 'nothing'}")
    return 0 if verdict.allowed else 1


def run_explain(args: argparse.Namespace) -> int:
    try:
        mesh, _, client, target = _load(args)
    except (UnknownEndpoint, ValueError) as e:
        print(f"explain: {e}", file=sys.stderr)
        return 2
    path = trace(mesh, client, target, args.trust_domain)
    endpoints = (
        [path.waypoint_endpoint]
        if path.waypoint_endpoint
        else [f"{pod.ip}:{port}" for pod, port in path.endpoints]
    )
    document = {
        "path": path.path,
        "waypoint": f"{path.waypoint.namespace}/{path.waypoint.name}" if path.waypoint else None,
        "endpoints": endpoints if path.path != PASSTHROUGH else [f"{target.ip}:{target.port}"],
        "expected_identities": list(path.expected_identities),
    }
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(document) + b"\n")
    else:
        for key, value in document.items():
            print(f"{key}: {value}")
    return 0

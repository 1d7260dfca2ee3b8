"""Istio security kinds: AuthorizationPolicy, PeerAuthentication, RequestAuthentication.

Kept as written (rules, from/to/when); the policy package compiles them. The one thing
decided here is the shape: `rules == ()` (no rules: never matches) is distinct from
`rules == (AuthorizationRule(),)` (`rules: [{}]`: matches everything).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from ambient_fast.controlplane.model.core import _Named
from ambient_fast.controlplane.model.documents import SourceDocument
from ambient_fast.controlplane.model.fields import (
    FieldError,
    Obj,
    as_mapping,
    check_ip_or_cidr,
    describe,
    each_map,
    join,
    one_of,
    opt_bool,
    opt_list,
    opt_map,
    opt_str,
    req_str,
    str_list,
    str_map,
    str_or,
)
from ambient_fast.controlplane.model.meta import DRY_RUN_ANNOTATION, ObjectMeta

AUTHZ_ACTIONS = ("ALLOW", "DENY", "AUDIT", "CUSTOM")
MTLS_MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")
_GO_BOOLS = {
    **dict.fromkeys(("1", "t", "T", "true", "TRUE", "True"), True),
    **dict.fromkeys(("0", "f", "F", "false", "FALSE", "False"), False),
}


@dataclass(frozen=True, slots=True)
class PolicyTargetRef:
    """targetRef / targetRefs of a policy (Gateway, Service, GatewayClass, ServiceEntry)."""

    kind: str
    name: str
    group: str = ""
    namespace: str | None = None  # Istio: must be the policy's own namespace if set


@dataclass(frozen=True, slots=True)
class Source:
    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    not_request_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()
    not_service_accounts: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()
    remote_ip_blocks: tuple[str, ...] = ()
    not_remote_ip_blocks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Operation:
    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    not_ports: tuple[int, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Condition:
    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthorizationRule:
    sources: tuple[Source, ...] = ()  # `from`; empty: any source
    operations: tuple[Operation, ...] = ()  # `to`; empty: any operation
    conditions: tuple[Condition, ...] = ()  # `when`; all must hold


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy(_Named):
    KIND: ClassVar[str] = "AuthorizationPolicy"
    meta: ObjectMeta
    action: str = "ALLOW"
    rules: tuple[AuthorizationRule, ...] = ()
    selector: Mapping[str, str] | None = None  # spec.selector.matchLabels
    target_refs: tuple[PolicyTargetRef, ...] = ()  # targetRef and targetRefs, merged
    provider: str | None = None  # CUSTOM: the extension provider's name
    dry_run: bool = False  # annotation istio.io/dry-run: "true"
    # The document as written, carried to waypoints (see kinds.KindSpec.keep_source).
    source: SourceDocument | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class PeerAuthentication(_Named):
    KIND: ClassVar[str] = "PeerAuthentication"
    meta: ObjectMeta
    mtls_mode: str = "UNSET"
    selector: Mapping[str, str] | None = None
    port_level_mtls: Mapping[int, str] | None = None


@dataclass(frozen=True, slots=True)
class JWTHeader:
    name: str
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class ClaimToHeader:
    header: str
    claim: str


@dataclass(frozen=True, slots=True)
class JWTRule:
    issuer: str
    audiences: tuple[str, ...] = ()
    jwks: str | None = None
    jwks_uri: str | None = None
    from_headers: tuple[JWTHeader, ...] = ()
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    output_payload_to_header: str | None = None
    output_claim_to_headers: tuple[ClaimToHeader, ...] = ()
    forward_original_token: bool = False


@dataclass(frozen=True, slots=True)
class RequestAuthentication(_Named):
    KIND: ClassVar[str] = "RequestAuthentication"
    meta: ObjectMeta
    jwt_rules: tuple[JWTRule, ...] = ()
    selector: Mapping[str, str] | None = None
    target_refs: tuple[PolicyTargetRef, ...] = ()
    # The document as written, carried to waypoints (see kinds.KindSpec.keep_source).
    source: SourceDocument | None = field(default=None, compare=False, repr=False)


def _selector(spec: Obj, key: str = "selector") -> Mapping[str, str] | None:
    if spec.get(key) is None:
        return None
    return str_map(opt_map(spec, key, "spec"), "matchLabels", f"spec.{key}")


def _target_refs(spec: Obj, meta: ObjectMeta) -> tuple[PolicyTargetRef, ...]:
    entries: list[tuple[str, Obj]] = []
    if spec.get("targetRef") is not None:
        entries.append(("spec.targetRef", opt_map(spec, "targetRef", "spec")))
    entries.extend(each_map(spec, "targetRefs", "spec"))
    refs = []
    for path, entry in entries:
        namespace = opt_str(entry, "namespace", path) or None
        # Istio validation: cross-namespace policy attachment is not allowed.
        if namespace is not None and namespace != meta.namespace:
            raise FieldError(
                join(path, "namespace"), f"must be the policy's namespace {meta.namespace!r}"
            )
        refs.append(
            PolicyTargetRef(
                kind=req_str(entry, "kind", path),
                name=req_str(entry, "name", path),
                group=str_or(entry, "group", path, ""),
                namespace=namespace,
            )
        )
    return tuple(refs)


def _ports(obj: Obj, key: str, path: str) -> tuple[int, ...]:
    ports = []
    for i, value in enumerate(opt_list(obj, key, path)):
        # Istio writes ports as strings ("8080"); an unquoted number means the same.
        text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
        if not text.isdigit() or int(text) > 65535:
            raise FieldError(
                f"{join(path, key)}[{i}]", f"expected a port 0-65535, got {describe(value)}"
            )
        ports.append(int(text))
    return tuple(ports)


def _ip_blocks(obj: Obj, key: str, path: str) -> tuple[str, ...]:
    values = str_list(obj, key, path)
    return tuple(check_ip_or_cidr(v, f"{join(path, key)}[{i}]") for i, v in enumerate(values))


def _source(raw: Obj, path: str) -> Source:
    source = Source(
        principals=str_list(raw, "principals", path),
        not_principals=str_list(raw, "notPrincipals", path),
        request_principals=str_list(raw, "requestPrincipals", path),
        not_request_principals=str_list(raw, "notRequestPrincipals", path),
        namespaces=str_list(raw, "namespaces", path),
        not_namespaces=str_list(raw, "notNamespaces", path),
        service_accounts=str_list(raw, "serviceAccounts", path),
        not_service_accounts=str_list(raw, "notServiceAccounts", path),
        ip_blocks=_ip_blocks(raw, "ipBlocks", path),
        not_ip_blocks=_ip_blocks(raw, "notIpBlocks", path),
        remote_ip_blocks=_ip_blocks(raw, "remoteIpBlocks", path),
        not_remote_ip_blocks=_ip_blocks(raw, "notRemoteIpBlocks", path),
    )
    if source == Source():
        raise FieldError(path, "must not be empty")  # Istio validation
    return source


def _operation(raw: Obj, path: str) -> Operation:
    operation = Operation(
        hosts=str_list(raw, "hosts", path),
        not_hosts=str_list(raw, "notHosts", path),
        ports=_ports(raw, "ports", path),
        not_ports=_ports(raw, "notPorts", path),
        methods=str_list(raw, "methods", path),
        not_methods=str_list(raw, "notMethods", path),
        paths=str_list(raw, "paths", path),
        not_paths=str_list(raw, "notPaths", path),
    )
    if operation == Operation():
        raise FieldError(path, "must not be empty")  # Istio validation
    return operation


def _rule(raw: Obj, path: str) -> AuthorizationRule:
    sources = []
    for p, entry in each_map(raw, "from", path):
        if entry.get("source") is None:
            raise FieldError(join(p, "source"), "required")
        sources.append(_source(opt_map(entry, "source", p), join(p, "source")))
    operations = []
    for p, entry in each_map(raw, "to", path):
        if entry.get("operation") is None:
            raise FieldError(join(p, "operation"), "required")
        operations.append(_operation(opt_map(entry, "operation", p), join(p, "operation")))
    conditions = []
    for p, entry in each_map(raw, "when", path):
        condition = Condition(
            key=req_str(entry, "key", p),
            values=str_list(entry, "values", p),
            not_values=str_list(entry, "notValues", p),
        )
        if not condition.values and not condition.not_values:
            raise FieldError(p, "one of values or notValues is required")
        conditions.append(condition)
    return AuthorizationRule(tuple(sources), tuple(operations), tuple(conditions))


def parse_authorization_policy(doc: Obj, meta: ObjectMeta) -> AuthorizationPolicy:
    spec = opt_map(doc, "spec", "")
    action = one_of(spec, "action", "spec", AUTHZ_ACTIONS, "ALLOW")
    provider = None
    if spec.get("provider") is not None:
        provider = req_str(opt_map(spec, "provider", "spec"), "name", "spec.provider")
    if action == "CUSTOM" and provider is None:
        raise FieldError("spec.provider", "required for action CUSTOM")
    if action != "CUSTOM" and provider is not None:
        raise FieldError("spec.provider", f"only allowed with action CUSTOM, not {action}")
    selector = _selector(spec)
    target_refs = _target_refs(spec, meta)
    if selector is not None and target_refs:
        raise FieldError("spec.targetRefs", "only one of selector or targetRef(s) may be set")
    # Istio reads the annotation with Go's strconv.ParseBool.
    dry_run_text = meta.annotations.get(DRY_RUN_ANNOTATION, "false")
    if dry_run_text not in _GO_BOOLS:
        raise FieldError(
            f"metadata.annotations.{DRY_RUN_ANNOTATION}",
            f'expected "true" or "false", got {dry_run_text!r}',
        )
    return AuthorizationPolicy(
        meta,
        action=action,
        rules=tuple(_rule(r, p) for p, r in each_map(spec, "rules", "spec")),
        selector=selector,
        target_refs=target_refs,
        provider=provider,
        dry_run=_GO_BOOLS[dry_run_text],
    )


def parse_peer_authentication(doc: Obj, meta: ObjectMeta) -> PeerAuthentication:
    spec = opt_map(doc, "spec", "")
    mtls = opt_map(spec, "mtls", "spec")
    port_level: dict[int, str] | None = None
    if spec.get("portLevelMtls") is not None:
        port_level = {}
        for port, setting in opt_map(spec, "portLevelMtls", "spec").items():
            path = f"spec.portLevelMtls.{port}"
            text = str(port) if isinstance(port, int | str) and not isinstance(port, bool) else ""
            if not text.isdigit() or not 1 <= int(text) <= 65535:
                raise FieldError(path, f"expected a port 1-65535 as key, got {describe(port)}")
            port_level[int(text)] = one_of(
                as_mapping(setting, path), "mode", path, MTLS_MODES, "UNSET"
            )
    selector = _selector(spec)
    # Istio validation: port-level settings need a workload selector.
    if port_level and not selector:
        raise FieldError("spec.portLevelMtls", "requires spec.selector")
    return PeerAuthentication(
        meta,
        mtls_mode=one_of(mtls, "mode", "spec.mtls", MTLS_MODES, "UNSET"),
        selector=selector,
        port_level_mtls=port_level,
    )


def _jwt_rule(raw: Obj, path: str) -> JWTRule:
    jwks = opt_str(raw, "jwks", path)
    jwks_uri = opt_str(raw, "jwksUri", path)
    return JWTRule(
        issuer=req_str(raw, "issuer", path),
        audiences=str_list(raw, "audiences", path),
        jwks=jwks or None,
        jwks_uri=jwks_uri or None,
        from_headers=tuple(
            JWTHeader(name=req_str(h, "name", p), prefix=str_or(h, "prefix", p, ""))
            for p, h in each_map(raw, "fromHeaders", path)
        ),
        from_params=str_list(raw, "fromParams", path),
        from_cookies=str_list(raw, "fromCookies", path),
        output_payload_to_header=opt_str(raw, "outputPayloadToHeader", path) or None,
        output_claim_to_headers=tuple(
            ClaimToHeader(header=req_str(c, "header", p), claim=req_str(c, "claim", p))
            for p, c in each_map(raw, "outputClaimToHeaders", path)
        ),
        forward_original_token=opt_bool(raw, "forwardOriginalToken", path),
    )


def parse_request_authentication(doc: Obj, meta: ObjectMeta) -> RequestAuthentication:
    spec = opt_map(doc, "spec", "")
    selector = _selector(spec)
    target_refs = _target_refs(spec, meta)
    if selector is not None and target_refs:
        raise FieldError("spec.targetRefs", "only one of selector or targetRef(s) may be set")
    return RequestAuthentication(
        meta,
        jwt_rules=tuple(_jwt_rule(r, p) for p, r in each_map(spec, "jwtRules", "spec")),
        selector=selector,
        target_refs=target_refs,
    )

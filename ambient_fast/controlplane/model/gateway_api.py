"""Gateway API kinds: Gateway, GatewayClass, HTTPRoute, GRPCRoute.

Routes keep their rule structure (matches, filters, backendRefs with weights) for the
waypoint's router. Defaults the API server would apply are applied here, so the model
sees what istiod sees in a cluster (e.g. a rule without matches matches PathPrefix "/").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ambient_fast.controlplane.model.core import _Named
from ambient_fast.controlplane.model.documents import SourceDocument
from ambient_fast.controlplane.model.fields import (
    FieldError,
    Obj,
    each_map,
    join,
    one_of,
    opt_duration,
    opt_int,
    opt_map,
    opt_port,
    opt_str,
    req_port,
    req_str,
    str_list,
    str_map,
    str_or,
)
from ambient_fast.controlplane.model.meta import ObjectMeta

GATEWAY_GROUP = "gateway.networking.k8s.io"
# The GatewayClass istiod uses for waypoints, and the label choosing their traffic type.
WAYPOINT_CLASS = "istio-waypoint"
WAYPOINT_FOR_LABEL = "istio.io/waypoint-for"

PATH_MATCH_TYPES = ("Exact", "PathPrefix", "RegularExpression")
VALUE_MATCH_TYPES = ("Exact", "RegularExpression")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
REDIRECT_CODES = (301, 302, 303, 307, 308)
PATH_MODIFIERS = ("ReplaceFullPath", "ReplacePrefixMatch")
# Gateway API: backendRef weights are 0..1,000,000, default 1.
MAX_WEIGHT = 1_000_000
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+")


@dataclass(frozen=True, slots=True)
class ParentRef:
    name: str
    group: str = GATEWAY_GROUP
    kind: str = "Gateway"
    namespace: str | None = None  # None: the route's own namespace
    section_name: str | None = None
    port: int | None = None

    @property
    def is_service(self) -> bool:
        """A GAMMA (mesh) attachment: core-group Service."""
        return self.kind == "Service" and self.group in ("", "core")


@dataclass(frozen=True, slots=True)
class BackendRef:
    name: str
    group: str = ""
    kind: str = "Service"
    namespace: str | None = None  # None: the route's own namespace
    port: int | None = None
    weight: int = 1
    filters: tuple[HTTPFilter, ...] = ()


@dataclass(frozen=True, slots=True)
class HeaderFilter:
    """RequestHeaderModifier / ResponseHeaderModifier."""

    type: Literal["RequestHeaderModifier", "ResponseHeaderModifier"]
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PathModifier:
    type: str  # ReplaceFullPath | ReplacePrefixMatch
    value: str


@dataclass(frozen=True, slots=True)
class RedirectFilter:
    TYPE: ClassVar[str] = "RequestRedirect"
    scheme: str | None = None
    hostname: str | None = None
    path: PathModifier | None = None
    port: int | None = None
    status_code: int = 302  # Gateway API default

    @property
    def type(self) -> str:
        return self.TYPE


@dataclass(frozen=True, slots=True)
class URLRewriteFilter:
    TYPE: ClassVar[str] = "URLRewrite"
    hostname: str | None = None
    path: PathModifier | None = None

    @property
    def type(self) -> str:
        return self.TYPE


@dataclass(frozen=True, slots=True)
class MirrorFilter:
    TYPE: ClassVar[str] = "RequestMirror"
    backend_ref: BackendRef
    percent: int | None = None
    fraction: tuple[int, int] | None = None  # numerator, denominator

    @property
    def type(self) -> str:
        return self.TYPE


@dataclass(frozen=True, slots=True)
class ExtensionRefFilter:
    TYPE: ClassVar[str] = "ExtensionRef"
    group: str
    kind: str
    name: str

    @property
    def type(self) -> str:
        return self.TYPE


@dataclass(frozen=True, slots=True)
class OtherFilter:
    """A filter type this model does not interpret (e.g. CORS); the router decides."""

    type: str
    config: Mapping[str, object]


HTTPFilter = (
    HeaderFilter
    | RedirectFilter
    | URLRewriteFilter
    | MirrorFilter
    | ExtensionRefFilter
    | OtherFilter
)


@dataclass(frozen=True, slots=True)
class PathMatch:
    type: str  # Exact | PathPrefix | RegularExpression
    value: str


@dataclass(frozen=True, slots=True)
class ValueMatch:
    """A header or query parameter match."""

    name: str
    value: str
    type: str = "Exact"  # Exact | RegularExpression


@dataclass(frozen=True, slots=True)
class HTTPRouteMatch:
    path: PathMatch = PathMatch("PathPrefix", "/")
    headers: tuple[ValueMatch, ...] = ()
    query_params: tuple[ValueMatch, ...] = ()
    method: str | None = None


@dataclass(frozen=True, slots=True)
class Timeouts:
    request: float | None = None  # seconds
    backend_request: float | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    attempts: int | None = None
    codes: tuple[int, ...] = ()
    backoff: float | None = None


@dataclass(frozen=True, slots=True)
class HTTPRouteRule:
    matches: tuple[HTTPRouteMatch, ...] = (HTTPRouteMatch(),)
    filters: tuple[HTTPFilter, ...] = ()
    backend_refs: tuple[BackendRef, ...] = ()
    name: str | None = None
    timeouts: Timeouts | None = None
    retry: Retry | None = None


@dataclass(frozen=True, slots=True)
class GRPCMethodMatch:
    type: str = "Exact"
    service: str | None = None
    method: str | None = None


@dataclass(frozen=True, slots=True)
class GRPCRouteMatch:
    method: GRPCMethodMatch | None = None
    headers: tuple[ValueMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class GRPCRouteRule:
    matches: tuple[GRPCRouteMatch, ...] = ()  # empty: matches every request
    filters: tuple[HTTPFilter, ...] = ()
    backend_refs: tuple[BackendRef, ...] = ()
    name: str | None = None


@dataclass(frozen=True, slots=True)
class HTTPRoute(_Named):
    KIND: ClassVar[str] = "HTTPRoute"
    meta: ObjectMeta
    parent_refs: tuple[ParentRef, ...] = ()
    hostnames: tuple[str, ...] = ()
    rules: tuple[HTTPRouteRule, ...] = ()
    # The document as written, carried to waypoints (see kinds.KindSpec.keep_source).
    source: SourceDocument | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class GRPCRoute(_Named):
    KIND: ClassVar[str] = "GRPCRoute"
    meta: ObjectMeta
    parent_refs: tuple[ParentRef, ...] = ()
    hostnames: tuple[str, ...] = ()
    rules: tuple[GRPCRouteRule, ...] = ()
    # The document as written, carried to waypoints (see kinds.KindSpec.keep_source).
    source: SourceDocument | None = field(default=None, compare=False, repr=False)


Route = HTTPRoute | GRPCRoute


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    port: int
    protocol: str
    hostname: str | None = None


@dataclass(frozen=True, slots=True)
class GatewayAddress:
    value: str
    type: str = "IPAddress"


@dataclass(frozen=True, slots=True)
class Gateway(_Named):
    KIND: ClassVar[str] = "Gateway"
    meta: ObjectMeta
    gateway_class_name: str
    listeners: tuple[Listener, ...] = ()
    addresses: tuple[GatewayAddress, ...] = ()
    infrastructure_labels: Mapping[str, str] | None = None

    @property
    def is_waypoint(self) -> bool:
        return self.gateway_class_name == WAYPOINT_CLASS


@dataclass(frozen=True, slots=True)
class GatewayClass(_Named):
    KIND: ClassVar[str] = "GatewayClass"
    meta: ObjectMeta
    controller_name: str


def parse_gateway_class(doc: Obj, meta: ObjectMeta) -> GatewayClass:
    spec = opt_map(doc, "spec", "")
    return GatewayClass(meta, controller_name=req_str(spec, "controllerName", "spec"))


def parse_gateway(doc: Obj, meta: ObjectMeta) -> Gateway:
    spec = opt_map(doc, "spec", "")
    listeners: list[Listener] = []
    names: set[str] = set()
    for path, entry in each_map(spec, "listeners", "spec"):
        name = req_str(entry, "name", path)
        if name in names:
            raise FieldError(join(path, "name"), f"duplicate listener name {name!r}")
        names.add(name)
        listeners.append(
            Listener(
                name=name,
                port=req_port(entry, "port", path),
                protocol=req_str(entry, "protocol", path),
                hostname=opt_str(entry, "hostname", path),
            )
        )
    if not listeners:
        raise FieldError("spec.listeners", "required (at least one listener)")
    addresses = tuple(
        GatewayAddress(
            value=req_str(entry, "value", path), type=str_or(entry, "type", path, "IPAddress")
        )
        for path, entry in each_map(spec, "addresses", "spec")
    )
    infrastructure = opt_map(spec, "infrastructure", "spec")
    return Gateway(
        meta,
        gateway_class_name=req_str(spec, "gatewayClassName", "spec"),
        listeners=tuple(listeners),
        addresses=addresses,
        infrastructure_labels=str_map(infrastructure, "labels", "spec.infrastructure")
        if "labels" in infrastructure
        else None,
    )


def _parent_refs(spec: Obj) -> tuple[ParentRef, ...]:
    return tuple(
        ParentRef(
            name=req_str(entry, "name", path),
            group=str_or(entry, "group", path, GATEWAY_GROUP),
            kind=str_or(entry, "kind", path, "Gateway"),
            namespace=opt_str(entry, "namespace", path) or None,
            section_name=opt_str(entry, "sectionName", path) or None,
            port=opt_port(entry, "port", path),
        )
        for path, entry in each_map(spec, "parentRefs", "spec")
    )


def _backend_ref(entry: Obj, path: str, *, with_weight: bool = True) -> BackendRef:
    weight = opt_int(entry, "weight", path, 0, MAX_WEIGHT) if with_weight else None
    return BackendRef(
        name=req_str(entry, "name", path),
        group=str_or(entry, "group", path, ""),
        kind=str_or(entry, "kind", path, "Service"),
        namespace=opt_str(entry, "namespace", path) or None,
        port=opt_port(entry, "port", path),
        weight=1 if weight is None else weight,
        filters=tuple(_filter(f, p) for p, f in each_map(entry, "filters", path)),
    )


def _header_pairs(obj: Obj, key: str, path: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for p, entry in each_map(obj, key, path):
        pairs.append((_header_name(entry, p), str_or(entry, "value", p, "")))
    return tuple(pairs)


def _header_name(entry: Obj, path: str) -> str:
    name = req_str(entry, "name", path)
    if not _HEADER_NAME.fullmatch(name):
        raise FieldError(join(path, "name"), f"invalid header name {name!r}")
    return name


def _path_modifier(obj: Obj, path: str) -> PathModifier | None:
    if obj.get("path") is None:
        return None
    p = join(path, "path")
    entry = opt_map(obj, "path", path)
    kind = one_of(entry, "type", p, PATH_MODIFIERS, "")
    key = "replaceFullPath" if kind == "ReplaceFullPath" else "replacePrefixMatch"
    value = opt_str(entry, key, p)
    if value is None:
        raise FieldError(join(p, key), f"required for type {kind}")
    return PathModifier(kind, value)


def _filter(entry: Obj, path: str) -> HTTPFilter:
    kind = req_str(entry, "type", path)

    def config(key: str) -> Obj:
        if entry.get(key) is None:
            raise FieldError(join(path, key), f"required for type {kind}")
        return opt_map(entry, key, path)

    if kind in ("RequestHeaderModifier", "ResponseHeaderModifier"):
        key = kind[0].lower() + kind[1:]
        body, p = config(key), join(path, key)
        header_type: Literal["RequestHeaderModifier", "ResponseHeaderModifier"] = (
            "RequestHeaderModifier" if kind == "RequestHeaderModifier" else "ResponseHeaderModifier"
        )
        return HeaderFilter(
            type=header_type,
            set=_header_pairs(body, "set", p),
            add=_header_pairs(body, "add", p),
            remove=str_list(body, "remove", p),
        )
    if kind == "RequestRedirect":
        body, p = config("requestRedirect"), join(path, "requestRedirect")
        scheme = opt_str(body, "scheme", p)
        if scheme is not None and scheme not in ("http", "https"):
            raise FieldError(join(p, "scheme"), f'expected "http" or "https", got {scheme!r}')
        code = opt_int(body, "statusCode", p, 100, 599)
        if code is not None and code not in REDIRECT_CODES:
            allowed = ", ".join(map(str, REDIRECT_CODES))
            raise FieldError(join(p, "statusCode"), f"expected one of {allowed}, got {code}")
        return RedirectFilter(
            scheme=scheme,
            hostname=opt_str(body, "hostname", p),
            path=_path_modifier(body, p),
            port=opt_port(body, "port", p),
            status_code=302 if code is None else code,
        )
    if kind == "URLRewrite":
        body, p = config("urlRewrite"), join(path, "urlRewrite")
        return URLRewriteFilter(hostname=opt_str(body, "hostname", p), path=_path_modifier(body, p))
    if kind == "RequestMirror":
        body, p = config("requestMirror"), join(path, "requestMirror")
        fraction = None
        if body.get("fraction") is not None:
            fp = join(p, "fraction")
            f = opt_map(body, "fraction", p)
            numerator = opt_int(f, "numerator", fp, 0, 2**31 - 1)
            denominator = opt_int(f, "denominator", fp, 1, 2**31 - 1)
            fraction = (numerator or 0, 100 if denominator is None else denominator)
        return MirrorFilter(
            backend_ref=_backend_ref(
                opt_map(body, "backendRef", p), join(p, "backendRef"), with_weight=False
            ),
            percent=opt_int(body, "percent", p, 0, 100),
            fraction=fraction,
        )
    if kind == "ExtensionRef":
        body, p = config("extensionRef"), join(path, "extensionRef")
        return ExtensionRefFilter(
            group=str_or(body, "group", p, ""),
            kind=req_str(body, "kind", p),
            name=req_str(body, "name", p),
        )
    return OtherFilter(kind, dict(entry))


def _regex(value: str, path: str) -> None:
    try:
        re.compile(value)
    except re.error as exc:
        raise FieldError(path, f"invalid regular expression {value!r}: {exc}") from None


def _value_matches(obj: Obj, key: str, path: str) -> tuple[ValueMatch, ...]:
    matches = []
    for p, entry in each_map(obj, key, path):
        kind = one_of(entry, "type", p, VALUE_MATCH_TYPES, "Exact")
        value = str_or(entry, "value", p, "")
        if kind == "RegularExpression":
            _regex(value, join(p, "value"))
        matches.append(ValueMatch(name=req_str(entry, "name", p), value=value, type=kind))
    return tuple(matches)


def _http_match(entry: Obj, path: str) -> HTTPRouteMatch:
    path_match = HTTPRouteMatch().path
    if entry.get("path") is not None:
        pp = join(path, "path")
        raw = opt_map(entry, "path", path)
        kind = one_of(raw, "type", pp, PATH_MATCH_TYPES, "PathPrefix")
        value = str_or(raw, "value", pp, "/")
        if kind == "RegularExpression":
            _regex(value, join(pp, "value"))
        elif not value.startswith("/"):
            raise FieldError(join(pp, "value"), f'must start with "/", got {value!r}')
        path_match = PathMatch(kind, value)
    method = opt_str(entry, "method", path)
    if method is not None and method not in HTTP_METHODS:
        raise FieldError(join(path, "method"), f"unknown HTTP method {method!r}")
    return HTTPRouteMatch(
        path=path_match,
        headers=_value_matches(entry, "headers", path),
        query_params=_value_matches(entry, "queryParams", path),
        method=method,
    )


def _rule_name(entry: Obj, path: str) -> str | None:
    return opt_str(entry, "name", path) or None


def parse_http_route(doc: Obj, meta: ObjectMeta) -> HTTPRoute:
    spec = opt_map(doc, "spec", "")
    rules = []
    for path, entry in each_map(spec, "rules", "spec"):
        matches = tuple(_http_match(m, p) for p, m in each_map(entry, "matches", path))
        timeouts = None
        if entry.get("timeouts") is not None:
            tp, raw = join(path, "timeouts"), opt_map(entry, "timeouts", path)
            timeouts = Timeouts(
                request=opt_duration(raw, "request", tp),
                backend_request=opt_duration(raw, "backendRequest", tp),
            )
        retry = None
        if entry.get("retry") is not None:
            rp, raw = join(path, "retry"), opt_map(entry, "retry", path)
            codes = []
            for i, code in enumerate(raw.get("codes") or ()):
                if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 599:
                    raise FieldError(f"{rp}.codes[{i}]", "expected an HTTP status 400-599")
                codes.append(code)
            retry = Retry(
                attempts=opt_int(raw, "attempts", rp, 0, 2**31 - 1),
                codes=tuple(codes),
                backoff=opt_duration(raw, "backoff", rp),
            )
        rules.append(
            HTTPRouteRule(
                matches=matches or HTTPRouteRule().matches,
                filters=tuple(_filter(f, p) for p, f in each_map(entry, "filters", path)),
                backend_refs=tuple(
                    _backend_ref(b, p) for p, b in each_map(entry, "backendRefs", path)
                ),
                name=_rule_name(entry, path),
                timeouts=timeouts,
                retry=retry,
            )
        )
    return HTTPRoute(
        meta,
        parent_refs=_parent_refs(spec),
        hostnames=str_list(spec, "hostnames", "spec"),
        rules=tuple(rules) or (HTTPRouteRule(),),
    )


def _grpc_match(entry: Obj, path: str) -> GRPCRouteMatch:
    method = None
    if entry.get("method") is not None:
        mp, raw = join(path, "method"), opt_map(entry, "method", path)
        kind = one_of(raw, "type", mp, VALUE_MATCH_TYPES, "Exact")
        method = GRPCMethodMatch(
            type=kind,
            service=opt_str(raw, "service", mp) or None,
            method=opt_str(raw, "method", mp) or None,
        )
        if method.service is None and method.method is None:
            raise FieldError(mp, "one of service or method is required")
        if kind == "RegularExpression":
            for part in ("service", "method"):
                value = getattr(method, part)
                if value is not None:
                    _regex(value, join(mp, part))
    return GRPCRouteMatch(method=method, headers=_value_matches(entry, "headers", path))


def parse_grpc_route(doc: Obj, meta: ObjectMeta) -> GRPCRoute:
    spec = opt_map(doc, "spec", "")
    rules = tuple(
        GRPCRouteRule(
            matches=tuple(_grpc_match(m, p) for p, m in each_map(entry, "matches", path)),
            filters=tuple(_filter(f, p) for p, f in each_map(entry, "filters", path)),
            backend_refs=tuple(_backend_ref(b, p) for p, b in each_map(entry, "backendRefs", path)),
            name=_rule_name(entry, path),
        )
        for path, entry in each_map(spec, "rules", "spec")
    )
    return GRPCRoute(
        meta,
        parent_refs=_parent_refs(spec),
        hostnames=str_list(spec, "hostnames", "spec"),
        rules=rules or (GRPCRouteRule(),),
    )

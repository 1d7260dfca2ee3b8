"""ztunnel's local config format (LOCAL_XDS_PATH) parsed into workload-API messages.

The format is istio/ztunnel's LocalConfig (see its examples/localhost.yaml): top-level
`workloads`, `services` and `policies`, camelCase fields, enums spelled as ztunnel spells them
(`HBONE`, `Allow`, `Namespace`, ...; case and underscores are ignored), services with
"network/ip" VIPs and {port: targetPort} maps, policy rules as lists of clauses of matches, and
string matches as `{Exact: v}` / `{Prefix: v}` / `{Suffix: v}` / `{Presence: []}` (a plain
string in Istio's `v`, `v*`, `*v`, `*` notation works too). Each entry becomes the message the
control plane would send and passes the store's own validation, so one bad entry fails the
whole file (never half of it). Errors name the file and the field.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.empty_pb2 import Empty
from google.protobuf.wrappers_pb2 import UInt32Value

from ambient_fast.state.convert import InvalidResource, address_from_proto, policy_from_proto
from ambient_fast.xds.proto import authorization_pb2 as apb
from ambient_fast.xds.proto import workload_pb2 as wpb

T = TypeVar("T")


class LocalConfigError(ValueError):
    """A local config file that cannot be used; says which file and which field."""

    def __init__(self, source: str, where: str, message: str) -> None:
        super().__init__(f"{source}: {where}: {message}" if where else f"{source}: {message}")
        self.source = source
        self.where = where


class _Node:
    """One YAML mapping with the path that leads to it, for error messages."""

    def __init__(self, source: str, where: str, value: object) -> None:
        if not isinstance(value, dict):
            raise LocalConfigError(source, where, f"expected a mapping, got {_kind(value)}")
        self.source = source
        self.where = where
        self.value: dict[object, object] = value

    def error(self, key: str, message: str) -> LocalConfigError:
        return LocalConfigError(self.source, self.at(key), message)

    def at(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def check_keys(self, known: tuple[str, ...], hints: Mapping[str, str] | None = None) -> None:
        for key in self.value:
            if key not in known:
                hint = (hints or {}).get(str(key)) or f"known fields: {', '.join(known)}"
                raise LocalConfigError(self.source, self.at(str(key)), f"unknown field ({hint})")

    def get(self, key: str, kind: type[T], default: T) -> T:
        value = self.value.get(key)
        if value is None:
            return default
        # YAML reads 1/80 as int where a string is wanted (a name "80"): accept, as text.
        if kind is str and isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
            raise self.error(key, f"expected {kind.__name__}, got {_kind(value)}")
        return value

    def required(self, key: str) -> str:
        value = self.get(key, str, "")
        if not value:
            raise self.error(key, "required")
        return value

    def strings(self, key: str) -> list[str]:
        return [str(v) for v in self.get(key, list, [])]

    def child(self, key: str) -> _Node | None:
        value = self.value.get(key)
        return None if value is None else _Node(self.source, self.at(key), value)

    def items(self, key: str) -> list[_Node]:
        return [
            _Node(self.source, f"{self.at(key)}[{i}]", v)
            for i, v in enumerate(self.get(key, list, []))
        ]


def _kind(value: object) -> str:
    return "nothing" if value is None else type(value).__name__


def _choice(node: _Node, key: str, choices: Mapping[str, T], default: T) -> T:
    """An enum as ztunnel spells it; case, '_' and '-' do not matter."""
    raw = node.get(key, str, "")
    if not raw:
        return default
    found = choices.get(raw.lower().replace("_", "").replace("-", ""))
    if found is None:
        raise node.error(key, f"{raw!r} is not one of {', '.join(choices)}")
    return found


def _ip(node: _Node, key: str, text: str) -> bytes:
    try:
        return ipaddress.ip_address(text.strip()).packed
    except ValueError:
        raise node.error(key, f"{text!r} is not an IP address") from None


def _port(node: _Node, key: str, value: object, *, zero: bool = False) -> int:
    try:
        port = int(str(value))
    except ValueError:
        raise node.error(key, f"port {value!r} is not a number") from None
    if not (0 if zero else 1) <= port <= 65535:
        raise node.error(key, f"port {port} out of range")
    return port


def _port_list(node: _Node, key: str) -> list[wpb.Port]:
    ports = node.get(key, dict, {})
    return [
        wpb.Port(
            service_port=_port(node, key, port),
            target_port=_port(node, f"{key}[{port}]", target, zero=True),
        )
        for port, target in ports.items()
    ]


def _network_address(node: _Node, key: str, text: str) -> wpb.NetworkAddress:
    network, slash, ip = text.rpartition("/")
    if not slash:
        raise node.error(key, f"{text!r} is not network/IP (use /IP for the default network)")
    return wpb.NetworkAddress(network=network, address=_ip(node, key, ip))


def _gateway(node: _Node, key: str) -> wpb.GatewayAddress | None:
    gw = node.child(key)
    if gw is None:
        return None
    gw.check_keys(("destination", "hboneMtlsPort"))
    destination = gw.required("destination")
    port = _port(gw, "hboneMtlsPort", gw.get("hboneMtlsPort", int, 15008))
    # ztunnel tries network/IP first, then namespace/hostname.
    first, slash, second = destination.partition("/")
    if not slash:
        raise gw.error("destination", f"{destination!r} is neither network/IP nor ns/hostname")
    try:
        ip = ipaddress.ip_address(second)
    except ValueError:
        hostname = wpb.NamespacedHostname(namespace=first, hostname=second)
        return wpb.GatewayAddress(hostname=hostname, hbone_mtls_port=port)
    address = wpb.NetworkAddress(network=first, address=ip.packed)
    return wpb.GatewayAddress(address=address, hbone_mtls_port=port)


_PROTOCOLS = {"tcp": wpb.NONE, "hbone": wpb.HBONE}
_NETWORK_MODES = {"standard": wpb.STANDARD, "hostnetwork": wpb.HOST_NETWORK}
_STATUSES = {"healthy": wpb.HEALTHY, "unhealthy": wpb.UNHEALTHY}
_WORKLOAD_TYPES = {
    "deployment": wpb.DEPLOYMENT,
    "cronjob": wpb.CRONJOB,
    "pod": wpb.POD,
    "job": wpb.JOB,
}
_APP_TUNNELS = {"none": wpb.ApplicationTunnel.NONE, "proxy": wpb.ApplicationTunnel.PROXY}
_WORKLOAD_FIELDS = (
    "uid", "name", "namespace", "serviceAccount", "trustDomain", "workloadIps", "protocol",
    "networkMode", "node", "network", "hostname", "workloadName", "workloadType",
    "canonicalName", "canonicalRevision", "nativeTunnel", "applicationTunnel", "waypoint",
    "networkGateway", "authorizationPolicies", "status", "clusterId", "locality", "capacity",
    "services",
)  # fmt: skip


def _workload(node: _Node) -> wpb.Workload:
    node.check_keys(_WORKLOAD_FIELDS, {"workloadIp": "use workloadIps: [ip] (ztunnel's format)"})
    services = {}
    for key, ports in node.get("services", dict, {}).items():
        service = _Node(node.source, f"{node.at('services')}[{key!r}]", ports)
        services[str(key)] = wpb.PortList(
            ports=[
                wpb.Port(
                    service_port=_port(service, str(port), port),
                    target_port=_port(service, str(port), target, zero=True),
                )
                for port, target in service.value.items()
            ]
        )
    workload = wpb.Workload(
        uid=node.required("uid"),
        name=node.get("name", str, ""),
        namespace=node.required("namespace"),
        addresses=[_ip(node, "workloadIps", ip) for ip in node.strings("workloadIps")],
        hostname=node.get("hostname", str, ""),
        network=node.get("network", str, ""),
        tunnel_protocol=_choice(node, "protocol", _PROTOCOLS, wpb.NONE),
        trust_domain=node.get("trustDomain", str, ""),
        service_account=node.get("serviceAccount", str, ""),
        waypoint=_gateway(node, "waypoint"),
        network_gateway=_gateway(node, "networkGateway"),
        node=node.get("node", str, ""),
        canonical_name=node.get("canonicalName", str, ""),
        canonical_revision=node.get("canonicalRevision", str, ""),
        workload_type=_choice(node, "workloadType", _WORKLOAD_TYPES, wpb.DEPLOYMENT),
        workload_name=node.get("workloadName", str, ""),
        native_tunnel=node.get("nativeTunnel", bool, False),
        services=services,
        authorization_policies=node.strings("authorizationPolicies"),
        status=_choice(node, "status", _STATUSES, wpb.HEALTHY),
        cluster_id=node.get("clusterId", str, ""),
        network_mode=_choice(node, "networkMode", _NETWORK_MODES, wpb.STANDARD),
        capacity=UInt32Value(value=node.get("capacity", int, 1)),
    )
    if (tunnel := node.child("applicationTunnel")) is not None:
        tunnel.check_keys(("protocol", "port"))
        workload.application_tunnel.CopyFrom(
            wpb.ApplicationTunnel(
                protocol=_choice(tunnel, "protocol", _APP_TUNNELS, wpb.ApplicationTunnel.NONE),
                port=_port(tunnel, "port", tunnel.get("port", int, 0), zero=True),
            )
        )
    if (locality := node.child("locality")) is not None:
        locality.check_keys(("region", "zone", "subzone"))
        workload.locality.CopyFrom(
            wpb.Locality(
                region=locality.get("region", str, ""),
                zone=locality.get("zone", str, ""),
                subzone=locality.get("subzone", str, ""),
            )
        )
    return workload


_SCOPES = {
    "region": wpb.LoadBalancing.REGION,
    "zone": wpb.LoadBalancing.ZONE,
    "subzone": wpb.LoadBalancing.SUBZONE,
    "node": wpb.LoadBalancing.NODE,
    "cluster": wpb.LoadBalancing.CLUSTER,
    "network": wpb.LoadBalancing.NETWORK,
}
_LB_MODES = {
    "standard": wpb.LoadBalancing.UNSPECIFIED_MODE,
    "strict": wpb.LoadBalancing.STRICT,
    "failover": wpb.LoadBalancing.FAILOVER,
    "passthrough": wpb.LoadBalancing.PASSTHROUGH,
}
_HEALTH = {"onlyhealthy": wpb.LoadBalancing.ONLY_HEALTHY, "allowall": wpb.LoadBalancing.ALLOW_ALL}
_IP_FAMILIES = {"dual": wpb.DUAL, "ipv4": wpb.IPV4_ONLY, "ipv6": wpb.IPV6_ONLY}
_SERVICE_FIELDS = (
    "name", "namespace", "hostname", "vips", "ports", "subjectAltNames", "waypoint",
    "loadBalancer", "ipFamilies",
)  # fmt: skip


def _service(node: _Node) -> wpb.Service:
    node.check_keys(
        _SERVICE_FIELDS,
        {"endpoints": "endpoints come from each workload's services map"},
    )
    service = wpb.Service(
        name=node.get("name", str, ""),
        namespace=node.required("namespace"),
        hostname=node.required("hostname"),
        addresses=[_network_address(node, "vips", vip) for vip in node.strings("vips")],
        ports=_port_list(node, "ports"),
        subject_alt_names=node.strings("subjectAltNames"),
        waypoint=_gateway(node, "waypoint"),
        ip_families=_choice(node, "ipFamilies", _IP_FAMILIES, wpb.AUTOMATIC),
    )
    if (lb := node.child("loadBalancer")) is not None:
        lb.check_keys(("routingPreferences", "mode", "healthPolicy"))
        preferences = []
        for i, scope in enumerate(lb.strings("routingPreferences")):
            found = _SCOPES.get(scope.lower())
            if found is None:
                raise lb.error(f"routingPreferences[{i}]", f"{scope!r} is not a scope")
            preferences.append(found)
        service.load_balancing.CopyFrom(
            wpb.LoadBalancing(
                routing_preference=preferences,
                mode=_choice(lb, "mode", _LB_MODES, wpb.LoadBalancing.UNSPECIFIED_MODE),
                health_policy=_choice(lb, "healthPolicy", _HEALTH, wpb.LoadBalancing.ONLY_HEALTHY),
            )
        )
    return service


_POLICY_SCOPES = {
    "global": apb.GLOBAL,
    "namespace": apb.NAMESPACE,
    "workloadselector": apb.WORKLOAD_SELECTOR,
}
_ACTIONS = {"allow": apb.ALLOW, "deny": apb.DENY}
_STRING_LISTS = ("namespaces", "notNamespaces", "principals", "notPrincipals")
_SA_LISTS = ("serviceAccounts", "notServiceAccounts")
_IP_LISTS = ("sourceIps", "notSourceIps", "destinationIps", "notDestinationIps")
_PORT_LISTS = ("destinationPorts", "notDestinationPorts")


def _snake(camel: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)


def _string_match(node: _Node, key: str, value: object) -> apb.StringMatch:
    if isinstance(value, str):  # Istio's notation
        if value == "*":
            return apb.StringMatch(presence=Empty())
        if value.endswith("*"):
            return apb.StringMatch(prefix=value[:-1])
        if value.startswith("*"):
            return apb.StringMatch(suffix=value[1:])
        return apb.StringMatch(exact=value)
    if isinstance(value, dict) and len(value) == 1:
        (kind, text), = value.items()  # fmt: skip
        kind = str(kind).lower()
        if kind == "presence":
            return apb.StringMatch(presence=Empty())
        if isinstance(text, str):
            if kind == "exact":
                return apb.StringMatch(exact=text)
            if kind == "prefix":
                return apb.StringMatch(prefix=text)
            if kind == "suffix":
                return apb.StringMatch(suffix=text)
    raise node.error(key, f"{value!r} is not {{Exact|Prefix|Suffix: text}} or {{Presence: []}}")


def _cidr(node: _Node, key: str, text: str) -> apb.Address:
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise node.error(key, f"{text!r} is not an IP or CIDR") from None
    return apb.Address(address=network.network_address.packed, length=network.prefixlen)


def _match(node: _Node) -> apb.Match:
    node.check_keys((*_STRING_LISTS, *_SA_LISTS, *_IP_LISTS, *_PORT_LISTS))
    match = apb.Match()
    for key in _STRING_LISTS:
        getattr(match, _snake(key)).extend(
            _string_match(node, key, v) for v in node.get(key, list, [])
        )
    for key in _SA_LISTS:
        for item in node.items(key):
            item.check_keys(("namespace", "serviceAccount"))
            getattr(match, _snake(key)).append(
                apb.ServiceAccountMatch(
                    namespace=item.required("namespace"),
                    service_account=item.required("serviceAccount"),
                )
            )
    for key in _IP_LISTS:
        getattr(match, _snake(key)).extend(_cidr(node, key, v) for v in node.strings(key))
    for key in _PORT_LISTS:
        getattr(match, _snake(key)).extend(_port(node, key, p) for p in node.get(key, list, []))
    return match


def _policy(node: _Node) -> apb.Authorization:
    node.check_keys(("name", "namespace", "scope", "action", "rules", "dryRun"))
    rules = []
    for r, rule in enumerate(node.get("rules", list, [])):
        if not isinstance(rule, list):
            raise node.error(f"rules[{r}]", "a rule is a list of clauses")
        clauses = []
        for c, clause in enumerate(rule):
            if not isinstance(clause, list):
                raise node.error(f"rules[{r}][{c}]", "a clause is a list of matches")
            where = f"{node.at('rules')}[{r}][{c}]"
            matches = [_match(_Node(node.source, f"{where}[{m}]", v)) for m, v in enumerate(clause)]
            clauses.append(apb.Clause(matches=matches))
        rules.append(apb.Rule(clauses=clauses))
    return apb.Authorization(
        name=node.required("name"),
        namespace=node.required("namespace"),
        scope=_choice(node, "scope", _POLICY_SCOPES, apb.GLOBAL),
        action=_choice(node, "action", _ACTIONS, apb.ALLOW),
        rules=rules,
        dry_run=node.get("dryRun", bool, False),
    )


@dataclass(frozen=True, slots=True)
class LocalConfig:
    """A parsed local file: the resources it defines, by xDS resource name."""

    addresses: dict[str, wpb.Address]
    authorizations: dict[str, apb.Authorization]

    def summary(self) -> str:
        workloads = sum(a.HasField("workload") for a in self.addresses.values())
        services = len(self.addresses) - workloads
        return f"{workloads} workloads, {services} services, {len(self.authorizations)} policies"


def parse_local_config(text: str, source: str = "<local config>") -> LocalConfig:
    """Parses ztunnel's local YAML; raises LocalConfigError naming `source` and the field."""
    # Imported here: a proxy fed by xDS never loads the YAML parser (about 1.3 MiB).
    import yaml  # type: ignore[import-untyped,unused-ignore]

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise LocalConfigError(source, "", f"YAML syntax error: {e}") from None
    if document is None:
        return LocalConfig({}, {})
    if isinstance(document, list):
        raise LocalConfigError(
            source, "", "a bare list is ztunnel's old format; put it under `workloads:`"
        )
    root = _Node(source, "", document)
    root.check_keys(("workloads", "services", "policies"))
    addresses: dict[str, wpb.Address] = {}
    authorizations: dict[str, apb.Authorization] = {}
    defined: dict[str, str] = {}

    def claim(name: str, where: str) -> None:
        if name in defined:
            raise LocalConfigError(source, where, f"{name!r} is already defined at {defined[name]}")
        defined[name] = where

    for node in root.items("workloads"):
        address = wpb.Address(workload=_workload(node))
        name = address.workload.uid
        claim(name, node.where)
        addresses[name] = _validated(address, name, node)
    for node in root.items("services"):
        address = wpb.Address(service=_service(node))
        name = f"{address.service.namespace}/{address.service.hostname}"
        claim(name, node.where)
        addresses[name] = _validated(address, name, node)
    for node in root.items("policies"):
        policy = _policy(node)
        name = f"{policy.namespace}/{policy.name}"
        if name in authorizations:
            raise LocalConfigError(source, node.where, f"policy {name!r} is defined twice")
        try:
            policy_from_proto(name, policy)
        except InvalidResource as e:
            raise LocalConfigError(source, node.where, str(e)) from None
        authorizations[name] = policy
    return LocalConfig(addresses, authorizations)


def _validated(address: wpb.Address, name: str, node: _Node) -> wpb.Address:
    # The store's own checks, here so that a bad entry fails the whole file, not one resource.
    try:
        address_from_proto(name, address)
    except InvalidResource as e:
        raise LocalConfigError(node.source, node.where, str(e)) from None
    return address

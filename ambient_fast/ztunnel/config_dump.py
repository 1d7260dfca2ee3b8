"""The admin `/config_dump`: the node proxy's state in istio/ztunnel's JSON shape.

Names and value spellings are ztunnel's serde output (src/state/workload.rs, service.rs,
src/rbac.rs, src/admin.rs, src/inpod/admin.rs), so `istioctl ztunnel-config ... -f dump.json`
reads it: its Go structs (istioctl/pkg/writer/ztunnel/configdump/api.go) are checked against
this output in tests/unit/test_config_dump.py. Lists are sorted as ztunnel sorts them.
"""

from __future__ import annotations

import base64
import datetime
import enum
from collections.abc import Iterable
from dataclasses import fields
from typing import Any

from ambient_fast import __version__, _native
from ambient_fast.identity.manager import CertificateManager
from ambient_fast.policy.model import Match, Policy, StringMatch, StringMatchKind
from ambient_fast.state import GatewayAddress, Service, StateStore, Workload
from ambient_fast.state.model import IpFamilies
from ambient_fast.ztunnel.config import WorkloadInfo, ZtunnelConfig

# ztunnel's IpFamily (service.rs); AUTOMATIC is left out, as ztunnel leaves out None.
_IP_FAMILIES = {IpFamilies.IPV4_ONLY: "IPv4", IpFamilies.IPV6_ONLY: "IPv6", IpFamilies.DUAL: "Dual"}


def _pascal(value: str) -> str:
    """WORKLOAD_SELECTOR -> WorkloadSelector (ztunnel's Rust enum variant names)."""
    return "".join(part.capitalize() for part in value.split("_"))


def _gateway(address: GatewayAddress) -> dict[str, Any]:
    # The destination is "<namespace>/<hostname>" or "<network>/<ip>", as istioctl resolves it.
    return {"destination": str(address.destination), "hboneMtlsPort": address.hbone_mtls_port}


def workload_dump(workload: Workload) -> dict[str, Any]:
    dump: dict[str, Any] = {
        "uid": workload.uid,
        "workloadIps": [str(ip) for ip in workload.ips],
        "protocol": "HBONE" if workload.captured else "TCP",
        "networkMode": _pascal(workload.network_mode.value),
        "name": workload.name,
        "namespace": workload.namespace,
        "serviceAccount": workload.service_account,
        "workloadName": workload.workload_name,
        "workloadType": workload.workload_type.value.lower(),
        "canonicalName": workload.canonical_name,
        "canonicalRevision": workload.canonical_revision,
        "clusterId": workload.cluster_id,
        "trustDomain": workload.trust_domain,
        "node": workload.node,
        "network": workload.network,
        "status": "Healthy" if workload.healthy else "Unhealthy",
        "hostname": workload.hostname,
        "nativeTunnel": workload.native_tunnel,
        "capacity": workload.capacity,
        "services": sorted(workload.services),
    }
    locality = workload.locality
    if locality.region or locality.zone or locality.subzone:
        dump["locality"] = {
            "region": locality.region,
            "zone": locality.zone,
            "subzone": locality.subzone,
        }
    if workload.waypoint is not None:
        dump["waypoint"] = _gateway(workload.waypoint)
    if workload.network_gateway is not None:
        dump["networkGateway"] = _gateway(workload.network_gateway)
    tunnel = workload.application_tunnel
    if tunnel is not None:
        dump["applicationTunnel"] = {"protocol": tunnel.protocol.value, "port": tunnel.port}
    if workload.authorization_policies:
        dump["authorizationPolicies"] = list(workload.authorization_policies)
    return dump


def service_dump(service: Service, members: Iterable[Workload]) -> dict[str, Any]:
    """`members`: the workloads listing the service; as ztunnel, unhealthy ones are endpoints
    only when the service's health policy is ALLOW_ALL."""
    endpoints = {
        workload.uid: {
            "workloadUid": workload.uid,
            "service": service.key,
            "port": {str(p): t for p, t in workload.services[service.key].items()},
            "status": "Healthy" if workload.healthy else "Unhealthy",
        }
        for workload in members
        if workload.healthy or service.accepts_unhealthy
    }
    dump: dict[str, Any] = {
        "name": service.name,
        "namespace": service.namespace,
        "hostname": service.hostname,
        "vips": [str(vip) for vip in service.vips],
        "ports": {str(p): port.target_port for p, port in service.ports.items()},
        "endpoints": endpoints,
        "subjectAltNames": list(service.subject_alt_names),
    }
    if service.waypoint is not None:
        dump["waypoint"] = _gateway(service.waypoint)
    lb = service.load_balancing
    if lb is not None:
        dump["loadBalancer"] = {
            "routingPreferences": [_pascal(s.value) for s in lb.routing_preference],
            "mode": _pascal(lb.mode.value),
            "healthPolicy": _pascal(lb.health_policy.value),
        }
    if service.ip_families in _IP_FAMILIES:
        dump["ipFamilies"] = _IP_FAMILIES[service.ip_families]
    return dump


def _string_match(match: StringMatch) -> dict[str, Any]:
    # Rust's externally tagged enum: {"Exact": "x"}, ..., the unit-like Presence() as [].
    if match.kind is StringMatchKind.PRESENCE:
        return {"Presence": []}
    return {match.kind.value.capitalize(): match.value}


def _service_account(namespaced: str) -> dict[str, str]:
    namespace, _, name = namespaced.partition("/")
    return {"namespace": namespace, "serviceAccount": name}


def _match_dump(match: Match) -> dict[str, Any]:
    """ztunnel's RbacMatch: the L4 fields, empty ones left out, networks as "ip/prefix"."""
    fields: dict[str, list[Any]] = {
        "namespaces": [_string_match(s) for s in match.namespaces],
        "notNamespaces": [_string_match(s) for s in match.not_namespaces],
        "serviceAccounts": [_service_account(s) for s in match.service_accounts],
        "notServiceAccounts": [_service_account(s) for s in match.not_service_accounts],
        "principals": [_string_match(s) for s in match.principals],
        "notPrincipals": [_string_match(s) for s in match.not_principals],
        "sourceIps": [str(n) for n in match.source_ips],
        "notSourceIps": [str(n) for n in match.not_source_ips],
        "destinationIps": [str(n) for n in match.destination_ips],
        "notDestinationIps": [str(n) for n in match.not_destination_ips],
        "destinationPorts": list(match.destination_ports),
        "notDestinationPorts": list(match.not_destination_ports),
    }
    return {name: values for name, values in fields.items() if values}


def policy_dump(policy: Policy) -> dict[str, Any]:
    return {
        "name": policy.name,
        "namespace": policy.namespace,
        "scope": _pascal(policy.scope.value),
        "action": _pascal(policy.action.value),
        "rules": [
            [[_match_dump(m) for m in clause.matches] for clause in rule.clauses]
            for rule in policy.rules
        ],
        "dryRun": policy.dry_run,
    }


def _rfc3339(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _certificates(pem: bytes) -> list[dict[str, str]]:
    """ztunnel's CertDump per certificate: the PEM base64-encoded, the serial in decimal
    (istioctl parses it as decimal and shows hex), times in RFC 3339 seconds."""
    return [
        {
            "pem": base64.b64encode(cert.pem.encode()).decode(),
            "serialNumber": str(int.from_bytes(cert.serial_bytes, "big")),
            "validFrom": _rfc3339(cert.not_before),
            "expirationTime": _rfc3339(cert.not_after),
        }
        for cert in _native.parse_certificates(pem)
    ]


def certificate_dump(manager: CertificateManager) -> list[dict[str, Any]]:
    """Per identity: certChain is the leaf then intermediates, rootCerts the trust roots."""
    dumps = []
    for status in manager.status():
        state, certificate = status.state, status.certificate
        if state == "Unavailable" and status.last_error:
            state = f"Unavailable: {status.last_error}"
        dumps.append(
            {
                "identity": str(status.identity),
                "state": state,
                "certChain": _certificates(certificate.chain_pem) if certificate else [],
                "rootCerts": _certificates(certificate.roots_pem) if certificate else [],
            }
        )
    return dumps


def _workload_info(info: WorkloadInfo) -> dict[str, str]:
    return {"name": info.name, "namespace": info.namespace, "serviceAccount": info.service_account}


def workload_state_entry(
    state: str, info: WorkloadInfo, connections: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One pod of `workloadState` (ztunnel's inpod ProxyState): its state, its open connections
    once it has a proxy (`WorkloadProxy.connections`) and who it is."""
    entry: dict[str, Any] = {"state": state}
    if connections is not None:
        entry["connections"] = connections
    entry["info"] = _workload_info(info)
    return entry


def _camel(name: str) -> str:
    first, _, rest = name.partition("_")
    return first + _pascal(rest)


def _setting(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, WorkloadInfo):
        return _workload_info(value)
    if value is None or isinstance(value, str | int | float):
        return value
    return str(value)  # paths, IP addresses


def settings_dump(config: ZtunnelConfig) -> dict[str, object]:
    """Our settings under camelCase names, as ztunnel dumps its own Config (whose settings
    differ in detail); durations in seconds."""
    return {_camel(f.name): _setting(getattr(config, f.name)) for f in fields(config)}


def config_dump(
    store: StateStore,
    manager: CertificateManager,
    config: ZtunnelConfig,
    workload_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`workload_state`: in-pod mode's pods (uid -> `workload_state_entry`)."""
    workloads = sorted(store.workloads(), key=lambda w: w.uid)
    members: dict[str, list[Workload]] = {}
    for workload in workloads:
        for key in workload.services:
            members.setdefault(key, []).append(workload)
    services = sorted(store.services(), key=lambda s: (s.hostname, s.namespace))
    dump: dict[str, Any] = {
        "workloads": [workload_dump(w) for w in workloads],
        "services": [service_dump(s, members.get(s.key, ())) for s in services],
        "policies": [policy_dump(p) for p in sorted(store.policies(), key=lambda p: p.key)],
        "certificates": certificate_dump(manager),
        "version": {"version": __version__},
        "config": settings_dump(config),
    }
    if workload_state is not None:
        dump["workloadState"] = workload_state
    return dump

"""Istio networking kinds: DestinationRule, ServiceEntry, WorkloadEntry."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ambient_fast.controlplane.model.core import _Named
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
    opt_int,
    opt_map,
    opt_port,
    opt_str,
    req_port,
    req_str,
    str_list,
    str_map,
)
from ambient_fast.controlplane.model.meta import ObjectMeta

LB_SIMPLE = ("UNSPECIFIED", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN")
SE_LOCATIONS = ("MESH_EXTERNAL", "MESH_INTERNAL")
SE_RESOLUTIONS = ("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS")


@dataclass(frozen=True, slots=True)
class ConsistentHash:
    http_header_name: str | None = None
    http_cookie: str | None = None  # cookie name
    use_source_ip: bool = False
    http_query_parameter_name: str | None = None


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    simple: str | None = None
    consistent_hash: ConsistentHash | None = None
    locality_lb_setting: Mapping[str, Any] | None = None  # as written


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    load_balancer: LoadBalancer | None = None
    connection_pool: Mapping[str, Any] | None = None  # as written; interpreted by the waypoint
    outlier_detection: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Subset:
    name: str
    labels: Mapping[str, str]
    traffic_policy: TrafficPolicy | None = None


@dataclass(frozen=True, slots=True)
class DestinationRule(_Named):
    KIND: ClassVar[str] = "DestinationRule"
    meta: ObjectMeta
    host: str
    traffic_policy: TrafficPolicy | None = None
    subsets: tuple[Subset, ...] = ()
    workload_selector: Mapping[str, str] | None = None
    export_to: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A WorkloadEntry's spec; also an inline endpoint of a ServiceEntry."""

    address: str | None = None  # IP, hostname or unix:// path; None: reached via network
    ports: Mapping[str, int] | None = None  # service port name -> endpoint port
    labels: Mapping[str, str] | None = None
    service_account: str | None = None
    network: str | None = None
    locality: str | None = None  # region/zone/subzone
    weight: int | None = None


@dataclass(frozen=True, slots=True)
class ServiceEntryPort:
    number: int
    name: str
    protocol: str | None = None
    target_port: int | None = None


@dataclass(frozen=True, slots=True)
class ServiceEntry(_Named):
    KIND: ClassVar[str] = "ServiceEntry"
    meta: ObjectMeta
    hosts: tuple[str, ...]
    addresses: tuple[str, ...] = ()  # IPs or CIDRs
    ports: tuple[ServiceEntryPort, ...] = ()
    location: str = "MESH_EXTERNAL"
    resolution: str = "NONE"
    endpoints: tuple[Endpoint, ...] = ()
    workload_selector: Mapping[str, str] | None = None
    export_to: tuple[str, ...] = ()
    subject_alt_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WorkloadEntry(_Named):
    KIND: ClassVar[str] = "WorkloadEntry"
    meta: ObjectMeta
    spec: Endpoint

    @property
    def address(self) -> str | None:
        return self.spec.address

    @property
    def spec_labels(self) -> Mapping[str, str]:
        """spec.labels: what ServiceEntry workloadSelectors and Service selectors match."""
        return self.spec.labels or {}


def _traffic_policy(raw: Obj, path: str) -> TrafficPolicy:
    lb = None
    if raw.get("loadBalancer") is not None:
        lp, lb_raw = join(path, "loadBalancer"), opt_map(raw, "loadBalancer", path)
        hashing = None
        if lb_raw.get("consistentHash") is not None:
            hp, h = join(lp, "consistentHash"), opt_map(lb_raw, "consistentHash", lp)
            cookie = h.get("httpCookie")
            hashing = ConsistentHash(
                http_header_name=opt_str(h, "httpHeaderName", hp),
                http_cookie=req_str(as_mapping(cookie, join(hp, "httpCookie")), "name", hp)
                if cookie is not None
                else None,
                use_source_ip=opt_bool(h, "useSourceIp", hp),
                http_query_parameter_name=opt_str(h, "httpQueryParameterName", hp),
            )
        simple = opt_str(lb_raw, "simple", lp)
        if simple is not None:
            simple = one_of(lb_raw, "simple", lp, LB_SIMPLE, "UNSPECIFIED")
        if simple is not None and hashing is not None:
            raise FieldError(lp, "only one of simple or consistentHash may be set")
        locality = lb_raw.get("localityLbSetting")
        lb = LoadBalancer(
            simple=simple,
            consistent_hash=hashing,
            locality_lb_setting=as_mapping(locality, join(lp, "localityLbSetting"))
            if locality is not None
            else None,
        )
    pool, outlier = raw.get("connectionPool"), raw.get("outlierDetection")
    return TrafficPolicy(
        load_balancer=lb,
        connection_pool=as_mapping(pool, join(path, "connectionPool"))
        if pool is not None
        else None,
        outlier_detection=as_mapping(outlier, join(path, "outlierDetection"))
        if outlier is not None
        else None,
    )


def _workload_selector(spec: Obj) -> Mapping[str, str] | None:
    if spec.get("workloadSelector") is None:
        return None
    return str_map(opt_map(spec, "workloadSelector", "spec"), "labels", "spec.workloadSelector")


def parse_destination_rule(doc: Obj, meta: ObjectMeta) -> DestinationRule:
    spec = opt_map(doc, "spec", "")
    policy = spec.get("trafficPolicy")
    subsets = tuple(
        Subset(
            name=req_str(entry, "name", path),
            labels=str_map(entry, "labels", path),
            traffic_policy=_traffic_policy(
                opt_map(entry, "trafficPolicy", path), join(path, "trafficPolicy")
            )
            if entry.get("trafficPolicy") is not None
            else None,
        )
        for path, entry in each_map(spec, "subsets", "spec")
    )
    return DestinationRule(
        meta,
        host=req_str(spec, "host", "spec"),
        traffic_policy=_traffic_policy(
            as_mapping(policy, "spec.trafficPolicy"), "spec.trafficPolicy"
        )
        if policy is not None
        else None,
        subsets=subsets,
        workload_selector=_workload_selector(spec),
        export_to=str_list(spec, "exportTo", "spec"),
    )


def _address(value: str, path: str) -> str:
    """An endpoint address: IP (canonical form), unix:// path, or a DNS name."""
    if value.startswith("unix://"):
        return value
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if any(c.isspace() or c in "/:" for c in value):
        raise FieldError(path, f"expected an IP address or hostname, got {describe(value)}")
    return value


def parse_endpoint(raw: Obj, path: str) -> Endpoint:
    address = opt_str(raw, "address", path) or None
    network = opt_str(raw, "network", path) or None
    if address is None and network is None:
        raise FieldError(join(path, "address"), "required unless network is set")
    ports: dict[str, int] | None = None
    if raw.get("ports") is not None:
        ports = {}
        port_map = opt_map(raw, "ports", path)
        for name in port_map:
            ports[str(name)] = req_port(port_map, name, join(path, "ports"))
    return Endpoint(
        address=_address(address, join(path, "address")) if address else None,
        ports=ports,
        labels=str_map(raw, "labels", path) if raw.get("labels") is not None else None,
        service_account=opt_str(raw, "serviceAccount", path) or None,
        network=network,
        locality=opt_str(raw, "locality", path) or None,
        # Istio: weight 0 means the default of 1.
        weight=opt_int(raw, "weight", path, 0, 2**32 - 1),
    )


def parse_workload_entry(doc: Obj, meta: ObjectMeta) -> WorkloadEntry:
    return WorkloadEntry(meta, spec=parse_endpoint(opt_map(doc, "spec", ""), "spec"))


def parse_service_entry(doc: Obj, meta: ObjectMeta) -> ServiceEntry:
    spec = opt_map(doc, "spec", "")
    hosts = str_list(spec, "hosts", "spec")
    if not hosts:
        raise FieldError("spec.hosts", "required (at least one host)")
    addresses = tuple(
        check_ip_or_cidr(a, f"spec.addresses[{i}]")
        for i, a in enumerate(str_list(spec, "addresses", "spec"))
    )
    ports: list[ServiceEntryPort] = []
    for path, entry in each_map(spec, "ports", "spec"):
        number = req_port(entry, "number", path)
        if any(p.number == number for p in ports):
            raise FieldError(join(path, "number"), f"port {number} declared twice")
        ports.append(
            ServiceEntryPort(
                number=number,
                name=req_str(entry, "name", path),
                protocol=opt_str(entry, "protocol", path) or None,
                target_port=opt_port(entry, "targetPort", path),
            )
        )
    endpoints = tuple(parse_endpoint(e, p) for p, e in each_map(spec, "endpoints", "spec"))
    selector = _workload_selector(spec)
    if endpoints and selector is not None:
        raise FieldError("spec.workloadSelector", "only one of workloadSelector or endpoints")
    return ServiceEntry(
        meta,
        hosts=hosts,
        addresses=addresses,
        ports=tuple(ports),
        location=one_of(spec, "location", "spec", SE_LOCATIONS, "MESH_EXTERNAL"),
        resolution=one_of(spec, "resolution", "spec", SE_RESOLUTIONS, "NONE"),
        endpoints=endpoints,
        workload_selector=selector,
        export_to=str_list(spec, "exportTo", "spec"),
        subject_alt_names=str_list(spec, "subjectAltNames", "spec"),
    )

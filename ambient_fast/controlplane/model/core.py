"""Core Kubernetes kinds: Namespace, Pod, Deployment, Service, ServiceAccount."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from ambient_fast.controlplane.model.fields import (
    FieldError,
    Obj,
    check_ip,
    each_map,
    join,
    one_of,
    opt_bool,
    opt_int,
    opt_map,
    opt_port,
    opt_str,
    req_port,
    str_map,
    str_or,
)
from ambient_fast.controlplane.model.meta import ObjectKey, ObjectMeta, selector_matches
from ambient_fast.controlplane.model.sharing import SharedValues

# Kubernetes: a pod without spec.serviceAccountName runs as "default".
DEFAULT_SERVICE_ACCOUNT = "default"
PROTOCOLS = ("TCP", "UDP", "SCTP")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")


class _Named:
    """Shortcuts shared by every kind (each has `meta` and a class-level KIND)."""

    __slots__ = ()
    KIND: ClassVar[str]
    meta: ObjectMeta

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def namespace(self) -> str:
        return self.meta.namespace

    @property
    def labels(self) -> Mapping[str, str]:
        return self.meta.labels

    @property
    def key(self) -> ObjectKey:
        return ObjectKey(self.KIND, self.meta.namespace, self.meta.name)


@dataclass(frozen=True, slots=True)
class Namespace(_Named):
    KIND: ClassVar[str] = "Namespace"
    meta: ObjectMeta


@dataclass(frozen=True, slots=True)
class ServiceAccount(_Named):
    KIND: ClassVar[str] = "ServiceAccount"
    meta: ObjectMeta


@dataclass(frozen=True, slots=True)
class ContainerPort:
    container_port: int
    name: str | None = None
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class PodSpec:
    """The parts of a pod spec the mesh cares about (shared by Pod and Deployment templates)."""

    service_account: str = DEFAULT_SERVICE_ACCOUNT
    node_name: str | None = None
    host_network: bool = False
    ports: tuple[ContainerPort, ...] = ()


class PodPlacement(enum.Enum):
    WRITTEN = "written"  # node and address as written (or not placed)
    NODE = "node"  # the address was written; the model chose the node
    ALLOCATED = "allocated"  # the model chose node and address


@dataclass(frozen=True, slots=True)
class Pod(_Named):
    KIND: ClassVar[str] = "Pod"
    meta: ObjectMeta
    service_account: str = DEFAULT_SERVICE_ACCOUNT
    node_name: str | None = None  # spec.nodeName, or the node the model placed it on
    ip: str | None = None  # status.podIP, or the address the model allocated
    ips: tuple[str, ...] = ()  # status.podIPs (every family), `ip` first
    host_network: bool = False
    ports: tuple[ContainerPort, ...] = ()
    phase: str = "Running"
    ready: bool = True  # status.conditions Ready; pods written without status are ready
    # What the model chose (not part of the pod's value): one field, so a Pod stays in
    # pymalloc's 112-byte class.
    placement: PodPlacement = field(default=PodPlacement.WRITTEN, compare=False)

    @property
    def placed(self) -> bool:
        """Node or address chosen by the model."""
        return self.placement is not PodPlacement.WRITTEN

    @property
    def allocated(self) -> bool:
        """Node and address chosen by the model: kept across reloads (`Allocations`)."""
        return self.placement is PodPlacement.ALLOCATED

    def container_port(self, name: str) -> int | None:
        """The number of a named container port (how a Service's named targetPort resolves)."""
        for port in self.ports:
            if port.name == name:
                return port.container_port
        return None


@dataclass(frozen=True, slots=True)
class PodTemplate:
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    spec: PodSpec


@dataclass(frozen=True, slots=True)
class Deployment(_Named):
    """A Deployment; the loader expands it into `replicas` Pods."""

    KIND: ClassVar[str] = "Deployment"
    meta: ObjectMeta
    replicas: int
    selector: Mapping[str, str]
    template: PodTemplate


@dataclass(frozen=True, slots=True)
class ServicePort:
    port: int
    target_port: int | str  # a number, or the name of a container port
    name: str | None = None
    protocol: str = "TCP"
    app_protocol: str | None = None
    node_port: int | None = None


@dataclass(frozen=True, slots=True)
class Service(_Named):
    KIND: ClassVar[str] = "Service"
    meta: ObjectMeta
    ports: tuple[ServicePort, ...] = ()
    selector: Mapping[str, str] | None = None  # None: no selector (endpoints come from elsewhere)
    type: str = "ClusterIP"
    cluster_ip: str | None = None  # the VIP, written or allocated; None when headless
    cluster_ips: tuple[str, ...] = ()  # every family, `cluster_ip` first
    headless: bool = False  # clusterIP: None
    external_name: str | None = None
    placed: bool = field(default=False, compare=False)  # VIP chosen by the model

    def selects(self, labels: Mapping[str, str]) -> bool:
        """Whether the selector picks an object with `labels` (no selector picks nothing)."""
        return self.selector is not None and selector_matches(self.selector, labels)

    def port_named(self, name: str) -> ServicePort | None:
        for port in self.ports:
            if port.name == name:
                return port
        return None


# Pods, templates and Services of a mesh declare the same few port lists again and again.
_CONTAINER_PORTS: SharedValues[tuple[ContainerPort, ...]] = SharedValues()
_SERVICE_PORTS: SharedValues[tuple[ServicePort, ...]] = SharedValues()


def parse_namespace(doc: Obj, meta: ObjectMeta) -> Namespace:
    return Namespace(meta)


def parse_service_account(doc: Obj, meta: ObjectMeta) -> ServiceAccount:
    return ServiceAccount(meta)


def parse_pod_spec(spec: Obj, path: str) -> PodSpec:
    # serviceAccount is the deprecated spelling Kubernetes still honours.
    account = opt_str(spec, "serviceAccountName", path) or opt_str(spec, "serviceAccount", path)
    ports: list[ContainerPort] = []
    for c_path, container in each_map(spec, "containers", path):
        for p_path, port in each_map(container, "ports", c_path):
            ports.append(
                ContainerPort(
                    container_port=req_port(port, "containerPort", p_path),
                    name=opt_str(port, "name", p_path),
                    protocol=one_of(port, "protocol", p_path, PROTOCOLS, "TCP"),
                )
            )
    return PodSpec(
        service_account=account or DEFAULT_SERVICE_ACCOUNT,
        node_name=opt_str(spec, "nodeName", path) or None,
        host_network=opt_bool(spec, "hostNetwork", path),
        ports=_CONTAINER_PORTS.get(tuple(ports)),
    )


def parse_pod(doc: Obj, meta: ObjectMeta) -> Pod:
    spec = parse_pod_spec(opt_map(doc, "spec", ""), "spec")
    status = opt_map(doc, "status", "")
    ips: list[str] = []
    pod_ip = opt_str(status, "podIP", "status")
    if pod_ip:
        ips.append(check_ip(pod_ip, "status.podIP"))
    for path, entry in each_map(status, "podIPs", "status"):
        ip = check_ip(str_or(entry, "ip", path, ""), join(path, "ip"))
        if ip not in ips:
            ips.append(ip)
    ready = True
    for path, condition in each_map(status, "conditions", "status"):
        if opt_str(condition, "type", path) == "Ready":
            ready = opt_str(condition, "status", path) == "True"
    return Pod(
        meta=meta,
        service_account=spec.service_account,
        node_name=spec.node_name,
        ip=ips[0] if ips else None,
        ips=tuple(ips),
        host_network=spec.host_network,
        ports=spec.ports,
        phase=str_or(status, "phase", "status", "Running"),
        ready=ready,
    )


def parse_deployment(doc: Obj, meta: ObjectMeta) -> Deployment:
    spec = opt_map(doc, "spec", "")
    # Kubernetes defaults replicas to 1; 0 is a valid (scaled-down) deployment.
    replicas = opt_int(spec, "replicas", "spec", 0, 100_000)
    selector_obj = opt_map(spec, "selector", "spec")
    selector = str_map(selector_obj, "matchLabels", "spec.selector")
    if not selector and not selector_obj.get("matchExpressions"):
        raise FieldError("spec.selector", "required")
    template = opt_map(spec, "template", "spec")
    template_meta = opt_map(template, "metadata", "spec.template")
    labels = str_map(template_meta, "labels", "spec.template.metadata")
    # apps/v1 validation: the selector must select the pods the template creates.
    if not selector_matches(selector, labels):
        raise FieldError("spec.template.metadata.labels", "do not match spec.selector")
    return Deployment(
        meta=meta,
        replicas=1 if replicas is None else replicas,
        selector=selector,
        template=PodTemplate(
            labels=labels,
            annotations=str_map(template_meta, "annotations", "spec.template.metadata"),
            spec=parse_pod_spec(opt_map(template, "spec", "spec.template"), "spec.template.spec"),
        ),
    )


def _target_port(port: Obj, path: str, default: int) -> int | str:
    value = port.get("targetPort")
    if value is None:
        return default
    if isinstance(value, str):
        if value.isdigit():  # Kubernetes IntOrString accepts "8080"
            return _target_port({"targetPort": int(value)}, path, default)
        if not value or len(value) > 15:
            raise FieldError(
                join(path, "targetPort"), f"expected a port number or name, got {value!r}"
            )
        return value
    number = opt_port(port, "targetPort", path)
    assert number is not None
    return number


def parse_service(doc: Obj, meta: ObjectMeta) -> Service:
    spec = opt_map(doc, "spec", "")
    kind = one_of(spec, "type", "spec", SERVICE_TYPES, "ClusterIP")
    ports: list[ServicePort] = []
    seen: dict[tuple[int, str], int] = {}
    names: set[str] = set()
    port_items = list(each_map(spec, "ports", "spec"))
    for i, (path, entry) in enumerate(port_items):
        number = req_port(entry, "port", path)
        name = opt_str(entry, "name", path) or None
        protocol = one_of(entry, "protocol", path, PROTOCOLS, "TCP")
        if name is None and len(port_items) > 1:
            raise FieldError(join(path, "name"), "required when a service has more than one port")
        if name is not None:
            if name in names:
                raise FieldError(join(path, "name"), f"duplicate port name {name!r}")
            names.add(name)
        if (number, protocol) in seen:
            raise FieldError(
                join(path, "port"),
                f"{number}/{protocol} already declared by spec.ports[{seen[number, protocol]}]",
            )
        seen[number, protocol] = i
        ports.append(
            ServicePort(
                port=number,
                target_port=_target_port(entry, path, number),
                name=name,
                protocol=protocol,
                app_protocol=opt_str(entry, "appProtocol", path) or None,
                node_port=opt_int(entry, "nodePort", path, 1, 65535),
            )
        )
    cluster_ip = opt_str(spec, "clusterIP", "spec") or None
    headless = cluster_ip == "None"
    ips: list[str] = []
    if cluster_ip and not headless:
        ips.append(check_ip(cluster_ip, "spec.clusterIP"))
    for i, extra in enumerate(spec.get("clusterIPs") or ()):
        if extra == "None":
            headless = True
            continue
        if not isinstance(extra, str):
            raise FieldError(f"spec.clusterIPs[{i}]", "expected a string")
        ip = check_ip(extra, f"spec.clusterIPs[{i}]")
        if ip not in ips:
            ips.append(ip)
    external_name = opt_str(spec, "externalName", "spec") or None
    if kind == "ExternalName" and not external_name:
        raise FieldError("spec.externalName", "required for type ExternalName")
    selector = str_map(spec, "selector", "spec") if "selector" in spec else None
    return Service(
        meta=meta,
        ports=_SERVICE_PORTS.get(tuple(ports)),
        selector=selector if selector else None,
        type=kind,
        cluster_ip=ips[0] if ips else None,
        cluster_ips=tuple(ips),
        headless=headless,
        external_name=external_name,
    )

"""ztunnel's configuration: Istio's environment variables, matching `--flags`, one frozen object.

Every setting has a flag; settings Istio's ztunnel reads from the environment read the same
variable (the flag wins). Defaults follow istio/ztunnel src/config.rs unless noted.
"""

from __future__ import annotations

import argparse
import enum
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ambient_fast.ztunnel.durations import parse_duration

# istio/ztunnel defaults (src/config.rs).
DEFAULT_CLUSTER_ID = "Kubernetes"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
DEFAULT_SECRET_TTL = 24 * 3600.0
DEFAULT_ROOT_CERT = "./var/run/secrets/istio/root-cert.pem"
DEFAULT_TOKEN = "./var/run/secrets/tokens/istio-token"
DEFAULT_INPOD_UDS = "/var/run/ztunnel/ztunnel.sock"
DEFAULT_DRAIN_DEADLINE = 5.0  # ztunnel's self-termination deadline
IN_CLUSTER_ISTIOD = "https://istiod.istio-system.svc:15012"
LOCAL_ISTIOD = "https://localhost:15012"
# Ports (reference 01).
PORTS = {
    "admin_port": 15000,
    "stats_port": 15020,
    "readiness_port": 15021,
    "inbound_port": 15008,
    "inbound_plaintext_port": 15006,
    "outbound_port": 15001,
    "dns_port": 15053,
}


class ConfigError(ValueError):
    """A setting with a bad value; names the variable or flag and the value."""


class ProxyMode(enum.Enum):
    SHARED = "shared"  # one proxy per node, listeners inside each pod's netns (in-pod)
    DEDICATED = "dedicated"  # one proxy for one workload, listeners in its own netns


class LogFormat(enum.Enum):
    TEXT = "text"
    JSON = "json"


@dataclass(frozen=True, slots=True)
class WorkloadInfo:
    """PROXY_WORKLOAD_INFO=<namespace>/<name>/<service account> (dedicated mode)."""

    namespace: str
    name: str
    service_account: str

    @classmethod
    def parse(cls, text: str) -> WorkloadInfo:
        parts = text.split("/")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"{text!r}: expected namespace/name/service-account")
        return cls(*parts)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "t", "yes"):
        return True
    if lowered in ("0", "false", "f", "no", ""):
        return False
    raise ValueError(f"{text!r} is not a boolean")


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"{text!r} is not a port")
    return port


def _address(text: str) -> str:
    # ztunnel: an address without scheme means https.
    return text if "://" in text else f"https://{text}"


@dataclass(frozen=True, slots=True)
class Setting:
    field: str
    env: str | None  # Istio's variable, or None for flag-only settings
    parse: Callable[[str], Any]
    help: str


SETTINGS = (
    Setting("xds_address", "XDS_ADDRESS", _address, "control plane (delta xDS)"),
    Setting("ca_address", "CA_ADDRESS", _address, "certificate authority"),
    Setting("xds_root_cert", "XDS_ROOT_CA", Path, "roots trusted for xDS TLS"),
    Setting("ca_root_cert", "CA_ROOT_CA", Path, "roots trusted for CA TLS"),
    Setting("alt_xds_hostname", "ALT_XDS_HOSTNAME", str, "name the xDS certificate must carry"),
    Setting("alt_ca_hostname", "ALT_CA_HOSTNAME", str, "name the CA certificate must carry"),
    Setting("token_file", "AUTH_TOKEN", Path, "bearer token sent to xDS and CA"),
    Setting("fake_ca", "FAKE_CA", _bool, "sign workload certificates locally (standalone)"),
    Setting("fake_ca_root", "FAKE_CA_ROOT", Path, "FAKE_CA's root: dir with root-cert/key.pem"),
    Setting("local_xds_path", "LOCAL_XDS_PATH", Path, "ztunnel-format YAML instead of xDS"),
    Setting("local_xds", "LOCAL_XDS", str, "ztunnel-format YAML inline"),
    Setting("xds_on_demand", "XDS_ON_DEMAND", _bool, "subscribe to addresses on demand"),
    Setting("node_name", "NODE_NAME", str, "the node this proxy serves"),
    Setting("pod_name", "POD_NAME", str, "this proxy's pod"),
    Setting("pod_namespace", "POD_NAMESPACE", str, "this proxy's namespace"),
    Setting("instance_ip", "INSTANCE_IP", _ip, "this proxy's IP"),
    Setting("cluster_id", "CLUSTER_ID", str, "cluster name"),
    Setting("cluster_domain", "CLUSTER_DOMAIN", str, "DNS domain"),
    Setting("network", "NETWORK", str, "network of this node"),
    Setting("proxy_mode", "PROXY_MODE", ProxyMode, "shared (in-pod, Istio's default) or dedicated"),
    Setting("proxy_workload_info", "PROXY_WORKLOAD_INFO", WorkloadInfo.parse, "ns/name/sa"),
    Setting("inpod_uds", "INPOD_UDS", Path, "the CNI node agent's ZDS socket (shared mode)"),
    Setting("log_format", "LOG_FORMAT", LogFormat, "text or json"),
    Setting("secret_ttl", "SECRET_TTL", parse_duration, "requested certificate lifetime"),
    Setting("drain_deadline", None, parse_duration, "how long open connections may drain"),
    Setting("worker_threads", "ZTUNNEL_WORKER_THREADS", int, "native worker threads"),
    # ztunnel's proxy metadata DNS_CAPTURE, which it reads from ISTIO_META_DNS_CAPTURE.
    Setting(
        "dns_proxy",
        "ISTIO_META_DNS_CAPTURE",
        _bool,
        "serve DNS on localhost's dns port: mesh names answered, others forwarded to "
        "/etc/resolv.conf's nameservers (pods need `cni --capture-dns`)",
    ),
    *(Setting(name, None, _port, name.removesuffix("_port") + " port") for name in PORTS),
)


@dataclass(frozen=True, slots=True)
class ZtunnelConfig:
    xds_address: str | None = None
    ca_address: str | None = None
    xds_root_cert: Path = Path(DEFAULT_ROOT_CERT)
    ca_root_cert: Path = Path(DEFAULT_ROOT_CERT)
    # ztunnel's ALT_*_HOSTNAME: verify the server by this name, not the address's host (None:
    # the host; for an IP address, istiod's service name).
    alt_xds_hostname: str | None = None
    alt_ca_hostname: str | None = None
    token_file: Path = Path(DEFAULT_TOKEN)
    fake_ca: bool = False
    fake_ca_root: Path | None = None  # None: a fresh root per process (no peer trusts it)
    local_xds_path: Path | None = None
    local_xds: str | None = None
    xds_on_demand: bool = False
    node_name: str | None = None
    pod_name: str | None = None
    pod_namespace: str | None = None
    instance_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    cluster_id: str = DEFAULT_CLUSTER_ID
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    network: str = ""
    proxy_mode: ProxyMode = ProxyMode.SHARED
    proxy_workload_info: WorkloadInfo | None = None
    inpod_uds: Path = Path(DEFAULT_INPOD_UDS)
    log_format: LogFormat = LogFormat.TEXT
    secret_ttl: float = DEFAULT_SECRET_TTL
    drain_deadline: float = DEFAULT_DRAIN_DEADLINE
    worker_threads: int | None = None  # None: min(2, CPUs/2), see ARCHITECTURE.md
    # ztunnel's default: on unless DNS_CAPTURE says otherwise (it serves only captured pods).
    dns_proxy: bool = True
    admin_port: int = PORTS["admin_port"]
    stats_port: int = PORTS["stats_port"]
    readiness_port: int = PORTS["readiness_port"]
    inbound_port: int = PORTS["inbound_port"]
    inbound_plaintext_port: int = PORTS["inbound_plaintext_port"]
    outbound_port: int = PORTS["outbound_port"]
    dns_port: int = PORTS["dns_port"]

    @property
    def uses_xds(self) -> bool:
        return self.local_xds_path is None and self.local_xds is None

    @classmethod
    def load(cls, env: Mapping[str, str], flags: Mapping[str, str | None]) -> ZtunnelConfig:
        """From the environment and parsed flags (field name -> text); flags win."""
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            flag = flags.get(setting.field)
            raw, source = (
                (flag, f"--{setting.field.replace('_', '-')}")
                if flag is not None
                else ((env.get(setting.env), setting.env) if setting.env else (None, ""))
            )
            if raw is None:
                continue
            try:
                values[setting.field] = setting.parse(raw)
            except ValueError as e:
                raise ConfigError(f"invalid {source}={raw!r}: {e}") from None
        default_istiod = IN_CLUSTER_ISTIOD if "KUBERNETES_SERVICE_HOST" in env else LOCAL_ISTIOD
        values.setdefault("xds_address", default_istiod)
        if not values.get("fake_ca"):
            values.setdefault("ca_address", default_istiod)
        else:
            values["ca_address"] = None  # never a silent fallback: FAKE_CA is explicit
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if self.proxy_mode is ProxyMode.DEDICATED and self.proxy_workload_info is None:
            raise ConfigError("PROXY_MODE=dedicated needs PROXY_WORKLOAD_INFO=ns/name/sa")
        if self.fake_ca_root is not None and not self.fake_ca:
            raise ConfigError("FAKE_CA_ROOT needs FAKE_CA=true")
        if self.local_xds_path is not None and self.local_xds is not None:
            raise ConfigError("LOCAL_XDS_PATH and LOCAL_XDS are exclusive")
        if self.dns_proxy and self.xds_on_demand:
            # As ztunnel: the DNS proxy needs every service, not those asked for so far.
            raise ConfigError(
                "the DNS proxy does not support XDS_ON_DEMAND (ISTIO_META_DNS_CAPTURE=false)"
            )
        ports = [getattr(self, name) for name in PORTS]
        if len(set(ports)) != len(ports):
            raise ConfigError(f"two listeners share a port: {ports}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; --help shows the variable and the default."""
    defaults = {f.name: f.default for f in fields(ZtunnelConfig)}
    for setting in SETTINGS:
        env = f" (env {setting.env})" if setting.env else ""
        parser.add_argument(
            f"--{setting.field.replace('_', '-')}",
            dest=setting.field,
            metavar="VALUE",
            help=f"{setting.help}{env}; default: {_show(setting.field, defaults[setting.field])}",
        )


def _show(field: str, default: object) -> str:
    if field in ("xds_address", "ca_address"):
        return f"{IN_CLUSTER_ISTIOD} in a cluster, else {LOCAL_ISTIOD}"
    if isinstance(default, enum.Enum):
        return str(default.value)
    return "unset" if default is None else str(default)


def from_args(args: argparse.Namespace, env: Mapping[str, str]) -> ZtunnelConfig:
    flags = {s.field: getattr(args, s.field, None) for s in SETTINGS}
    return ZtunnelConfig.load(env, flags)

"""Sans-IO construction and parsing of the HBONE request headers ztunnel sends.

`baggage` carries the source workload's metadata, `forwarded` the original client address,
`traceparent` a fresh W3C trace context per connection (reference 01).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

WORKLOAD_KINDS = ("deployment", "pod", "job", "cronjob")


@dataclass(frozen=True, slots=True)
class Baggage:
    cluster: str
    namespace: str
    workload_kind: str
    workload_name: str
    service_name: str
    service_version: str
    region: str = ""
    zone: str = ""

    def encode(self) -> str:
        kind = self.workload_kind if self.workload_kind in WORKLOAD_KINDS else "pod"
        pairs = [
            ("k8s.cluster.name", self.cluster),
            ("k8s.namespace.name", self.namespace),
            (f"k8s.{kind}.name", self.workload_name),
            ("service.name", self.service_name),
            ("service.version", self.service_version),
            ("cloud.region", self.region),
            ("cloud.availability_zone", self.zone),
        ]
        return ",".join(f"{k}={v}" for k, v in pairs if v)

    @classmethod
    def decode(cls, value: str) -> Baggage:
        """Parses a baggage header leniently: unknown keys and malformed members are skipped."""
        fields: dict[str, str] = {}
        kind, name = "", ""
        for member in value.split(","):
            key, sep, val = member.partition("=")
            if not sep:
                continue
            key = key.strip()  # W3C baggage allows whitespace around "="
            val = val.split(";", 1)[0].strip()
            for candidate in WORKLOAD_KINDS:
                if key == f"k8s.{candidate}.name":
                    kind, name = candidate, val
            fields[key] = val
        return cls(
            cluster=fields.get("k8s.cluster.name", ""),
            namespace=fields.get("k8s.namespace.name", ""),
            workload_kind=kind,
            workload_name=name,
            service_name=fields.get("service.name", ""),
            service_version=fields.get("service.version", ""),
            region=fields.get("cloud.region", ""),
            zone=fields.get("cloud.availability_zone", ""),
        )


def forwarded(client_ip: str, client_port: int, host: str = "") -> str:
    """RFC 7239 `forwarded` as ztunnel sends it: for="ip:port"[;host=<service hostname>]."""
    addr = f"[{client_ip}]:{client_port}" if ":" in client_ip else f"{client_ip}:{client_port}"
    return f'for="{addr}"' + (f";host={host}" if host else "")


def traceparent() -> str:
    """A random W3C traceparent (version 00, not sampled)."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"

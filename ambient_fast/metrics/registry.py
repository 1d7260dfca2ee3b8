"""The node proxy's metrics registry: what ztunnel serves on :15020, in one CollectorRegistry.

Families (ztunnel src/metrics/meta.rs, src/xds/metrics.rs, src/proxy/metrics.rs,
src/inpod/metrics.rs, src/metrics/process.rs):
  istio_build{component,tag}                     gauge, 1
  istio_xds_connection_terminations_total{reason}
  istio_xds_message_total{url}, istio_xds_message_bytes_total{url}
  istio_tcp_connections_opened_total / _closed_total, istio_tcp_sent_bytes_total,
  istio_tcp_received_bytes_total                 (labels: `labels.LABEL_NAMES`)
  workload_manager_active_proxy_count, _pending_proxy_count (gauges),
  workload_manager_proxies_started_total, _proxies_stopped_total   (in-pod mode only)
  istio_dns_requests_total, istio_dns_upstream_requests_total, istio_dns_upstream_failures_total,
  istio_dns_upstream_request_duration_seconds      (with the DNS proxy; `metrics/dns.py`)
  process_open_fds, process_max_fds (+ prometheus-client's other process_* series)
"""

from __future__ import annotations

import enum

from prometheus_client import ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from ambient_fast import __version__
from ambient_fast.metrics.dns import DnsMetrics
from ambient_fast.metrics.families import Exported, Family, FamilyCollector, Kind
from ambient_fast.metrics.traffic import ConnectionMetrics


class TerminationReason(enum.Enum):
    """Why an xDS stream ended (ztunnel ConnectionTerminationReason; the label value is the
    variant name)."""

    CONNECTION_ERROR = "ConnectionError"  # the stream could not be established
    ERROR = "Error"  # the stream failed after it was up
    RECONNECT = "Reconnect"  # the server ended it cleanly; we reconnect
    COMPLETE = "Complete"  # we ended it (shutdown)


class XdsMetrics:
    def __init__(self) -> None:
        self.connection_terminations = Family(
            "istio_xds_connection_terminations",
            "The total number of completed connections to xds server (unstable)",
            Kind.COUNTER,
            ("reason",),
        )
        self.messages = Family(
            "istio_xds_message",
            "Total number of messages received (unstable)",
            Kind.COUNTER,
            ("url",),
        )
        self.message_bytes = Family(
            "istio_xds_message",
            "Total number of bytes received (unstable)",
            Kind.COUNTER,
            ("url",),
            unit="bytes",
        )

    @property
    def families(self) -> tuple[Family, ...]:
        return (self.connection_terminations, self.messages, self.message_bytes)

    def terminated(self, reason: TerminationReason) -> None:
        self.connection_terminations.inc((reason.value,))

    def received(self, type_url: str, resource_bytes: int) -> None:
        """One DeltaDiscoveryResponse: `resource_bytes` is the sum of its resources' sizes."""
        self.messages.inc((type_url,))
        self.message_bytes.inc((type_url,), resource_bytes)


class WorkloadManagerMetrics:
    """In-pod (shared) mode: proxies per pod. Registered under the root registry, so without
    the istio_ prefix (ztunnel app.rs `sub_registry_with_prefix("workload_manager")`)."""

    def __init__(self) -> None:
        self.active_proxy_count = Family(
            "workload_manager_active_proxy_count",
            "The total number current workloads with active proxies (unstable)",
            Kind.GAUGE,
        )
        self.pending_proxy_count = Family(
            "workload_manager_pending_proxy_count",
            "The total number current workloads with pending proxies (unstable)",
            Kind.GAUGE,
        )
        self.proxies_started = Family(
            "workload_manager_proxies_started",
            "The total number of proxies that were started (unstable)",
            Kind.COUNTER,
        )
        self.proxies_stopped = Family(
            "workload_manager_proxies_stopped",
            "The total number of proxies that were stopped (unstable)",
            Kind.COUNTER,
        )

    @property
    def families(self) -> tuple[Family, ...]:
        return (
            self.active_proxy_count,
            self.pending_proxy_count,
            self.proxies_started,
            self.proxies_stopped,
        )


class Metrics:
    """Everything the node proxy exports, in its own CollectorRegistry (never the global one,
    so several proxies or tests in one process do not share counters)."""

    def __init__(
        self,
        *,
        tag: str = __version__,
        in_pod: bool = False,
        dns: bool = False,
        process: bool = True,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        # ztunnel's tag is the Istio version it was built for; ours is our own version.
        self.build = Family(
            "istio_build", "Istio component build info", Kind.GAUGE, ("component", "tag")
        )
        self.build.set(1, ("ztunnel", tag))
        self.xds = XdsMetrics()
        self.connections = ConnectionMetrics()
        self.workload_manager = WorkloadManagerMetrics() if in_pod else None
        # As ztunnel: the DNS families exist only when its DNS proxy runs.
        self.dns = DnsMetrics() if dns else None
        families: list[Exported] = [self.build, *self.xds.families, *self.connections.families]
        if self.workload_manager is not None:
            families.extend(self.workload_manager.families)
        if self.dns is not None:
            families.extend(self.dns.families)
        self.registry.register(FamilyCollector(families))
        if process:
            ProcessCollector(registry=self.registry)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The scrape body and its content type: OpenMetrics when `accept` asks for it (as
        ztunnel's server.rs decides), else the Prometheus text format."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type

"""The DNS proxy's metrics, as ztunnel exports them (src/dns/metrics.rs), all `(unstable)`:

  istio_dns_requests_total                         every query answered or forwarded
  istio_dns_upstream_requests_total                forwarded queries
  istio_dns_upstream_failures_total                forwarded queries without an answer
  istio_dns_upstream_request_duration_seconds      time to the upstream's answer (histogram)

Labels: request_query_type (lower-case type: a, aaaa, ...), request_protocol (udp, tcp),
source_canonical_service, source_canonical_revision (the client workload's, else unknown).
"""

from __future__ import annotations

from ambient_fast.metrics.families import Family, HistogramFamily, Kind
from ambient_fast.metrics.labels import UNKNOWN
from ambient_fast.state.model import Workload

LABEL_NAMES = (
    "request_query_type",
    "request_protocol",
    "source_canonical_service",
    "source_canonical_revision",
)
# ztunnel's buckets, in seconds (it lists 0.005 before 0.001; exposition needs them sorted).
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.1, 1.0, 5.0)


def dns_labels(query_type: str, protocol: str, source: Workload | None) -> tuple[str, ...]:
    service = (source.canonical_name if source is not None else "") or UNKNOWN
    revision = (source.canonical_revision if source is not None else "") or UNKNOWN
    return (query_type, protocol, service, revision)


class DnsMetrics:
    def __init__(self) -> None:
        self.requests = Family(
            "istio_dns_requests",
            "Total number of DNS requests (unstable)",
            Kind.COUNTER,
            LABEL_NAMES,
        )
        self.upstream_requests = Family(
            "istio_dns_upstream_requests",
            "Total number of DNS requests forwarded to upstream (unstable)",
            Kind.COUNTER,
            LABEL_NAMES,
        )
        self.upstream_failures = Family(
            "istio_dns_upstream_failures",
            "Total number of DNS requests that failed to forward upstream (unstable)",
            Kind.COUNTER,
            LABEL_NAMES,
        )
        self.upstream_duration = HistogramFamily(
            "istio_dns_upstream_request_duration",
            "Total time in seconds Istio takes to get DNS response from upstream (unstable)",
            LABEL_NAMES,
            DURATION_BUCKETS,
            unit="seconds",
        )

    @property
    def families(self) -> tuple[Family | HistogramFamily, ...]:
        return (
            self.requests,
            self.upstream_requests,
            self.upstream_failures,
            self.upstream_duration,
        )

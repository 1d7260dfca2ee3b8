"""Prometheus metrics of the node proxy, named and labelled as istio/ztunnel exports them.

`Metrics` is the registry (its own prometheus-client CollectorRegistry); `ConnectionLabels.build`
fills the istio_tcp_* label set; `ConnectionMetrics` counts opens, closes and bytes (at close);
`DnsMetrics` counts the DNS proxy's queries; `MetricsServer` serves /metrics and
/stats/prometheus on :15020.
"""

from ambient_fast.metrics.dns import DnsMetrics
from ambient_fast.metrics.labels import (
    LABEL_NAMES,
    UNKNOWN,
    ConnectionLabels,
    PeerBaggage,
    Reporter,
    ResponseFlag,
    SecurityPolicy,
)
from ambient_fast.metrics.registry import (
    Metrics,
    TerminationReason,
    WorkloadManagerMetrics,
    XdsMetrics,
)
from ambient_fast.metrics.server import DEFAULT_STATS_PORT, MetricsServer, StatsEndpoint
from ambient_fast.metrics.traffic import ConnectionMetrics, OpenConnection

__all__ = [
    "DEFAULT_STATS_PORT",
    "LABEL_NAMES",
    "UNKNOWN",
    "ConnectionLabels",
    "ConnectionMetrics",
    "DnsMetrics",
    "Metrics",
    "MetricsServer",
    "OpenConnection",
    "PeerBaggage",
    "Reporter",
    "ResponseFlag",
    "SecurityPolicy",
    "StatsEndpoint",
    "TerminationReason",
    "WorkloadManagerMetrics",
    "XdsMetrics",
]

"""Counters and exposition: what a Prometheus scrape of the node proxy reads back."""

from __future__ import annotations

import prometheus_client
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from ambient_fast.metrics import (
    LABEL_NAMES,
    ConnectionLabels,
    Metrics,
    Reporter,
    ResponseFlag,
    TerminationReason,
)
from ambient_fast.metrics.dns import LABEL_NAMES as LABEL_NAMES_DNS
from ambient_fast.metrics.dns import dns_labels
from ambient_fast.state.model import TunnelProtocol, Workload

CLIENT = Workload(
    uid="Kubernetes//Pod/default/client-1",
    name="client-1",
    namespace="default",
    protocol=TunnelProtocol.HBONE,
    workload_name="client",
    canonical_name="client",
    canonical_revision="v1",
)
SERVER = Workload(
    uid="Kubernetes//Pod/default/server-1",
    name="server-1",
    namespace="default",
    protocol=TunnelProtocol.HBONE,
    workload_name="server",
    canonical_name="server",
    canonical_revision="v1",
)
OUTBOUND = ConnectionLabels.build(Reporter.SOURCE, CLIENT, CLIENT.identity, SERVER, None, True)


def samples(metrics: Metrics, accept: str = "") -> dict[str, list[Sample]]:
    """Every sample of a scrape, by sample name, parsed back by prometheus_client."""
    body, _ = metrics.exposition(accept)
    parse = parse_openmetrics if "openmetrics" in accept else text_string_to_metric_families
    found: dict[str, list[Sample]] = {}
    for family in parse(body.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def value(metrics: Metrics, name: str, **labels: str) -> float:
    matching = [
        s.value
        for s in samples(metrics).get(name, [])
        if all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matching) == 1, f"{name} {labels}: {matching}"
    return matching[0]


def test_open_and_close_count_connections_and_bytes() -> None:
    metrics = Metrics(process=False)
    conn = metrics.connections.open(OUTBOUND)
    assert value(metrics, "istio_tcp_connections_opened_total") == 1
    assert "istio_tcp_connections_closed_total" not in samples(metrics)
    # The byte series exist from the open, at 0, as ztunnel creates them then.
    assert value(metrics, "istio_tcp_received_bytes_total") == 0
    assert value(metrics, "istio_tcp_sent_bytes_total") == 0

    assert metrics.connections.close(conn, to_upstream=100, to_downstream=2500)
    assert value(metrics, "istio_tcp_connections_closed_total") == 1
    # Request direction (to upstream) is "received", response direction is "sent".
    assert value(metrics, "istio_tcp_received_bytes_total") == 100
    assert value(metrics, "istio_tcp_sent_bytes_total") == 2500


def test_every_tcp_sample_carries_the_full_label_set() -> None:
    metrics = Metrics(process=False)
    metrics.connections.close(metrics.connections.open(OUTBOUND), to_upstream=1, to_downstream=1)
    found = samples(metrics)
    for name in (
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
        "istio_tcp_sent_bytes_total",
        "istio_tcp_received_bytes_total",
    ):
        (sample,) = found[name]
        assert set(sample.labels) == set(LABEL_NAMES)
        assert sample.labels == OUTBOUND._asdict()


def test_connections_with_the_same_labels_share_series() -> None:
    metrics = Metrics(process=False)
    conns = [metrics.connections.open(OUTBOUND) for _ in range(3)]
    for i, conn in enumerate(conns):
        metrics.connections.close(conn, to_upstream=10 * i, to_downstream=1)
    inbound = OUTBOUND._replace(reporter="destination")
    metrics.connections.close(metrics.connections.open(inbound), to_upstream=7, to_downstream=0)
    assert value(metrics, "istio_tcp_connections_opened_total", reporter="source") == 3
    assert value(metrics, "istio_tcp_received_bytes_total", reporter="source") == 30
    assert value(metrics, "istio_tcp_sent_bytes_total", reporter="source") == 3
    assert value(metrics, "istio_tcp_received_bytes_total", reporter="destination") == 7


def test_a_denied_connection_is_flagged_only_on_close() -> None:
    metrics = Metrics(process=False)
    conn = metrics.connections.open(OUTBOUND)
    metrics.connections.close(conn, to_upstream=0, to_downstream=0, flag=ResponseFlag.DENY)
    assert value(metrics, "istio_tcp_connections_closed_total", response_flags="DENY") == 1
    assert value(metrics, "istio_tcp_connections_opened_total", response_flags="-") == 1
    (closed,) = samples(metrics)["istio_tcp_connections_closed_total"]
    assert closed.labels["response_flags"] == "DENY"


def test_a_second_close_counts_nothing() -> None:
    metrics = Metrics(process=False)
    conn = metrics.connections.open(OUTBOUND)
    assert metrics.connections.close(conn, to_upstream=5, to_downstream=5)
    assert not metrics.connections.close(conn, to_upstream=50, to_downstream=50)
    assert value(metrics, "istio_tcp_connections_closed_total") == 1
    assert value(metrics, "istio_tcp_sent_bytes_total") == 5


def test_progress_reports_running_totals_and_close_adds_the_rest() -> None:
    metrics = Metrics(process=False)
    conn = metrics.connections.open(OUTBOUND)
    metrics.connections.progress(conn, to_upstream=10, to_downstream=1000)
    assert value(metrics, "istio_tcp_sent_bytes_total") == 1000
    metrics.connections.close(conn, to_upstream=15, to_downstream=4000)
    assert value(metrics, "istio_tcp_received_bytes_total") == 15
    assert value(metrics, "istio_tcp_sent_bytes_total") == 4000


def test_totals_that_go_back_are_refused() -> None:
    metrics = Metrics(process=False)
    conn = metrics.connections.open(OUTBOUND)
    metrics.connections.progress(conn, to_upstream=10, to_downstream=10)
    with pytest.raises(ValueError, match="went back: 5/10 after 10/10"):
        metrics.connections.close(conn, to_upstream=5, to_downstream=10)


def test_exposition_has_ztunnels_names_help_and_no_created_series() -> None:
    metrics = Metrics(process=False, tag="1.24.0")
    metrics.connections.open(OUTBOUND)
    body, content_type = metrics.exposition()
    text = body.decode()
    assert content_type.startswith("text/plain; version=0.0.4")
    assert (
        "# HELP istio_tcp_connections_opened_total The total number of TCP connections opened.\n"
        in text
    )
    assert "# TYPE istio_tcp_connections_opened_total counter\n" in text
    assert "_created" not in text
    assert value(metrics, "istio_build", component="ztunnel", tag="1.24.0") == 1


def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    metrics = Metrics(process=False)
    metrics.connections.close(metrics.connections.open(OUTBOUND), to_upstream=3, to_downstream=4)
    accept = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.2"
    body, content_type = metrics.exposition(accept)
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    found = samples(metrics, accept)
    assert found["istio_tcp_sent_bytes_total"][0].value == 4
    assert "istio_tcp_connections_opened_created" not in found


def test_xds_counters() -> None:
    metrics = Metrics(process=False)
    assert "istio_xds_connection_terminations_total" not in samples(metrics)
    metrics.xds.terminated(TerminationReason.RECONNECT)
    metrics.xds.terminated(TerminationReason.RECONNECT)
    metrics.xds.terminated(TerminationReason.CONNECTION_ERROR)
    address = "type.googleapis.com/istio.workload.Address"
    metrics.xds.received(address, 300)
    metrics.xds.received(address, 200)
    name = "istio_xds_connection_terminations_total"
    assert value(metrics, name, reason="Reconnect") == 2
    assert value(metrics, name, reason="ConnectionError") == 1
    assert value(metrics, "istio_xds_message_total", url=address) == 2
    assert value(metrics, "istio_xds_message_bytes_total", url=address) == 500


def test_workload_manager_gauges_only_in_pod_mode() -> None:
    assert "workload_manager_active_proxy_count" not in samples(Metrics(process=False))
    metrics = Metrics(process=False, in_pod=True)
    manager = metrics.workload_manager
    assert manager is not None
    assert value(metrics, "workload_manager_active_proxy_count") == 0
    manager.active_proxy_count.set(3)
    manager.proxies_started.inc()
    assert value(metrics, "workload_manager_active_proxy_count") == 3
    assert value(metrics, "workload_manager_proxies_started_total") == 1
    assert value(metrics, "workload_manager_proxies_stopped_total") == 0


def test_dns_families_only_with_the_dns_proxy() -> None:
    assert "istio_dns_requests_total" not in samples(Metrics(process=False))
    metrics = Metrics(process=False, dns=True)
    dns = metrics.dns
    assert dns is not None
    labels = dns_labels("aaaa", "tcp", CLIENT)
    assert labels == ("aaaa", "tcp", "client", "v1")
    assert dns_labels("a", "udp", None) == ("a", "udp", "unknown", "unknown")
    dns.requests.inc(labels)
    dns.upstream_requests.inc(labels)
    for seconds in (0.0005, 0.003, 0.003, 2.0, 9.0):
        dns.upstream_duration.observe(labels, seconds)
    by_label = dict(zip(LABEL_NAMES_DNS, labels, strict=True))
    assert value(metrics, "istio_dns_requests_total", **by_label) == 1
    assert value(metrics, "istio_dns_upstream_requests_total", **by_label) == 1
    assert "istio_dns_upstream_failures_total" not in samples(metrics)  # no series yet
    buckets = {
        s.labels["le"]: s.value
        for s in samples(metrics)["istio_dns_upstream_request_duration_seconds_bucket"]
    }
    # Cumulative, ztunnel's bounds sorted.
    assert buckets == {"0.001": 1, "0.005": 3, "0.01": 3, "0.1": 3, "1.0": 3, "5.0": 4, "+Inf": 5}
    assert value(metrics, "istio_dns_upstream_request_duration_seconds_count", **by_label) == 5
    assert value(
        metrics, "istio_dns_upstream_request_duration_seconds_sum", **by_label
    ) == pytest.approx(11.0065)


def test_process_metrics_include_ztunnels_fd_gauges() -> None:
    found = samples(Metrics())
    assert found["process_open_fds"][0].value > 0
    assert found["process_max_fds"][0].value > 0


def test_registries_are_private() -> None:
    first, second = Metrics(process=False), Metrics(process=False)
    first.connections.open(OUTBOUND)
    assert "istio_tcp_connections_opened_total" not in samples(second)
    global_names = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert "istio_tcp_connections_opened" not in global_names

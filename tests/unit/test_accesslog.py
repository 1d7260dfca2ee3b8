"""Access log lines, golden against ztunnel's text and JSON output."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from ambient_fast.metrics import ConnectionLabels, Reporter
from ambient_fast.state.model import Service, TunnelProtocol, Workload
from ambient_fast.ztunnel.accesslog import (
    AccessLog,
    ConnectionLog,
    IstioFormatter,
    LogEvent,
    connection_failed,
    format_duration,
    format_json,
    format_text,
    istio_timestamp,
    rust_debug,
    socket_address,
)
from ambient_fast.ztunnel.config import LogFormat

# 2025-01-23T05:07:25.806642Z
AT = 1737608845.806642

PRODUCTPAGE = Workload(
    uid="Kubernetes//Pod/bookinfo/productpage-v1-57ffb6658c-vmb6z",
    name="productpage-v1-57ffb6658c-vmb6z",
    namespace="bookinfo",
    protocol=TunnelProtocol.HBONE,
    service_account="bookinfo-productpage",
    workload_name="productpage-v1",
    canonical_name="productpage",
    canonical_revision="v1",
)
DETAILS = Workload(
    uid="Kubernetes//Pod/bookinfo/details-v1-6cd6d9df6b-mddv2",
    name="details-v1-6cd6d9df6b-mddv2",
    namespace="bookinfo",
    protocol=TunnelProtocol.HBONE,
    service_account="bookinfo-details",
    workload_name="details-v1",
    canonical_name="details",
    canonical_revision="v1",
)
DETAILS_SVC = Service(
    name="details", namespace="bookinfo", hostname="details.bookinfo.svc.cluster.local"
)

OUTBOUND_TEXT = (
    "2025-01-23T05:07:25.806642Z\tinfo\taccess\tconnection complete\t"
    'src.addr=10.129.0.48:40978 src.workload="productpage-v1-57ffb6658c-vmb6z" '
    'src.namespace="bookinfo" '
    'src.identity="spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage" '
    "dst.addr=10.129.0.43:15008 dst.hbone_addr=10.129.0.43:9080 "
    'dst.service="details.bookinfo.svc.cluster.local" '
    'dst.workload="details-v1-6cd6d9df6b-mddv2" dst.namespace="bookinfo" '
    'dst.identity="spiffe://cluster.local/ns/bookinfo/sa/bookinfo-details" '
    'direction="outbound" bytes_sent=283 bytes_recv=358 duration="2ms"'
)


def outbound_hbone() -> ConnectionLog:
    labels = ConnectionLabels.build(
        Reporter.SOURCE, PRODUCTPAGE, PRODUCTPAGE.identity, DETAILS, DETAILS_SVC, mtls=True
    )
    return ConnectionLog.of(
        labels,
        src_addr="10.129.0.48:40978",
        dst_addr="10.129.0.43:15008",
        hbone_addr="10.129.0.43:9080",
        source=PRODUCTPAGE,
        destination=DETAILS,
    )


def inbound_hbone() -> ConnectionLog:
    labels = ConnectionLabels.build(
        Reporter.DESTINATION, PRODUCTPAGE, PRODUCTPAGE.identity, DETAILS, DETAILS_SVC, mtls=True
    )
    return ConnectionLog.of(
        labels,
        src_addr="10.129.0.48:40978",
        dst_addr="10.129.0.43:15008",
        hbone_addr="10.129.0.43:9080",
        source=PRODUCTPAGE,
        destination=DETAILS,
    )


def test_outbound_complete_text_golden() -> None:
    event = outbound_hbone().complete(to_upstream=283, to_downstream=358, duration=0.0027)
    assert event.level == logging.INFO
    assert format_text(event, AT) == OUTBOUND_TEXT


def test_outbound_complete_json_golden() -> None:
    event = outbound_hbone().complete(to_upstream=283, to_downstream=358, duration=0.0027)
    line = format_json(event, AT)
    assert line == (
        '{"level":"info","time":"2025-01-23T05:07:25.806642Z","scope":"access",'
        '"message":"connection complete","src.addr":"10.129.0.48:40978",'
        '"src.workload":"productpage-v1-57ffb6658c-vmb6z","src.namespace":"bookinfo",'
        '"src.identity":"spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage",'
        '"dst.addr":"10.129.0.43:15008","dst.hbone_addr":"10.129.0.43:9080",'
        '"dst.service":"details.bookinfo.svc.cluster.local",'
        '"dst.workload":"details-v1-6cd6d9df6b-mddv2","dst.namespace":"bookinfo",'
        '"dst.identity":"spiffe://cluster.local/ns/bookinfo/sa/bookinfo-details",'
        '"direction":"outbound","bytes_sent":283,"bytes_recv":358,"duration":"2ms"}'
    )
    assert list(orjson.loads(line)) == [
        "level", "time", "scope", "message",
        "src.addr", "src.workload", "src.namespace", "src.identity",
        "dst.addr", "dst.hbone_addr", "dst.service", "dst.workload", "dst.namespace",
        "dst.identity", "direction", "bytes_sent", "bytes_recv", "duration",
    ]  # fmt: skip


def test_inbound_reports_bytes_from_the_servers_side_and_errors_at_error_level() -> None:
    event = inbound_hbone().complete(
        to_upstream=2052,
        to_downstream=9603,
        duration=2.1109,
        error="connection closed due to policy rejection: allow policies exist, but none allowed",
    )
    assert event.level == logging.ERROR
    line = format_text(event, AT)
    assert line.startswith("2025-01-23T05:07:25.806642Z\terror\taccess\tconnection complete\t")
    assert line.endswith(
        'direction="inbound" bytes_sent=9603 bytes_recv=2052 duration="2110ms" '
        'error="connection closed due to policy rejection: allow policies exist, but none allowed"'
    )
    document = orjson.loads(format_json(event, AT))
    assert (document["level"], document["bytes_sent"], document["bytes_recv"]) == (
        "error",
        9603,
        2052,
    )
    assert document["error"].startswith("connection closed due to policy rejection")


def test_plaintext_to_an_unknown_destination_leaves_unknown_fields_out() -> None:
    labels = ConnectionLabels.build(Reporter.SOURCE, PRODUCTPAGE, None, None, None, mtls=False)
    log = ConnectionLog.of(
        labels, src_addr="10.129.0.48:40978", dst_addr="93.184.216.34:443", source=PRODUCTPAGE
    )
    event = log.complete(to_upstream=517, to_downstream=4096, duration=0.0)
    assert format_text(event, AT) == (
        "2025-01-23T05:07:25.806642Z\tinfo\taccess\tconnection complete\t"
        'src.addr=10.129.0.48:40978 src.workload="productpage-v1-57ffb6658c-vmb6z" '
        'src.namespace="bookinfo" dst.addr=93.184.216.34:443 direction="outbound" '
        'bytes_sent=517 bytes_recv=4096 duration="0ms"'
    )


def test_plaintext_inbound_names_no_identities() -> None:
    labels = ConnectionLabels.build(Reporter.DESTINATION, None, None, DETAILS, None, mtls=False)
    log = ConnectionLog.of(
        labels, src_addr="10.0.0.9:5555", dst_addr="10.129.0.43:9080", destination=DETAILS
    )
    fields = dict(log.complete(to_upstream=1, to_downstream=2, duration=0.5).fields)
    assert "src.identity" not in fields and "dst.identity" not in fields
    assert "src.workload" not in fields and "src.namespace" not in fields
    assert fields["dst.workload"] == "details-v1-6cd6d9df6b-mddv2"


def test_workload_falls_back_to_the_canonical_service() -> None:
    # ztunnel writes the pod name, else the canonical service from the labels.
    labels = ConnectionLabels.build(Reporter.DESTINATION, None, None, DETAILS, None, mtls=False)
    log = ConnectionLog.of(labels, src_addr="10.0.0.9:5555", dst_addr="10.129.0.43:9080")
    assert log.dst_workload == "details"
    assert log.src_workload is None


def test_connection_opened_is_debug() -> None:
    event = outbound_hbone().opened()
    assert event.level == logging.DEBUG
    line = format_text(event, AT)
    assert line.startswith(
        "2025-01-23T05:07:25.806642Z\tdebug\taccess\tconnection opened\tsrc.addr="
    )
    assert line.endswith('direction="outbound"')


def test_connection_failed_line() -> None:
    event = connection_failed(
        "10.0.0.1:3333", "10.0.0.2:15008", Reporter.DESTINATION, "unknown source: 10.0.0.1"
    )
    assert format_text(event, AT) == (
        "2025-01-23T05:07:25.806642Z\twarn\taccess\tconnection failed\t"
        'src.addr=10.0.0.1:3333 dst.addr=10.0.0.2:15008 direction="inbound" '
        'error="unknown source: 10.0.0.1"'
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0ms"),
        (0.0009, "0ms"),
        (0.073, "73ms"),
        (0.0739, "73ms"),
        (1.0, "1000ms"),
        (61.5, "61500ms"),
    ],
)
def test_duration_is_whole_milliseconds_rounded_down(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_values_are_escaped_as_rust_debug() -> None:
    assert rust_debug('say "hi"\\\n\ttab') == '"say \\"hi\\"\\\\\\n\\ttab"'
    assert rust_debug("\x07bell é") == '"\\u{7}bell é"'
    event = LogEvent(logging.INFO, "access", "connection complete", (("error", 'bad "x"'),))
    assert format_text(event, AT).endswith('error="bad \\"x\\""')


def test_addresses_and_time() -> None:
    assert socket_address("fd00::1", 15008) == "[fd00::1]:15008"
    assert socket_address("10.0.0.1", 80) == "10.0.0.1:80"
    assert istio_timestamp(0.5) == "1970-01-01T00:00:00.500000Z"


def emit_through_logging(log_format: LogFormat) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(IstioFormatter(log_format, clock=lambda: AT))
    logger = logging.getLogger("ambient_fast.access.test")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        access = AccessLog(logger)
        access.emit(outbound_hbone().opened())  # debug: filtered out at INFO
        access.emit(outbound_hbone().complete(to_upstream=283, to_downstream=358, duration=0.002))
        logging.getLogger("ambient_fast.access.test").warning("plain %s", "record")
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_the_handler_writes_text_lines() -> None:
    lines = emit_through_logging(LogFormat.TEXT).splitlines()
    assert lines == [
        OUTBOUND_TEXT,
        "2025-01-23T05:07:25.806642Z\twarn\taccess.test\tplain record\t",
    ]


def test_the_handler_writes_json_lines() -> None:
    lines = emit_through_logging(LogFormat.JSON).splitlines()
    assert len(lines) == 2
    complete = orjson.loads(lines[0])
    assert complete["message"] == "connection complete"
    assert complete["duration"] == "2ms"
    assert orjson.loads(lines[1]) == {
        "level": "warn",
        "time": "2025-01-23T05:07:25.806642Z",
        "scope": "access.test",
        "message": "plain record",
    }

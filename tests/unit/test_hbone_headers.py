"""The HBONE request headers ztunnel sends: baggage, forwarded and traceparent (sans-IO)."""

from __future__ import annotations

import re

import pytest

from ambient_fast.hbone.headers import Baggage, forwarded, traceparent

FULL = Baggage(
    cluster="Kubernetes",
    namespace="default",
    workload_kind="deployment",
    workload_name="sleep",
    service_name="sleep",
    service_version="v1",
    region="eu-west-1",
    zone="eu-west-1a",
)


def test_baggage_uses_istio_key_names_in_ztunnel_order() -> None:
    # istio/ztunnel src/baggage.rs baggage_header_val.
    assert FULL.encode() == (
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=sleep,"
        "service.name=sleep,service.version=v1,"
        "cloud.region=eu-west-1,cloud.availability_zone=eu-west-1a"
    )


@pytest.mark.parametrize("kind", ["deployment", "pod", "job", "cronjob"])
def test_baggage_round_trips_every_workload_kind(kind: str) -> None:
    baggage = Baggage("c1", "ns", kind, "w", "svc", "v2")
    encoded = baggage.encode()
    assert f"k8s.{kind}.name=w" in encoded
    assert Baggage.decode(encoded) == baggage


def test_baggage_round_trips_with_cloud_location() -> None:
    assert Baggage.decode(FULL.encode()) == FULL


def test_baggage_omits_empty_values() -> None:
    sparse = Baggage("", "ns", "pod", "w", "", "")
    assert sparse.encode() == "k8s.namespace.name=ns,k8s.pod.name=w"
    assert Baggage.decode(sparse.encode()) == sparse


def test_baggage_unknown_workload_kind_is_sent_as_pod() -> None:
    encoded = Baggage("c", "ns", "statefulset", "db", "db", "v1").encode()
    assert "k8s.pod.name=db" in encoded
    assert "statefulset" not in encoded


def test_baggage_decode_is_lenient() -> None:
    # Whitespace, W3C member properties, unknown keys and junk members are tolerated.
    value = (
        " k8s.cluster.name = c1 ,junk, k8s.namespace.name=ns;prop=1,"
        "other.vendor=x,k8s.job.name=batch,service.name=svc,service.version=,="
    )
    assert Baggage.decode(value) == Baggage("c1", "ns", "job", "batch", "svc", "")


def test_baggage_decode_of_empty_header() -> None:
    assert Baggage.decode("") == Baggage("", "", "", "", "", "")


@pytest.mark.parametrize(
    ("ip", "port", "host", "expected"),
    [
        ("10.0.0.1", 43210, "", 'for="10.0.0.1:43210"'),
        ("fd00::1", 43210, "", 'for="[fd00::1]:43210"'),
        (
            "10.0.0.1",
            80,
            "echo.server.svc.cluster.local",
            'for="10.0.0.1:80";host=echo.server.svc.cluster.local',
        ),
        ("fd00::1", 80, "echo.server", 'for="[fd00::1]:80";host=echo.server'),
    ],
)
def test_forwarded(ip: str, port: int, host: str, expected: str) -> None:
    assert forwarded(ip, port, host) == expected


TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-00")


def test_traceparent_is_w3c_version_00_not_sampled() -> None:
    value = traceparent()
    assert TRACEPARENT.fullmatch(value), value
    _, trace_id, span_id, _ = value.split("-")
    # W3C: an all-zero trace or parent id is invalid.
    assert int(trace_id, 16) != 0
    assert int(span_id, 16) != 0


def test_traceparent_is_fresh_per_connection() -> None:
    values = {traceparent() for _ in range(100)}
    assert len(values) == 100
    assert len({v.split("-")[1] for v in values}) == 100

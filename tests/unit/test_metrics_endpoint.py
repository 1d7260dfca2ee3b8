"""The stats endpoint without sockets: request heads in, responses out."""

from __future__ import annotations

import gzip

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ambient_fast.metrics import Metrics, StatsEndpoint
from ambient_fast.metrics.server import BadRequest, Response, parse_request_head


def request(target: str, *headers: str, version: str = "HTTP/1.1", method: str = "GET") -> bytes:
    lines = [f"{method} {target} {version}", "Host: 10.0.0.5:15020", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def respond(head: bytes) -> Response:
    metrics = Metrics(process=False)
    metrics.xds.received("type.googleapis.com/istio.workload.Address", 42)
    return StatsEndpoint(metrics).respond(parse_request_head(head))


@pytest.mark.parametrize("path", ["/metrics", "/stats/prometheus", "/metrics?debug=1"])
def test_both_paths_serve_the_exposition(path: str) -> None:
    response = respond(request(path))
    assert response.status == 200
    assert ("content-type", "text/plain; version=0.0.4; charset=utf-8") in response.headers
    names = {f.name for f in text_string_to_metric_families(response.body.decode())}
    assert {"istio_build", "istio_xds_message"} <= names


@pytest.mark.parametrize("path", ["/", "/metricsx", "/stats", "/config_dump"])
def test_other_paths_are_not_found(path: str) -> None:
    response = respond(request(path))
    assert (response.status, response.body) == (404, b"")


def test_gzip_when_accepted() -> None:
    response = respond(request("/metrics", "Accept-Encoding: gzip, deflate"))
    assert ("content-encoding", "gzip") in response.headers
    assert b"istio_build" in gzip.decompress(response.body)
    refused = respond(request("/metrics", "Accept-Encoding: gzip;q=0, identity"))
    assert b"istio_build" in refused.body


def test_openmetrics_follows_the_accept_header() -> None:
    response = respond(request("/stats/prometheus", "Accept: application/openmetrics-text"))
    content_type = dict(response.headers)["content-type"]
    assert content_type.startswith("application/openmetrics-text")
    assert response.body.endswith(b"# EOF\n")


def test_keep_alive_rules() -> None:
    assert respond(request("/metrics")).keep_alive
    assert not respond(request("/metrics", "Connection: close")).keep_alive
    assert not respond(request("/metrics", version="HTTP/1.0")).keep_alive
    assert respond(request("/metrics", "Connection: keep-alive", version="HTTP/1.0")).keep_alive
    # A body we do not read would be taken for the next request: close instead.
    assert not respond(request("/metrics", "Content-Length: 4", method="POST")).keep_alive


def test_response_encoding() -> None:
    wire = Response(404, keep_alive=False).encode()
    assert wire == b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    head, body = (
        Response(200, (("content-type", "text/plain"),), b"abc").encode().split(b"\r\n\r\n")
    )
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 200 OK",
        b"content-type: text/plain",
        b"content-length: 3",
    ]
    assert body == b"abc"


def test_head_answers_without_body() -> None:
    response = respond(request("/metrics", method="HEAD"))
    assert response.status == 200 and response.body == b""


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (b"GET /metrics\r\n\r\n", "expected METHOD TARGET HTTP/1.x"),
        (b"GET /metrics SPDY/3\r\n\r\n", "expected METHOD TARGET HTTP/1.x"),
        (
            b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
            "'no colon here': expected Name: value",
        ),
        (b"GET /metrics HTTP/1.1\r\nHost : x\r\n\r\n", "expected Name: value"),
    ],
)
def test_malformed_heads_are_named(head: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_request_head(head)

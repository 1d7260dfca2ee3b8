"""The stats server on loopback: /metrics and /stats/prometheus, 404 elsewhere, keep-alive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from waits import DEADLINE

from ambient_fast.metrics import ConnectionLabels, Metrics, MetricsServer, Reporter


@pytest.fixture
async def server() -> AsyncIterator[MetricsServer]:
    metrics = Metrics(process=False)
    labels = ConnectionLabels.build(Reporter.SOURCE, None, None, None, None, mtls=False)
    metrics.connections.close(metrics.connections.open(labels), to_upstream=11, to_downstream=22)
    server = MetricsServer(metrics, host="127.0.0.1", port=0)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
    status_line, *header_lines = head.decode().rstrip("\r\n").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), DEADLINE)
    return int(status_line.split()[1]), headers, body


async def get(server: MetricsServer, path: str) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return await read_response(reader)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize("path", ["/metrics", "/stats/prometheus"])
async def test_scrape_paths(server: MetricsServer, path: str) -> None:
    status, headers, body = await get(server, path)
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    sent = {
        s.name: s.value
        for f in text_string_to_metric_families(body.decode())
        for s in f.samples
        if s.name.startswith("istio_tcp_")
    }
    assert sent == {
        "istio_tcp_connections_opened_total": 1,
        "istio_tcp_connections_closed_total": 1,
        "istio_tcp_received_bytes_total": 11,
        "istio_tcp_sent_bytes_total": 22,
    }


@pytest.mark.parametrize("path", ["/", "/healthz/ready", "/metrics/x"])
async def test_other_paths_are_404(server: MetricsServer, path: str) -> None:
    status, _, body = await get(server, path)
    assert (status, body) == (404, b"")


async def test_one_connection_serves_several_scrapes(server: MetricsServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for path in ("/metrics", "/nope", "/stats/prometheus"):
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            status, _, _ = await read_response(reader)
            assert status == (404 if path == "/nope" else 200)
        assert server.endpoint.scrapes == 2
    finally:
        writer.close()
        await writer.wait_closed()


async def test_garbage_gets_400_and_a_close(server: MetricsServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"HELLO\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert (status, headers["connection"]) == (400, "close")
        assert await asyncio.wait_for(reader.read(), DEADLINE) == b""
    finally:
        writer.close()
        await writer.wait_closed()


async def test_close_ends_idle_connections(server: MetricsServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    await read_response(reader)
    await server.close()
    assert await asyncio.wait_for(reader.read(), DEADLINE) == b""
    writer.close()

"""The DNS proxy of a dedicated-mode ztunnel on loopback: mesh names answered over UDP and TCP,
other names forwarded to a fake upstream found through a resolv.conf the test writes (TCP when
its UDP answer is truncated), SERVFAIL within the timeout when the upstream is silent,
FORMERR or silence for garbage, metrics, readiness and drain. Root: the fake upstream binds
port 53 and the proxy marks its upstream sockets."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dns_upstream import FakeUpstream, ask_tcp, ask_udp, ask_udp_raw, loopback_ip
from sockets import free_ports
from waits import DEADLINE, wait_until

from ambient_fast.ztunnel.app import Ztunnel
from ambient_fast.ztunnel.config import PORTS, ProxyMode, WorkloadInfo, ZtunnelConfig
from ambient_fast.ztunnel.dns.message import (
    FLAG_AA,
    FLAG_TC,
    TYPE_A,
    TYPE_AAAA,
    TYPE_CNAME,
    Edns,
    Rcode,
    Record,
    name_from_text,
    parse_message,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="binds port 53 and marks sockets")

LOCAL_IP = "127.0.0.1"
ECHO_VIP = "10.96.0.10"
# The client is the proxy's own workload, demo/client (ztunnel: whatever the query's source).
LOCAL_XDS = f"""\
workloads:
- uid: Kubernetes//Pod/demo/client
  name: client
  namespace: demo
  serviceAccount: client
  workloadIps: ["{LOCAL_IP}"]
  protocol: HBONE
  canonicalName: client
  canonicalRevision: v1
services:
- name: echo
  namespace: demo
  hostname: echo.demo.svc.cluster.local
  vips: ["/{ECHO_VIP}"]
  ports:
    80: 8080
"""
OUTSIDE = "outside.test"
OUTSIDE_IP = "192.0.2.7"
BIG = "big.test"  # too large for 512 bytes: truncated over UDP by the upstream


def config(**changes: object) -> ZtunnelConfig:
    ports = dict(zip(PORTS, free_ports(len(PORTS)), strict=True))
    values: dict[str, object] = {
        "proxy_mode": ProxyMode.DEDICATED,
        "proxy_workload_info": WorkloadInfo("demo", "client", "client"),
        "fake_ca": True,
        "local_xds": LOCAL_XDS,
        "drain_deadline": 1.0,
        **ports,
        **changes,
    }
    return ZtunnelConfig(**values)  # type: ignore[arg-type]


def zone() -> dict[tuple[str, int], list[Record]]:
    big = [
        Record(name_from_text(BIG), TYPE_A, 60, ipaddress.IPv4Address(f"198.51.100.{i}"))
        for i in range(1, 60)
    ]
    outside = [Record(name_from_text(OUTSIDE), TYPE_A, 60, ipaddress.IPv4Address(OUTSIDE_IP))]
    return {(OUTSIDE, TYPE_A): outside, (BIG, TYPE_A): big}


@contextlib.asynccontextmanager
async def running(cfg: ZtunnelConfig, resolv_conf: Path) -> AsyncIterator[Ztunnel]:
    app = Ztunnel(cfg, bind=LOCAL_IP, resolv_conf=resolv_conf)
    task = asyncio.create_task(app.run())
    try:
        await wait_until(lambda: app.ready() or task.done(), "readiness")
        assert not task.done(), task
        yield app
    finally:
        app.stop()
        assert await asyncio.wait_for(task, DEADLINE) == 0


@contextlib.asynccontextmanager
async def upstream_and_proxy(tmp_path: Path) -> AsyncIterator[tuple[FakeUpstream, ZtunnelConfig]]:
    upstream = FakeUpstream(loopback_ip(), zone())
    await upstream.start()
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text(
        f"# written by the test\nnameserver {upstream.ip}\n"
        "search demo.svc.cluster.local svc.cluster.local cluster.local\noptions timeout:2\n"
    )
    cfg = config()
    try:
        async with running(cfg, resolv_conf):
            yield upstream, cfg
    finally:
        upstream.close()


async def test_service_names_are_answered_from_the_mesh_over_udp_and_tcp(tmp_path: Path) -> None:
    async with upstream_and_proxy(tmp_path) as (upstream, cfg):
        for name in ("echo", "echo.demo", "echo.demo.svc", "echo.demo.svc.cluster.local"):
            for answer in (
                await ask_udp(cfg.dns_port, name, TYPE_A),
                await ask_tcp(cfg.dns_port, name, TYPE_A),
            ):
                assert answer.header.rcode == Rcode.NOERROR, name
                assert answer.header.flags & FLAG_AA
                assert answer.answers == (
                    Record(name_from_text(name), TYPE_A, 30, ipaddress.IPv4Address(ECHO_VIP)),
                ), name
        # A search domain the client's resolver appended: CNAME to the stripped name.
        answer = await ask_udp(cfg.dns_port, "echo.demo.demo.svc.cluster.local", TYPE_A)
        assert [r.rtype for r in answer.answers] == [TYPE_CNAME, TYPE_A]
        # Known name, no IPv6 address: NOERROR without records, not forwarded.
        answer = await ask_udp(cfg.dns_port, "echo", TYPE_AAAA)
        assert (answer.header.rcode, answer.answers) == (Rcode.NOERROR, ())
        assert upstream.seen == []


async def test_unknown_names_are_forwarded_and_answered_verbatim(tmp_path: Path) -> None:
    async with upstream_and_proxy(tmp_path) as (upstream, cfg):
        answer = await ask_udp(cfg.dns_port, OUTSIDE, TYPE_A, id=0x1234)
        assert answer.header.id == 0x1234 and answer.header.rcode == Rcode.NOERROR
        assert not answer.header.flags & FLAG_AA  # the upstream's answer, not ours
        assert [(r.ttl, r.data) for r in answer.answers] == [
            (60, ipaddress.IPv4Address(OUTSIDE_IP))
        ]
        missing = await ask_tcp(cfg.dns_port, "nowhere.test", TYPE_A, id=0x4321)
        assert (missing.header.id, missing.header.rcode) == (0x4321, Rcode.NXDOMAIN)
        # Another record type of a mesh name goes upstream too.
        await ask_udp(cfg.dns_port, "echo.demo.svc.cluster.local", 16)
        assert [(t, q.name, q.qtype) for t, _, q in upstream.seen] == [
            ("udp", name_from_text(OUTSIDE), TYPE_A),
            ("udp", name_from_text("nowhere.test"), TYPE_A),
            ("udp", name_from_text("echo.demo.svc.cluster.local"), 16),
        ]


async def test_a_query_from_another_address_is_answered_for_the_proxys_workload(
    tmp_path: Path,
) -> None:
    async with upstream_and_proxy(tmp_path) as (upstream, cfg):
        answer = await ask_udp(cfg.dns_port, "echo", TYPE_A, source="127.0.0.2")
        assert answer.header.rcode == Rcode.NOERROR  # "echo" in demo/client's namespace
        assert [r.data for r in answer.answers] == [ipaddress.IPv4Address(ECHO_VIP)]
        assert upstream.seen == []


async def test_a_truncated_upstream_answer_is_fetched_again_over_tcp(tmp_path: Path) -> None:
    async with upstream_and_proxy(tmp_path) as (upstream, cfg):
        whole = await ask_tcp(cfg.dns_port, BIG, TYPE_A)
        assert len(whole.answers) == 59 and not whole.header.flags & FLAG_TC
        assert [t for t, _, _ in upstream.seen] == ["udp", "tcp"]
        # A UDP client with room gets it all; one without EDNS gets TC and comes back by TCP.
        roomy = await ask_udp(cfg.dns_port, BIG, TYPE_A, edns=Edns(4096))
        assert len(roomy.answers) == 59 and not roomy.header.flags & FLAG_TC
        small = await ask_udp(cfg.dns_port, BIG, TYPE_A, id=77)
        assert small.header.id == 77 and small.header.flags & FLAG_TC and not small.answers


async def test_a_silent_upstream_gives_servfail_within_the_timeout(tmp_path: Path) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    silent.bind((loopback_ip(), 53))
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text(f"nameserver {silent.getsockname()[0]}\noptions timeout:1 attempts:1\n")
    cfg = config()
    try:
        async with running(cfg, resolv_conf) as app:
            started = time.monotonic()
            answer = await ask_udp(cfg.dns_port, OUTSIDE, TYPE_A, id=99)
            elapsed = time.monotonic() - started
            assert (answer.header.id, answer.header.rcode) == (99, Rcode.SERVFAIL)
            assert 0.9 < elapsed < 1.9, elapsed
            # The mesh's own names do not wait for the upstream.
            assert (await ask_udp(cfg.dns_port, "echo", TYPE_A)).header.rcode == Rcode.NOERROR
            metrics = app.metrics.dns
            assert metrics is not None
            labels = ("a", "udp", "client", "v1")
            assert metrics.upstream_failures.value(labels) == 1
            assert metrics.requests.value(labels) == 2
    finally:
        silent.close()


async def test_garbage_gets_formerr_or_nothing_and_the_proxy_serves_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ambient_fast.ztunnel.dns")
    async with upstream_and_proxy(tmp_path) as (upstream, cfg):
        with pytest.raises(TimeoutError):
            await ask_udp_raw(cfg.dns_port, b"\x01\x02\x03", wait=0.5)
        assert "dropped udp query from 127.0.0.1:" in caplog.text
        loop_query = (
            struct.pack("!HHHHHH", 0xABCD, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01"
        )
        formerr = parse_message(await ask_udp_raw(cfg.dns_port, loop_query))
        assert (formerr.header.id, formerr.header.rcode) == (0xABCD, Rcode.FORMERR)
        assert "FORMERR to 127.0.0.1:" in caplog.text
        response = struct.pack("!HHHHHH", 1, 0x8180, 0, 0, 0, 0)
        with pytest.raises(TimeoutError):
            await ask_udp_raw(cfg.dns_port, response, wait=0.5)
        assert (await ask_udp(cfg.dns_port, "echo", TYPE_A)).header.rcode == Rcode.NOERROR
        assert upstream.seen == []


async def test_metrics_count_answers_and_forwards(tmp_path: Path) -> None:
    async with upstream_and_proxy(tmp_path) as (_, cfg):
        await ask_udp(cfg.dns_port, "echo", TYPE_A)
        await ask_tcp(cfg.dns_port, OUTSIDE, TYPE_A)
        reader, writer = await asyncio.open_connection(LOCAL_IP, cfg.stats_port)
        writer.write(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        body = (await asyncio.wait_for(reader.read(), DEADLINE)).decode()
        writer.close()
        source = 'source_canonical_revision="v1",source_canonical_service="client"'
        udp_a = f'request_protocol="udp",request_query_type="a",{source}'
        tcp_a = f'request_protocol="tcp",request_query_type="a",{source}'
        assert f"istio_dns_requests_total{{{udp_a}}} 1.0" in body
        assert f"istio_dns_requests_total{{{tcp_a}}} 1.0" in body
        assert f"istio_dns_upstream_requests_total{{{tcp_a}}} 1.0" in body
        assert f"istio_dns_upstream_requests_total{{{udp_a}}}" not in body
        assert "istio_dns_upstream_request_duration_seconds_bucket{" in body


async def test_the_listeners_are_up_when_ready_and_gone_after_drain(tmp_path: Path) -> None:
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text(f"nameserver {loopback_ip()}\n")
    cfg = config()
    app = Ztunnel(cfg, bind=LOCAL_IP, resolv_conf=resolv_conf)
    task = asyncio.create_task(app.run())
    try:
        await wait_until(lambda: app.ready() or task.done(), "readiness")
        # Ready means answering at once, on both transports.
        assert (await ask_udp(cfg.dns_port, "echo", TYPE_A)).header.rcode == Rcode.NOERROR
        assert (await ask_tcp(cfg.dns_port, "echo", TYPE_A)).header.rcode == Rcode.NOERROR
    finally:
        app.stop()
        assert await asyncio.wait_for(task, DEADLINE) == 0
    with pytest.raises(ConnectionRefusedError):
        await ask_tcp(cfg.dns_port, "echo", TYPE_A)
    with pytest.raises(OSError):  # ICMP port unreachable, or nothing at all
        await ask_udp_raw(cfg.dns_port, b"\x00" * 12, wait=0.5)


async def test_turned_off_there_is_no_listener_and_no_resolv_conf_is_read(tmp_path: Path) -> None:
    cfg = config(dns_proxy=False)
    async with running(cfg, tmp_path / "missing"):
        with pytest.raises(ConnectionRefusedError):
            await ask_tcp(cfg.dns_port, "echo", TYPE_A)


async def test_a_resolv_conf_without_nameservers_stops_the_start_naming_it(
    tmp_path: Path,
) -> None:
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("search demo.svc.cluster.local\n")
    app = Ztunnel(config(), bind=LOCAL_IP, resolv_conf=resolv_conf)
    with pytest.raises(ValueError, match=f"{resolv_conf}: no nameserver line"):
        await app.run()

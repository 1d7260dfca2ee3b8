"""The DNS proxy's per-query decisions without sockets: a query in, the answer's bytes out."""

from __future__ import annotations

import ipaddress
import struct

from test_dns_resolver import mesh

from ambient_fast.state import Workload
from ambient_fast.ztunnel.dns.forwarder import Forwarder, ResolvConf, UpstreamFailure
from ambient_fast.ztunnel.dns.message import (
    FLAG_QR,
    TYPE_A,
    Header,
    Message,
    Question,
    Rcode,
    Record,
    build_message,
    build_query,
    name_from_text,
    parse_message,
)
from ambient_fast.ztunnel.dns.resolver import DnsResolver, kubernetes_search_domains
from ambient_fast.ztunnel.dns.server import ClientResolver, DnsHandler, Transport

CLIENT = ("10.244.1.10", 40000)
NAME = name_from_text("many.example")


class ScriptedForwarder(Forwarder):
    """Answers with `records` (or fails) instead of asking anyone."""

    def __init__(self, records: list[Record] | None) -> None:
        super().__init__(ResolvConf(("192.0.2.53",)))
        self.records = records
        self.asked: list[bytes] = []

    async def forward(self, query: bytes, question: Question) -> tuple[bytes, Message]:
        self.asked.append(query)
        if self.records is None:
            raise UpstreamFailure("192.0.2.53: no answer within 5s")
        (client_id,) = struct.unpack_from("!H", query)
        data = build_message(Header(client_id, FLAG_QR), [question], self.records)
        return data, parse_message(data)


STORE = mesh()
OWN = STORE.workload_by_uid("Kubernetes//Pod/ns1/client")


def own() -> Workload | None:
    return OWN


def nobody() -> Workload | None:
    return None


def broken() -> Workload | None:
    raise RuntimeError("a bug")


def handler(forwarder: Forwarder, client_of: ClientResolver = own) -> DnsHandler:
    search = kubernetes_search_domains("cluster.local")
    resolver = DnsResolver(STORE, cluster_domain="cluster.local", search_domains=search)
    return DnsHandler(resolver, forwarder, client_of)


async def test_no_answer_before_the_proxys_workload_is_known() -> None:
    """ztunnel: SERVFAIL while its local workload is unknown, nothing forwarded."""
    upstream = ScriptedForwarder([])
    answer = parse_message(
        await handler(upstream, nobody).answer(build_query(10, NAME, TYPE_A), CLIENT, Transport.UDP)
        or b""
    )
    assert (answer.header.id, answer.header.rcode) == (10, Rcode.SERVFAIL)
    assert upstream.asked == []


async def test_another_opcode_is_not_implemented() -> None:
    query = bytearray(build_query(11, NAME, TYPE_A))
    query[2] |= 2 << 3  # opcode 2 (STATUS)
    answer = parse_message(
        await handler(ScriptedForwarder([])).answer(bytes(query), CLIENT, Transport.UDP) or b""
    )
    assert (answer.header.id, answer.header.rcode) == (11, Rcode.NOTIMP)


async def test_a_large_forwarded_answer_is_cut_for_udp_only() -> None:
    records = [
        Record(NAME, TYPE_A, 60, ipaddress.IPv4Address(f"198.51.100.{i}")) for i in range(60)
    ]
    proxy = handler(ScriptedForwarder(records))
    query = build_query(12, NAME, TYPE_A)
    udp = parse_message(await proxy.answer(query, CLIENT, Transport.UDP) or b"")
    assert udp.header.truncated and not udp.answers and udp.header.id == 12
    tcp = parse_message(await proxy.answer(query, CLIENT, Transport.TCP) or b"")
    assert not tcp.header.truncated and len(tcp.answers) == 60


async def test_an_upstream_failure_is_servfail_and_a_crash_is_too() -> None:
    failing = handler(ScriptedForwarder(None))
    answer = parse_message(
        await failing.answer(build_query(13, NAME, TYPE_A), CLIENT, Transport.UDP) or b""
    )
    assert (answer.header.id, answer.header.rcode) == (13, Rcode.SERVFAIL)

    crashing = handler(ScriptedForwarder([]), broken)
    answer = parse_message(
        await crashing.answer(build_query(14, NAME, TYPE_A), CLIENT, Transport.UDP) or b""
    )
    assert (answer.header.id, answer.header.rcode) == (14, Rcode.SERVFAIL)

"""The DNS wire format (RFC 1035, EDNS0): queries read, answers written, malformed bytes
refused with a reason, answers cut to a UDP client's size with TC."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from ambient_fast.ztunnel.dns.message import (
    FLAG_AA,
    FLAG_QR,
    FLAG_RA,
    FLAG_RD,
    FLAG_TC,
    MIN_UDP_PAYLOAD,
    TYPE_A,
    TYPE_AAAA,
    TYPE_CNAME,
    Edns,
    Header,
    MalformedMessage,
    Query,
    Question,
    Rcode,
    Record,
    build_message,
    build_query,
    build_response,
    error_response,
    fit,
    name_from_text,
    name_text,
    parse_message,
    parse_query,
    read_name,
    type_name,
    with_id,
)

ECHO = name_from_text("echo.demo.svc.cluster.local")
V4 = ipaddress.IPv4Address("10.96.0.10")
V6 = ipaddress.IPv6Address("fd00::10")


def header_bytes(id: int = 7, flags: int = FLAG_RD, qd: int = 1, an: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", id, flags, qd, an, 0, ar)


def test_a_query_round_trips_with_its_edns() -> None:
    data = build_query(0x1234, ECHO, TYPE_AAAA, edns=Edns(1232, 0, dnssec_ok=True))
    query = parse_query(data)
    assert query.header.id == 0x1234
    assert query.header.flags & FLAG_RD and not query.header.is_response
    assert query.question == Question(ECHO, TYPE_AAAA)
    assert query.edns == Edns(1232, 0, True)
    assert query.udp_limit == 1232


def test_without_edns_the_udp_limit_is_512_and_never_below() -> None:
    assert parse_query(build_query(1, ECHO, TYPE_A)).udp_limit == MIN_UDP_PAYLOAD
    small = parse_query(build_query(1, ECHO, TYPE_A, edns=Edns(100)))
    assert small.udp_limit == MIN_UDP_PAYLOAD


def test_an_answer_round_trips_with_compressed_names() -> None:
    query = parse_query(build_query(9, name_from_text("Echo.Demo"), TYPE_A, edns=Edns(4096)))
    stripped = name_from_text("Echo.Demo")
    records = [
        Record(name_from_text("Echo.Demo"), TYPE_CNAME, 30, ECHO),
        Record(ECHO, TYPE_A, 30, V4),
        Record(ECHO, TYPE_AAAA, 30, V6),
    ]
    data = build_response(query, Rcode.NOERROR, records, authoritative=True)
    message = parse_message(data)
    assert message.header.id == 9
    assert message.header.flags & (FLAG_QR | FLAG_AA | FLAG_RA | FLAG_RD) == (
        FLAG_QR | FLAG_AA | FLAG_RA | FLAG_RD
    )
    assert message.header.rcode == Rcode.NOERROR
    assert message.questions == (Question(stripped, TYPE_A),)  # case as the client asked
    assert message.answers == tuple(records)
    assert message.edns == Edns(4096)
    # The long name is written once (the CNAME's data); both owners after it are pointers.
    assert data.count(b"\x07cluster") == 1
    assert data.count(struct.pack("!H", 0xC000 | data.index(b"\x04echo"))) == 2


def test_names_are_compared_without_case_and_printed_with_a_dot() -> None:
    assert Question(name_from_text("ECHO.demo"), TYPE_A).matches(
        Question(name_from_text("echo.DEMO."), TYPE_A)
    )
    assert name_text(ECHO) == "echo.demo.svc.cluster.local."
    assert name_text(()) == "."
    assert type_name(TYPE_AAAA) == "aaaa" and type_name(999) == "unknown(999)"


def test_a_compression_pointer_may_point_back_to_a_pointer() -> None:
    # offset 12: "a" + root; offset 15: "b" + pointer to 12; offset 19: pointer to 15.
    data = header_bytes(qd=0) + b"\x01a\x00" + b"\x01b\xc0\x0c" + b"\xc0\x0f"
    assert read_name(data, 19) == ((b"b", b"a"), 21)


def test_a_pointer_to_itself_is_a_loop_and_refused_with_the_header() -> None:
    data = header_bytes() + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    with pytest.raises(MalformedMessage, match="does not point backwards") as refused:
        parse_query(data)
    assert refused.value.header is not None and refused.value.header.id == 7


def test_two_pointers_pointing_at_each_other_are_refused() -> None:
    # offset 12 points forward to 14, which points back to 12: the forward one is refused.
    data = header_bytes() + b"\xc0\x0e\xc0\x0c" + b"\x00\x01\x00\x01"
    with pytest.raises(MalformedMessage, match="loop"):
        parse_query(data)


def test_a_pointer_outside_the_message_is_refused() -> None:
    data = header_bytes() + b"\xff\xff" + b"\x00\x01\x00\x01"
    with pytest.raises(MalformedMessage, match="outside the message"):
        parse_query(data)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x05ab", "runs past the end"),  # label longer than what is left
        (b"\x01a", "runs past the end"),  # no root label
        (b"\x01a\x00\x00", "question cut short"),  # type and class cut
        (b"\x80\x00\x00\x01\x00\x01", "label type 0x80"),  # reserved label type
        (b"\xc0", "cut compression pointer"),
        (b"\x3fa" + b"x" * 62 + b"\x00\x00\x01\x00\x01", ""),  # 63 octets: fine
    ],
)
def test_cut_or_invalid_questions_are_refused(body: bytes, reason: str) -> None:
    data = header_bytes() + body
    if not reason:
        assert parse_query(data).question.qtype == TYPE_A
        return
    with pytest.raises(MalformedMessage, match=reason):
        parse_query(data)


def test_a_name_over_255_octets_is_refused() -> None:
    label = b"\x3f" + b"x" * 63
    data = header_bytes() + label * 4 + b"\x00\x00\x01\x00\x01"  # 4 * 64 + 1 = 257
    with pytest.raises(MalformedMessage, match="longer than 255"):
        parse_query(data)


def test_a_short_packet_has_no_header() -> None:
    with pytest.raises(MalformedMessage) as refused:
        parse_query(b"\x00\x01\x02")
    assert refused.value.header is None


def test_a_query_needs_exactly_one_question() -> None:
    with pytest.raises(MalformedMessage, match="2 questions") as refused:
        parse_query(build_query(5, ECHO, TYPE_A)[:4] + b"\x00\x02" + b"\x00" * 6)
    assert refused.value.header is not None and refused.value.header.id == 5


def test_two_opt_records_and_an_opt_not_owned_by_the_root_are_refused() -> None:
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    question = b"\x01a\x00\x00\x01\x00\x01"
    with pytest.raises(MalformedMessage, match="2 OPT records"):
        parse_query(header_bytes(ar=2) + question + opt + opt)
    with pytest.raises(MalformedMessage, match="not owned by the root"):
        parse_query(header_bytes(ar=1) + question + b"\x01x" + opt)


def test_records_with_wrong_data_lengths_are_refused() -> None:
    question = Question(ECHO, TYPE_A)
    good = build_message(Header(1, FLAG_QR), [question], [Record(ECHO, TYPE_A, 30, V4)])
    bad_a = good[:-6] + b"\x00\x03" + V4.packed[:3]
    with pytest.raises(MalformedMessage, match="A record with 3 bytes"):
        parse_message(bad_a)
    with pytest.raises(MalformedMessage, match="runs past the end"):
        parse_message(good[:-1])


def test_an_answer_that_does_not_fit_is_cut_and_flagged_truncated() -> None:
    query = parse_query(build_query(3, name_from_text("large.com"), TYPE_A))
    records = [
        Record(name_from_text("large.com"), TYPE_A, 30, ipaddress.IPv4Address(f"240.0.0.{i}"))
        for i in range(256)
    ]
    udp = build_response(query, Rcode.NOERROR, records, authoritative=True, limit=512)
    assert len(udp) <= 512
    message = parse_message(udp)
    assert message.header.flags & FLAG_TC
    # 12 header + 15 question, each answer a 2-byte pointer + 10 + 4.
    assert len(message.answers) == (512 - 12 - 15) // 16 == 30
    assert message.answers == tuple(records[:30])
    tcp = parse_message(build_response(query, Rcode.NOERROR, records, authoritative=True))
    assert not tcp.header.flags & FLAG_TC and len(tcp.answers) == 256


def test_the_edns_record_is_kept_when_answers_are_cut() -> None:
    query = parse_query(build_query(3, ECHO, TYPE_A, edns=Edns(600)))
    records = [Record(ECHO, TYPE_A, 30, ipaddress.IPv4Address(f"10.0.0.{i}")) for i in range(60)]
    data = build_response(query, Rcode.NOERROR, records, limit=query.udp_limit)
    assert len(data) <= 600
    message = parse_message(data)
    assert message.header.flags & FLAG_TC and message.edns == Edns(600)


def test_errors_echo_the_id_and_the_question_when_known() -> None:
    query = parse_query(build_query(0xBEEF, ECHO, TYPE_A))
    for rcode in (Rcode.SERVFAIL, Rcode.NXDOMAIN, Rcode.REFUSED):
        message = parse_message(build_response(query, rcode))
        assert (message.header.id, message.header.rcode) == (0xBEEF, rcode)
        assert message.questions == (query.question,) and not message.answers
    formerr = parse_message(error_response(Header(0xBEEF, FLAG_RD), Rcode.FORMERR))
    assert (formerr.header.id, formerr.header.rcode, formerr.questions) == (
        0xBEEF,
        Rcode.FORMERR,
        (),
    )
    assert formerr.header.is_response and formerr.header.flags & FLAG_RD


def test_an_upstream_answer_gets_the_clients_id_and_is_cut_to_its_size() -> None:
    question = Question(ECHO, TYPE_A)
    records = [Record(ECHO, TYPE_A, 60, ipaddress.IPv4Address(f"10.1.0.{i}")) for i in range(100)]
    upstream = build_message(Header(0x4242, FLAG_QR | FLAG_RD | FLAG_RA), [question], records)
    answer = with_id(upstream, 0x0101)
    message = parse_message(answer)
    assert message.header.id == 0x0101 and len(message.answers) == 100
    assert fit(message, answer, 4096) == answer  # fits: verbatim
    cut = fit(message, answer, 512)
    assert len(cut) < 512
    short = parse_message(cut)
    assert short.header.flags & FLAG_TC and short.header.id == 0x0101
    assert short.questions == (question,) and not short.answers


def test_a_query_with_a_non_in_class_is_read_as_is() -> None:
    query: Query = parse_query(build_query(1, ECHO, TYPE_A, qclass=3))
    assert query.question.qclass == 3

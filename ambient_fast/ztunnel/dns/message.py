"""DNS messages on the wire (RFC 1035, EDNS0 of RFC 6891), sans-IO: bytes in, values out.

`parse_message` reads any message (names with compression, A / AAAA / CNAME data decoded,
everything else kept as bytes); `parse_query` adds what a server demands of a query (one
question, at most one OPT). Anything malformed raises `MalformedMessage`, carrying the header
when there was one, so the server can answer FORMERR with the client's id. Names are tuples of
labels as received: case is kept for answers and compared in lower case (`lower`).

`build_response` answers a query: the question echoed, records written with compression, the
client's EDNS echoed (payload at least 512, as ztunnel), and, when a UDP limit is given, as many
records as fit with TC set if some did not. `fit` does the same for an upstream's answer we pass
on verbatim.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Name = tuple[bytes, ...]  # labels, the root being ()

TYPE_A = 1
TYPE_CNAME = 5
TYPE_AAAA = 28
TYPE_OPT = 41
CLASS_IN = 1
OPCODE_QUERY = 0

# Header flag bits (RFC 1035 4.1.1; AD and CD from RFC 4035).
FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_RA = 0x0080
FLAG_CD = 0x0010
EDNS_DO = 0x8000  # DNSSEC OK, in the OPT record's flags

HEADER_SIZE = 12
MAX_NAME_LENGTH = 255  # octets on the wire, length bytes and the root included
MAX_LABEL_LENGTH = 63
MIN_UDP_PAYLOAD = 512  # RFC 1035's UDP limit; also the floor under an EDNS size
MAX_UDP_PAYLOAD = 65507  # the largest UDP payload over IPv4
MAX_TCP_MESSAGE = 65535  # TCP's two-byte length prefix

_HEADER = struct.Struct("!HHHHHH")
_QUESTION_TAIL = struct.Struct("!HH")
_RECORD_HEAD = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_POINTER_LIMIT = 0x3FFF  # a compression pointer addresses the first 16 KiB only

_TYPE_NAMES = {1: "a", 2: "ns", 5: "cname", 6: "soa", 12: "ptr", 15: "mx", 16: "txt",
               28: "aaaa", 33: "srv", 41: "opt", 65: "https", 255: "any"}  # fmt: skip


class Rcode(enum.IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5


class MalformedMessage(ValueError):
    """Bytes that are no valid DNS message; `header` is set when the first 12 bytes were."""

    def __init__(self, reason: str, header: Header | None = None) -> None:
        super().__init__(reason)
        self.header = header


def type_name(qtype: int) -> str:
    """Lower-case mnemonic, as ztunnel labels its DNS metrics ("a", "aaaa", ...)."""
    return _TYPE_NAMES.get(qtype, f"unknown({qtype})")


def lower(name: Name) -> Name:
    """The name for comparisons (DNS names are case-insensitive in ASCII only)."""
    return tuple(label.lower() for label in name)


def name_from_text(text: str) -> Name:
    """ "a.b.c" or "a.b.c." -> (b"a", b"b", b"c"); "" and "." are the root."""
    stripped = text.rstrip(".")
    return tuple(label.encode() for label in stripped.split(".")) if stripped else ()


def name_text(name: Name) -> str:
    """Presentation form with the trailing dot ("." for the root)."""
    return "".join(label.decode("ascii", "backslashreplace") + "." for label in name) or "."


@dataclass(frozen=True, slots=True)
class Header:
    id: int
    flags: int
    qdcount: int = 0
    ancount: int = 0
    nscount: int = 0
    arcount: int = 0

    @property
    def is_response(self) -> bool:
        return bool(self.flags & FLAG_QR)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def rcode(self) -> int:
        return self.flags & 0xF

    @property
    def truncated(self) -> bool:
        return bool(self.flags & FLAG_TC)


@dataclass(frozen=True, slots=True)
class Question:
    name: Name
    qtype: int
    qclass: int = CLASS_IN

    def matches(self, other: Question) -> bool:
        return (lower(self.name), self.qtype, self.qclass) == (
            lower(other.name),
            other.qtype,
            other.qclass,
        )


@dataclass(frozen=True, slots=True)
class Edns:
    payload_size: int = MIN_UDP_PAYLOAD
    version: int = 0
    dnssec_ok: bool = False


@dataclass(frozen=True, slots=True)
class Record:
    """A resource record; `data` is an address (A, AAAA), a name (CNAME) or raw RDATA."""

    name: Name
    rtype: int
    ttl: int
    data: IpAddress | Name | bytes
    rclass: int = CLASS_IN


@dataclass(frozen=True, slots=True)
class Message:
    header: Header
    questions: tuple[Question, ...]
    answers: tuple[Record, ...]
    authorities: tuple[Record, ...]
    additionals: tuple[Record, ...]  # OPT taken out, into `edns`
    edns: Edns | None
    question_end: int  # offset just past the question section


@dataclass(frozen=True, slots=True)
class Query:
    header: Header
    question: Question
    edns: Edns | None

    @property
    def udp_limit(self) -> int:
        """How large a UDP answer the client takes: 512 without EDNS, else its payload size
        (never below 512, RFC 6891 6.2.5)."""
        if self.edns is None:
            return MIN_UDP_PAYLOAD
        return min(max(self.edns.payload_size, MIN_UDP_PAYLOAD), MAX_UDP_PAYLOAD)


# -- reading -----------------------------------------------------------------------------


def parse_header(data: bytes) -> Header:
    if len(data) < HEADER_SIZE:
        raise MalformedMessage(f"{len(data)} bytes, shorter than a DNS header")
    return Header(*_HEADER.unpack_from(data))


def read_name(data: bytes, offset: int, header: Header | None = None) -> tuple[Name, int]:
    """The name at `offset` and the offset after it. A compression pointer must point to an
    earlier offset than its own (so every jump goes backwards and a loop is impossible) and
    inside the message; the whole name stays within 255 octets."""
    labels: list[bytes] = []
    length = 1  # the root's zero byte
    position = offset
    end: int | None = None
    while True:
        if position >= len(data):
            raise MalformedMessage(f"name at offset {offset} runs past the end", header)
        size = data[position]
        kind = size & 0xC0
        if kind == 0xC0:
            if position + 1 >= len(data):
                raise MalformedMessage(f"cut compression pointer at offset {position}", header)
            target = ((size & 0x3F) << 8) | data[position + 1]
            if target >= len(data):
                raise MalformedMessage(
                    f"compression pointer at offset {position} points outside the message "
                    f"({target})",
                    header,
                )
            if target >= position:
                raise MalformedMessage(
                    f"compression pointer at offset {position} does not point backwards "
                    f"({target}): a loop",
                    header,
                )
            if end is None:
                end = position + 2
            position = target
            continue
        if kind != 0:
            raise MalformedMessage(f"label type {kind:#x} at offset {position}", header)
        if size == 0:
            return tuple(labels), end if end is not None else position + 1
        label = data[position + 1 : position + 1 + size]
        if len(label) != size:
            raise MalformedMessage(f"label at offset {position} runs past the end", header)
        length += size + 1
        if length > MAX_NAME_LENGTH:
            raise MalformedMessage(f"name at offset {offset} is longer than 255 octets", header)
        labels.append(label)
        position += 1 + size


def _read_question(data: bytes, offset: int, header: Header) -> tuple[Question, int]:
    name, offset = read_name(data, offset, header)
    if offset + _QUESTION_TAIL.size > len(data):
        raise MalformedMessage("question cut short", header)
    qtype, qclass = _QUESTION_TAIL.unpack_from(data, offset)
    return Question(name, qtype, qclass), offset + _QUESTION_TAIL.size


def _read_record(data: bytes, offset: int, header: Header) -> tuple[Record, int]:
    name, offset = read_name(data, offset, header)
    if offset + _RECORD_HEAD.size > len(data):
        raise MalformedMessage("record cut short", header)
    rtype, rclass, ttl, rdlength = _RECORD_HEAD.unpack_from(data, offset)
    start = offset + _RECORD_HEAD.size
    end = start + rdlength
    if end > len(data):
        raise MalformedMessage(f"record data at offset {start} runs past the end", header)
    rdata: IpAddress | Name | bytes = data[start:end]
    if rclass == CLASS_IN and rtype == TYPE_A:
        if rdlength != 4:
            raise MalformedMessage(f"A record with {rdlength} bytes of data", header)
        rdata = ipaddress.IPv4Address(data[start:end])
    elif rclass == CLASS_IN and rtype == TYPE_AAAA:
        if rdlength != 16:
            raise MalformedMessage(f"AAAA record with {rdlength} bytes of data", header)
        rdata = ipaddress.IPv6Address(data[start:end])
    elif rtype == TYPE_CNAME:
        target, after = read_name(data, start, header)
        if after != end:
            raise MalformedMessage("CNAME data does not hold exactly one name", header)
        rdata = target
    return Record(name, rtype, ttl, rdata, rclass), end


def _edns(record: Record, header: Header) -> Edns:
    if record.name:
        raise MalformedMessage("OPT record not owned by the root", header)
    flags = record.ttl & 0xFFFF
    version = (record.ttl >> 16) & 0xFF
    return Edns(record.rclass, version, bool(flags & EDNS_DO))


def parse_message(data: bytes) -> Message:
    """Every section of a message; bytes after the last record are ignored."""
    header = parse_header(data)
    offset = HEADER_SIZE
    questions = []
    for _ in range(header.qdcount):
        question, offset = _read_question(data, offset, header)
        questions.append(question)
    question_end = offset
    sections: list[list[Record]] = [[], [], []]
    for section, count in zip(
        sections, (header.ancount, header.nscount, header.arcount), strict=True
    ):
        for _ in range(count):
            record, offset = _read_record(data, offset, header)
            section.append(record)
    answers, authorities, additionals = sections
    opts = [r for r in additionals if r.rtype == TYPE_OPT]
    if len(opts) > 1:
        raise MalformedMessage(f"{len(opts)} OPT records", header)
    edns = _edns(opts[0], header) if opts else None
    return Message(
        header,
        tuple(questions),
        tuple(answers),
        tuple(authorities),
        tuple(r for r in additionals if r.rtype != TYPE_OPT),
        edns,
        question_end,
    )


def parse_query(data: bytes) -> Query:
    """A query a server can answer: exactly one question (a header with another count is
    malformed for us, as for ztunnel's server library)."""
    header = parse_header(data)
    if header.qdcount != 1:
        raise MalformedMessage(f"{header.qdcount} questions, expected 1", header)
    message = parse_message(data)
    return Query(header, message.questions[0], message.edns)


# -- writing -----------------------------------------------------------------------------


class _Writer:
    """A message being written: names compressed against every name written so far."""

    def __init__(self) -> None:
        self.buffer = bytearray(HEADER_SIZE)
        self._names: dict[Name, int] = {}

    def name(self, name: Name) -> None:
        for index in range(len(name)):
            suffix = lower(name[index:])
            known = self._names.get(suffix)
            if known is not None:
                self.buffer += struct.pack("!H", 0xC000 | known)
                return
            if len(self.buffer) <= _POINTER_LIMIT:
                self._names[suffix] = len(self.buffer)
            label = name[index]
            self.buffer.append(len(label))
            self.buffer += label
        self.buffer.append(0)

    def question(self, question: Question) -> None:
        self.name(question.name)
        self.buffer += _QUESTION_TAIL.pack(question.qtype, question.qclass)

    def record(self, record: Record) -> None:
        self.name(record.name)
        data = record.data
        if isinstance(data, ipaddress.IPv4Address | ipaddress.IPv6Address):
            rdata = data.packed
        elif isinstance(data, bytes):
            rdata = data
        else:
            start = len(self.buffer) + _RECORD_HEAD.size
            self.buffer += bytes(_RECORD_HEAD.size)
            self.name(data)
            _RECORD_HEAD.pack_into(
                self.buffer, start - _RECORD_HEAD.size, record.rtype, record.rclass,
                record.ttl, len(self.buffer) - start,
            )  # fmt: skip
            return
        self.buffer += _RECORD_HEAD.pack(record.rtype, record.rclass, record.ttl, len(rdata))
        self.buffer += rdata

    def cut(self, size: int) -> None:
        """Drops everything from `size` on (names written there are never pointed to again:
        only what follows a cut would)."""
        del self.buffer[size:]
        self._names = {name: at for name, at in self._names.items() if at < size}


def _opt_record(edns: Edns) -> bytes:
    flags = EDNS_DO if edns.dnssec_ok else 0
    ttl = (edns.version << 16) | flags
    return b"\x00" + _RECORD_HEAD.pack(TYPE_OPT, edns.payload_size, ttl, 0)


def _flags(request: Header, rcode: int, *, authoritative: bool, truncated: bool) -> int:
    flags = FLAG_QR | (request.opcode << 11) | FLAG_RA | (int(rcode) & 0xF)
    flags |= request.flags & (FLAG_RD | FLAG_CD)
    if authoritative:
        flags |= FLAG_AA
    if truncated:
        flags |= FLAG_TC
    return flags


def build_response(
    query: Query,
    rcode: int = Rcode.NOERROR,
    answers: Sequence[Record] = (),
    *,
    authoritative: bool = False,
    limit: int | None = None,
) -> bytes:
    """The answer to `query`. With `limit` (a UDP client's size), answers that do not fit
    are left out and TC is set, so the client asks again over TCP."""
    writer = _Writer()
    writer.question(query.question)
    question_end = len(writer.buffer)
    ends = []
    for record in answers:
        writer.record(record)
        ends.append(len(writer.buffer))
    opt = b""
    if query.edns is not None:
        # As ztunnel's handler: the client's version and DO bit, a payload of at least 512.
        opt = _opt_record(
            Edns(max(query.edns.payload_size, MIN_UDP_PAYLOAD), query.edns.version,
                 query.edns.dnssec_ok)
        )  # fmt: skip
    kept = len(ends)
    if limit is not None:
        while kept and ends[kept - 1] + len(opt) > limit:
            kept -= 1
        if kept < len(ends):
            writer.cut(ends[kept - 1] if kept else question_end)
    truncated = kept < len(ends)
    writer.buffer += opt
    flags = _flags(query.header, rcode, authoritative=authoritative, truncated=truncated)
    _HEADER.pack_into(writer.buffer, 0, query.header.id, flags, 1, kept, 0, 1 if opt else 0)
    return bytes(writer.buffer)


def error_response(header: Header, rcode: int, question: Question | None = None) -> bytes:
    """An answer carrying only `rcode` (FORMERR, NOTIMP, ...), for a request we could read
    the header of; the question is echoed when it could be read."""
    writer = _Writer()
    if question is not None:
        writer.question(question)
    flags = _flags(header, rcode, authoritative=False, truncated=False)
    _HEADER.pack_into(writer.buffer, 0, header.id, flags, 1 if question else 0, 0, 0, 0)
    return bytes(writer.buffer)


def build_query(
    id: int,
    name: Name,
    qtype: int,
    *,
    qclass: int = CLASS_IN,
    recursion_desired: bool = True,
    edns: Edns | None = None,
) -> bytes:
    """A query (clients, upstream tests)."""
    writer = _Writer()
    writer.question(Question(name, qtype, qclass))
    if edns is not None:
        writer.buffer += _opt_record(edns)
    flags = FLAG_RD if recursion_desired else 0
    _HEADER.pack_into(writer.buffer, 0, id, flags, 1, 0, 0, 1 if edns else 0)
    return bytes(writer.buffer)


def build_message(
    header: Header, questions: Iterable[Question], answers: Iterable[Record] = ()
) -> bytes:
    """Any message with these sections (fake upstreams in tests); counts come from the
    sections, not from `header`."""
    writer = _Writer()
    questions = tuple(questions)
    answers = tuple(answers)
    for question in questions:
        writer.question(question)
    for record in answers:
        writer.record(record)
    _HEADER.pack_into(writer.buffer, 0, header.id, header.flags, len(questions), len(answers),
                      0, 0)  # fmt: skip
    return bytes(writer.buffer)


def with_id(message: bytes, id: int) -> bytes:
    """The same message under another id (an upstream's answer goes back with the client's)."""
    if len(message) < 2:
        raise MalformedMessage(f"{len(message)} bytes, no id to replace")
    return struct.pack("!H", id) + message[2:]


def fit(message: Message, data: bytes, limit: int) -> bytes:
    """`data` (parsed as `message`) for a client taking at most `limit` bytes: as it is when
    it fits, else its header with TC set and only the question, so the client retries over
    TCP (RFC 2181 9)."""
    if len(data) <= limit:
        return data
    header = message.header
    flags = header.flags | FLAG_TC
    head = _HEADER.pack(header.id, flags, header.qdcount, 0, 0, 0)
    return head + data[HEADER_SIZE : message.question_end]

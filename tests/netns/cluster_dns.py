"""The cluster's DNS for the netns suites: a UDP server on the fabric address, port 53 (the
nameserver of every node's and pod's resolv.conf, `topology`), answering A queries from a table
and NXDOMAIN otherwise, and noting who asked what; and a client asking from inside a pod the
nameserver its resolv.conf names, as a pod's resolver does."""

from __future__ import annotations

import ipaddress
import itertools
import socket
import struct
import threading
from collections.abc import Mapping

from mesh_harness import IO_TIMEOUT

from ambient_fast.topology import Topology
from ambient_fast.ztunnel.dns.forwarder import DNS_PORT, ResolvConf
from ambient_fast.ztunnel.dns.message import (
    FLAG_QR,
    FLAG_RA,
    TYPE_A,
    Header,
    MalformedMessage,
    Message,
    Rcode,
    Record,
    build_message,
    build_query,
    name_from_text,
    parse_message,
    parse_query,
)

_ids = itertools.count(0x100)


class ClusterDns:
    """`names`: name (no trailing dot, lower case) -> IPv4 address."""

    def __init__(self, topology: Topology, names: Mapping[str, str]) -> None:
        self._names = dict(names)
        self.seen: list[tuple[str, str]] = []  # (client IP, asked name)
        with topology.entered(topology.fabric_netns):
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((topology.fabric_ip, DNS_PORT))
        self._sock.settimeout(0.2)  # how soon `close` is noticed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="cluster dns", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, client = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = parse_query(data)
            except MalformedMessage:
                continue
            name = b".".join(query.question.name).decode().lower()
            self.seen.append((client[0], name))
            flags = FLAG_QR | FLAG_RA
            address = self._names.get(name)
            if address is None or query.question.qtype != TYPE_A:
                reply = build_message(
                    Header(query.header.id, flags | Rcode.NXDOMAIN), [query.question]
                )
            else:
                record = Record(query.question.name, TYPE_A, 60, ipaddress.IPv4Address(address))
                reply = build_message(Header(query.header.id, flags), [query.question], [record])
            self._sock.sendto(reply, client)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(IO_TIMEOUT)
        self._sock.close()


def resolve(topology: Topology, pod: str, name: str, *, tcp: bool = False) -> Message:
    """One A query from inside `pod` to the nameserver of its resolv.conf, over UDP or TCP."""
    netns = topology.pods[pod].netns
    nameserver = ResolvConf.load(topology.resolv_conf(netns)).nameservers[0]
    query_id = next(_ids)
    query = build_query(query_id, name_from_text(name), TYPE_A)
    with topology.entered(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(IO_TIMEOUT)
        if tcp:
            sock.connect((nameserver, DNS_PORT))
            sock.sendall(struct.pack("!H", len(query)) + query)
            stream = sock.makefile("rb")
            (size,) = struct.unpack("!H", stream.read(2))
            data, sender = stream.read(size), sock.getpeername()
        else:
            sock.sendto(query, (nameserver, DNS_PORT))
            data, sender = sock.recvfrom(65535)
    answer = parse_message(data)
    # The answer comes back as if from the nameserver asked, whoever gave it.
    assert (sender, answer.header.id) == ((nameserver, DNS_PORT), query_id), (sender, answer)
    return answer

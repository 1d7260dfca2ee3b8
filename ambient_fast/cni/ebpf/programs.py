"""The two capture programs, assembled in code (no compiler at build or run time).

`egress` (tcx egress of the pod's interfaces) decides which of the pod's TCP packets stay in
the pod: a new connection's SYN, and any packet whose other end is a socket in this
namespace (the proxy's side of a captured connection, or its dial from the client's IP). It
marks them 0x111 and turns them around into the loopback device's ingress; the 0x111 policy
route (`rules.PolicyRoute`) then delivers them locally although their destination is not
the pod's. Everything else leaves as before: the proxy's own packets (mark 0x539), packets to
the probe source, and connections the pod had before it was captured.

`ingress` (tcx ingress of the pod's interfaces and of its loopback device) hands each new
connection (a SYN) to one of the node proxy's listeners with bpf_sk_assign: a SYN turned
around by `egress` to the outbound listener (the original destination stays the accepted
socket's local address, as with TPROXY); a SYN from outside to the HBONE listener for its
port and to the plaintext listener for any other, unless it comes from the kubelet's probe
source. A missing listener drops the SYN: capture never falls back to bypassing the proxy.
Since Linux 6.5 bpf_sk_assign takes SO_REUSEPORT listeners and picks within their group.

Both read the pod's `Settings` from a one-entry array map; the listeners come from a SOCKMAP
indexed by `ListenerRole` that the node proxy fills (`listeners.py`). Little-endian machines
(x86_64, aarch64) only.
"""

from __future__ import annotations

import enum
import socket
import struct
from dataclasses import dataclass

from ambient_fast.bpf.insn import (
    Alu,
    Cond,
    Item,
    Label,
    LoadMap,
    Reg,
    Size,
    alu64,
    call,
    exit_,
    goto,
    jump,
    load,
    mov,
    store,
)
from ambient_fast.cni.rules import MARK_MASK, PROXY_MARK, REDIRECTED_MARK

R0, R1, R2, R3, R4, R5, R6, R7, R8, R10 = (
    Reg.R0, Reg.R1, Reg.R2, Reg.R3, Reg.R4, Reg.R5, Reg.R6, Reg.R7, Reg.R8, Reg.R10,
)  # fmt: skip

# Kernel object names (at most 15 bytes): how the agent and the node proxy recognise ours.
EGRESS_PROGRAM, INGRESS_PROGRAM = "af_egress", "af_ingress"
SETTINGS_MAP, LISTENERS_MAP = "af_settings", "af_listeners"
# Helper ids (linux/bpf.h __BPF_FUNC_MAPPER order).
MAP_LOOKUP_ELEM, SKB_STORE_BYTES, REDIRECT, SKB_LOAD_BYTES = 1, 9, 23, 26
SK_RELEASE, SKC_LOOKUP_TCP, SK_ASSIGN = 86, 99, 124
# struct __sk_buff and struct bpf_sock field offsets (linux/bpf.h).
SKB_MARK, SKB_PROTOCOL, SKB_IFINDEX = 8, 16, 40
SOCK_STATE = 72
# tcx verdicts (linux/bpf.h): NEXT lets the next program (or the stack) decide.
TCX_NEXT, TCX_PASS, TCX_DROP = -1, 0, 2
BPF_F_INGRESS = 1
BPF_F_CURRENT_NETNS = -1
# skb->protocol is big-endian; the context holds it in a host-order u32.
ETH_P_IP_IN_SKB = socket.htons(0x0800)
ETH_HLEN, IPV4_HEADER, TCP_FLAGS_END = 14, 20, 14
TCP_SYN, TCP_ACK = 0x02, 0x10
TCP_LISTEN = 10  # include/net/tcp_states.h
LOOPBACK_IFINDEX = 1  # the loopback device is the first of every namespace

# Stack layout: offsets from the frame pointer R10, and sizes.
ROLE_KEY, SETTINGS_KEY = -4, -8  # 4 bytes each
IP_HEADER = -32  # 20 bytes: version/IHL at +0, protocol at +9, saddr at +12, daddr at +16
TCP_HEAD = -48  # 14 bytes: source port at +0, destination port at +2, flags at +13
TUPLE = -64  # struct bpf_sock_tuple.ipv4: saddr, daddr, sport, dport (12 bytes)
ZERO_MAC = -72  # 6 bytes in an 8-byte slot
STACK = {ROLE_KEY: 4, SETTINGS_KEY: 4, IP_HEADER: IPV4_HEADER, TCP_HEAD: TCP_FLAGS_END,
         TUPLE: 12, ZERO_MAC: 8}  # fmt: skip


class ListenerRole(enum.IntEnum):
    """The listener map's index: which of the node proxy's in-pod listeners sits there."""

    OUTBOUND = 0  # 15001
    HBONE = 1  # 15008
    PLAINTEXT = 2  # 15006


# The settings value: the probe source and the HBONE port in network order (as packets have
# them; the port in a 4-byte slot), then the agent's own record (not read by the programs).
_SETTINGS = struct.Struct("<4s2s2x4sI")
SETTINGS_SIZE = _SETTINGS.size
SETTINGS_PROBE, SETTINGS_HBONE_PORT = 0, 4


@dataclass(frozen=True, slots=True)
class Settings:
    """The value of the settings map (one entry, key 0)."""

    probe_source: str | None  # None: no probe exemption
    hbone_port: int
    pod_ip: str
    # net.ipv4.conf.lo.accept_local before capture, restored on removal.
    accept_local_before: int

    def encode(self) -> bytes:
        probe = socket.inet_aton(self.probe_source) if self.probe_source else bytes(4)
        return _SETTINGS.pack(
            probe, struct.pack("!H", self.hbone_port), socket.inet_aton(self.pod_ip),
            self.accept_local_before,
        )  # fmt: skip

    @classmethod
    def decode(cls, raw: bytes) -> Settings:
        probe, port, pod_ip, accept_local = _SETTINGS.unpack(raw[:SETTINGS_SIZE])
        return cls(
            socket.inet_ntoa(probe) if any(probe) else None,
            struct.unpack("!H", port)[0],
            socket.inet_ntoa(pod_ip),
            accept_local,
        )


def _settings_into(dst: Reg, missing: str) -> list[Item]:
    """dst = &settings[0], or a jump to `missing` (never taken: an array has index 0)."""
    return [
        store(Size.W, R10, SETTINGS_KEY, 0),
        LoadMap(R1, SETTINGS_MAP),
        mov(R2, R10),
        alu64(Alu.ADD, R2, SETTINGS_KEY),
        call(MAP_LOOKUP_ELEM),
        jump(Cond.EQ, R0, 0, missing),
        mov(dst, R0),
    ]


def _tcp_headers(other: str) -> list[Item]:
    """R6 = the skb (from R1); the IPv4 header at IP_HEADER and the TCP ports and flags at
    TCP_HEAD on the stack; R7 = &settings. Anything but IPv4 TCP jumps to `other`."""
    return [
        mov(R6, R1),
        load(Size.W, R2, R6, SKB_PROTOCOL),
        jump(Cond.NE, R2, ETH_P_IP_IN_SKB, other),
        mov(R1, R6),
        mov(R2, ETH_HLEN),
        mov(R3, R10),
        alu64(Alu.ADD, R3, IP_HEADER),
        mov(R4, IPV4_HEADER),
        call(SKB_LOAD_BYTES),
        jump(Cond.NE, R0, 0, other),
        load(Size.B, R2, R10, IP_HEADER + 9),
        jump(Cond.NE, R2, socket.IPPROTO_TCP, other),
        # Ports and flags of the TCP header, after the IP header's IHL * 4 bytes.
        load(Size.B, R2, R10, IP_HEADER),
        alu64(Alu.AND, R2, 0x0F),
        alu64(Alu.LSH, R2, 2),
        alu64(Alu.ADD, R2, ETH_HLEN),
        mov(R1, R6),
        mov(R3, R10),
        alu64(Alu.ADD, R3, TCP_HEAD),
        mov(R4, TCP_FLAGS_END),
        call(SKB_LOAD_BYTES),
        jump(Cond.NE, R0, 0, other),
        *_settings_into(R7, other),
    ]


def _syn_only(dst: Reg) -> list[Item]:
    """dst = the TCP flags' SYN and ACK bits (TCP_SYN alone: a new connection)."""
    return [
        load(Size.B, dst, R10, TCP_HEAD + 13),
        alu64(Alu.AND, dst, TCP_SYN | TCP_ACK),
    ]


def egress() -> list[Item]:
    """The tcx egress program of the pod's interfaces."""
    return [
        *_tcp_headers("next"),
        load(Size.W, R2, R6, SKB_MARK),
        alu64(Alu.AND, R2, MARK_MASK),
        jump(Cond.EQ, R2, PROXY_MARK, "next"),  # the proxy's own packets
        load(Size.W, R2, R7, SETTINGS_PROBE),
        load(Size.W, R3, R10, IP_HEADER + 16),
        jump(Cond.EQ, R3, R2, "next"),  # to the kubelet's probe source
        *_syn_only(R2),
        jump(Cond.EQ, R2, TCP_SYN, "capture"),  # a new connection
        # An existing one stays in the pod when a socket here is its other end.
        load(Size.W, R2, R10, IP_HEADER + 12),
        store(Size.W, R10, TUPLE, R2),
        load(Size.W, R2, R10, IP_HEADER + 16),
        store(Size.W, R10, TUPLE + 4, R2),
        load(Size.W, R2, R10, TCP_HEAD),
        store(Size.W, R10, TUPLE + 8, R2),
        mov(R1, R6),
        mov(R2, R10),
        alu64(Alu.ADD, R2, TUPLE),
        mov(R3, 12),
        mov(R4, BPF_F_CURRENT_NETNS),
        mov(R5, 0),
        call(SKC_LOOKUP_TCP),
        jump(Cond.EQ, R0, 0, "next"),
        load(Size.W, R7, R0, SOCK_STATE),
        mov(R1, R0),
        call(SK_RELEASE),
        jump(Cond.EQ, R7, TCP_LISTEN, "next"),  # only a listener: not a connection of ours
        Label("capture"),
        load(Size.W, R2, R6, SKB_MARK),
        alu64(Alu.AND, R2, ~MARK_MASK),
        alu64(Alu.OR, R2, REDIRECTED_MARK),
        store(Size.W, R6, SKB_MARK, R2),
        # Into the loopback device, addressed to its (all-zero) MAC so it is for this host.
        store(Size.DW, R10, ZERO_MAC, 0),
        mov(R1, R6),
        mov(R2, 0),
        mov(R3, R10),
        alu64(Alu.ADD, R3, ZERO_MAC),
        mov(R4, 6),
        mov(R5, 0),
        call(SKB_STORE_BYTES),
        jump(Cond.NE, R0, 0, "next"),
        mov(R1, LOOPBACK_IFINDEX),
        mov(R2, BPF_F_INGRESS),
        call(REDIRECT),
        exit_(),
        Label("next"),
        mov(R0, TCX_NEXT),
        exit_(),
    ]


def ingress() -> list[Item]:
    """The tcx ingress program of the pod's interfaces and its loopback device."""
    return [
        *_tcp_headers("next"),
        *_syn_only(R2),
        jump(Cond.NE, R2, TCP_SYN, "next"),  # established connections find their sockets
        load(Size.W, R2, R6, SKB_IFINDEX),
        jump(Cond.NE, R2, LOOPBACK_IFINDEX, "inbound"),
        # Loopback: the pod's own traffic, unless `egress` turned it around.
        load(Size.W, R2, R6, SKB_MARK),
        alu64(Alu.AND, R2, MARK_MASK),
        jump(Cond.NE, R2, REDIRECTED_MARK, "next"),
        store(Size.W, R10, ROLE_KEY, ListenerRole.OUTBOUND),
        goto("assign"),
        Label("inbound"),
        load(Size.W, R2, R7, SETTINGS_PROBE),
        load(Size.W, R3, R10, IP_HEADER + 12),
        jump(Cond.EQ, R3, R2, "next"),  # the kubelet's probes reach the pod as they are
        load(Size.H, R2, R10, TCP_HEAD + 2),  # the destination port, in network order
        load(Size.W, R3, R7, SETTINGS_HBONE_PORT),
        store(Size.W, R10, ROLE_KEY, ListenerRole.PLAINTEXT),
        jump(Cond.NE, R2, R3, "assign"),
        store(Size.W, R10, ROLE_KEY, ListenerRole.HBONE),
        Label("assign"),
        LoadMap(R1, LISTENERS_MAP),
        mov(R2, R10),
        alu64(Alu.ADD, R2, ROLE_KEY),
        call(MAP_LOOKUP_ELEM),
        jump(Cond.EQ, R0, 0, "drop"),  # the proxy is not listening (yet)
        mov(R7, R0),
        mov(R1, R6),
        mov(R2, R7),
        mov(R3, 0),
        call(SK_ASSIGN),
        mov(R8, R0),
        mov(R1, R7),
        call(SK_RELEASE),
        jump(Cond.NE, R8, 0, "drop"),
        mov(R0, TCX_PASS),
        exit_(),
        Label("drop"),
        mov(R0, TCX_DROP),
        exit_(),
        Label("next"),
        mov(R0, TCX_NEXT),
        exit_(),
    ]

"""eBPF capture (`cni/ebpf`) in real namespaces, without ztunnel: the verifier accepts the
programs and they do what they are for on crafted packets; in a pod of a one-node topology,
installing twice leaves one of each piece, removing (or a failed install) leaves nothing of
ours, connections the pod had keep working, and new ones reach the listeners registered in
the pod's map, or nothing, never the application behind the proxy's back. The end-to-end
suite with the agent and ztunnel is test_two_node_mesh.py, run in both capture modes."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ambient_fast.bpf import syscall
from ambient_fast.bpf.insn import Reg, assemble, exit_, mov
from ambient_fast.cni.ebpf import EbpfCapture, EbpfUnavailable, attached, programs
from ambient_fast.cni.ebpf.attached import Hook
from ambient_fast.cni.ebpf.listeners import ListenerMap
from ambient_fast.cni.ebpf.programs import ListenerRole, Settings
from ambient_fast.cni.rules import DEFAULT_PROBE_SOURCE, PROXY_MARK, REDIRECTED_MARK
from ambient_fast.netns import named_path
from ambient_fast.topology import NodeSpec, PodSpec, Topology, build
from ambient_fast.topology.commands import run
from ambient_fast.ztunnel.sockets import listening_socket_everywhere

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("nsenter")),
    reason="needs root, iproute2 and nsenter",
)

NODE = NodeSpec("node-a", "10.244.1.0/24")
POD = PodSpec("pod", "node-a", "10.244.1.10")
PEER = PodSpec("peer", "node-a", "10.244.1.11")
APP_PORT = 8080
OUTBOUND, HBONE, PLAINTEXT = 15001, 15008, 15006
TIMEOUT = 5.0
DROPPED = 1.0  # a SYN dropped is retried after 1 s: a connect still pending then never got in
IN, OUT = syscall.AttachType.TCX_INGRESS, syscall.AttachType.TCX_EGRESS
LOOPBACK, ETH0 = 1, 2  # the pod's devices (the topology gives each pod eth0 after lo)
COMPLETE = {
    Hook(programs.INGRESS_PROGRAM, LOOPBACK, IN),
    Hook(programs.INGRESS_PROGRAM, ETH0, IN),
    Hook(programs.EGRESS_PROGRAM, ETH0, OUT),
}


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    with build([NODE], [POD, PEER]) as topology:
        yield topology


@pytest.fixture
def capture(topology: Topology) -> Iterator[EbpfCapture]:
    capture = EbpfCapture()
    try:
        yield capture
    finally:
        capture.remove(pod_path(topology))


def pod_path(topology: Topology) -> str:
    return named_path(topology.pods[POD.name].netns)


@dataclass(frozen=True)
class Pieces:
    """Everything of ours in the pod's namespace, counted."""

    programs: dict[Hook, int]  # ours per hook
    all_programs: int  # anyone's, on every hook of every device
    maps: frozenset[str]
    rules: int
    route: bool
    accept_local: int


def pieces(topology: Topology) -> Pieces:
    netns = topology.pods[POD.name].netns
    with topology.entered(netns):
        found = attached.find()
        everything = sum(
            len(syscall.prog_query(ifindex, hook))
            for ifindex in (LOOPBACK, ETH0)
            for hook in (IN, OUT)
        )
        with open("/proc/sys/net/ipv4/conf/lo/accept_local", encoding="ascii") as setting:
            accept_local = int(setting.read())
    return Pieces(
        {hook: len(ids) for hook, ids in found.programs.items()},
        everything,
        frozenset(found.maps),
        run("ip", "-n", netns, "rule").count("lookup 100"),
        "local default" in run("ip", "-n", netns, "route", "show", "table", "all"),
        accept_local,
    )


NOTHING = Pieces({}, 0, frozenset(), 0, False, 0)


# -- the programs ----------------------------------------------------------------------------


def test_the_verifier_accepts_both_programs() -> None:
    EbpfCapture().check_supported()


def test_a_refused_program_reports_the_verifiers_reason_and_the_way_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(programs, "ingress", lambda: [mov(Reg.R0, Reg.R2), exit_()])
    with pytest.raises(EbpfUnavailable) as refused:
        EbpfCapture().check_supported()
    message = str(refused.value)
    assert "loading the af_ingress program" in message
    assert "R2 !read_ok" in message  # the verifier's own words
    assert "use --redirect=iptables" in message


@contextlib.contextmanager
def loaded_programs() -> Iterator[tuple[int, int]]:
    settings = syscall.map_create(syscall.MapType.ARRAY, 4, programs.SETTINGS_SIZE, 1, "s")
    listeners = syscall.map_create(syscall.MapType.SOCKMAP, 4, 8, len(ListenerRole), "l")
    value = Settings(DEFAULT_PROBE_SOURCE, HBONE, POD.ip, 0).encode()
    syscall.map_update(settings, struct.pack("<I", 0), value)
    maps = {programs.SETTINGS_MAP: settings, programs.LISTENERS_MAP: listeners}
    fds = [
        syscall.prog_load(syscall.ProgType.SCHED_CLS, assemble(items(), maps), name, "Apache-2.0")
        for name, items in (("egress", programs.egress), ("ingress", programs.ingress))
    ]
    try:
        yield fds[0], fds[1]
    finally:
        for fd in (*fds, settings, listeners):
            os.close(fd)


def frame(flags: int, source: str = POD.ip, destination: str = PEER.ip) -> bytes:
    """An Ethernet frame with an IPv4 TCP header, to port 8080."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, socket.IPPROTO_TCP, 0,
                     socket.inet_aton(source), socket.inet_aton(destination))  # fmt: skip
    tcp = struct.pack("!HHIIBBHHH", 40000, APP_PORT, 1, 0, 0x50, flags, 65535, 0, 0)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp


SYN, ACK = 0x02, 0x10
TC_ACT_REDIRECT, TCX_NEXT, TCX_DROP = 7, -1, 2


def test_egress_turns_new_connections_around_and_lets_the_rest_go() -> None:
    with loaded_programs() as (egress, _):
        turned = syscall.prog_test_run(egress, frame(SYN))
        assert turned.verdict == TC_ACT_REDIRECT
        assert turned.mark == REDIRECTED_MARK
        assert turned.packet[:6] == bytes(6)  # to the loopback device's address
        assert turned.packet[6:] == frame(SYN)[6:]
        # No socket here is the other end of this one: it was the pod's before capture.
        assert syscall.prog_test_run(egress, frame(ACK)).verdict == TCX_NEXT
        assert syscall.prog_test_run(egress, frame(SYN), mark=PROXY_MARK).verdict == TCX_NEXT
        to_probe = frame(SYN, destination=DEFAULT_PROBE_SOURCE)
        assert syscall.prog_test_run(egress, to_probe).verdict == TCX_NEXT


def test_ingress_on_loopback_takes_only_turned_around_connections() -> None:
    with loaded_programs() as (_, ingress):  # the test run's device is loopback
        # The proxy's outbound listener is not registered: dropped, never let through.
        turned = syscall.prog_test_run(ingress, frame(SYN), mark=REDIRECTED_MARK)
        assert turned.verdict == TCX_DROP
        assert syscall.prog_test_run(ingress, frame(SYN)).verdict == TCX_NEXT
        assert syscall.prog_test_run(ingress, frame(ACK), mark=REDIRECTED_MARK).verdict == TCX_NEXT


# -- install, again, remove ------------------------------------------------------------------


def test_install_puts_in_one_of_each_piece_and_again_changes_nothing(
    topology: Topology, capture: EbpfCapture
) -> None:
    capture.install(pod_path(topology), POD.ip)
    first = pieces(topology)
    with topology.entered(topology.pods[POD.name].netns):
        maps = attached.find().maps
    assert first == Pieces(
        programs={hook: 1 for hook in COMPLETE},
        all_programs=3,
        maps=frozenset({programs.SETTINGS_MAP, programs.LISTENERS_MAP}),
        rules=1,
        route=True,
        accept_local=1,
    )
    assert capture.is_installed(pod_path(topology))
    capture.install(pod_path(topology), POD.ip)
    assert pieces(topology) == first
    with topology.entered(topology.pods[POD.name].netns):
        assert attached.find().maps == maps  # the same maps: the proxy's listeners stay


def test_remove_leaves_nothing_of_ours(topology: Topology, capture: EbpfCapture) -> None:
    capture.install(pod_path(topology), POD.ip)
    capture.remove(pod_path(topology))
    assert pieces(topology) == NOTHING
    assert not capture.is_installed(pod_path(topology))
    capture.remove(pod_path(topology))  # nothing there: fine


def test_a_failed_install_leaves_nothing(
    topology: Topology, capture: EbpfCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    attach = syscall.prog_attach
    calls = []

    def second_fails(ifindex: int, prog_fd: int, hook: syscall.AttachType) -> None:
        calls.append(ifindex)
        if len(calls) == 2:
            raise syscall.BpfError(1, "attach (made to fail)")
        attach(ifindex, prog_fd, hook)

    monkeypatch.setattr(syscall, "prog_attach", second_fails)
    with pytest.raises(EbpfUnavailable, match="made to fail"):
        capture.install(pod_path(topology), POD.ip)
    assert pieces(topology) == NOTHING


def test_removing_a_namespace_that_is_gone_is_quiet(capture: EbpfCapture) -> None:
    gone = named_path("af-no-such-namespace")
    capture.remove(gone)
    assert not capture.is_installed(gone)


# -- traffic ----------------------------------------------------------------------------------


@contextlib.contextmanager
def server(topology: Topology, pod: str, port: int) -> Iterator[socket.socket]:
    with topology.entered(topology.pods[pod].netns):
        listener = socket.create_server(("0.0.0.0", port))
    with listener:
        listener.settimeout(TIMEOUT)
        yield listener


def dial(
    topology: Topology, namespace: str, ip: str, port: int, source: str | None = None
) -> socket.socket:
    with topology.entered(namespace):
        bind = None if source is None else (source, 0)
        return socket.create_connection((ip, port), timeout=TIMEOUT, source_address=bind)


def accepted_by(listener: socket.socket) -> tuple[str, tuple[str, int]]:
    """(peer IP, local address) of the next connection, IPv4-mapped addresses unmapped."""
    conn, peer = listener.accept()
    with conn:
        local = conn.getsockname()
    return unmapped(peer[0]), (unmapped(local[0]), int(local[1]))


def unmapped(ip: str) -> str:
    parsed = ipaddress.ip_address(ip)
    mapped = parsed.ipv4_mapped if isinstance(parsed, ipaddress.IPv6Address) else None
    return str(mapped or parsed)


def test_connections_the_pod_had_keep_working(topology: Topology, capture: EbpfCapture) -> None:
    with server(topology, PEER.name, APP_PORT) as peer_app:
        before = dial(topology, topology.pods[POD.name].netns, PEER.ip, APP_PORT)
        with before:
            conn, _ = peer_app.accept()
            with conn:
                capture.install(pod_path(topology), POD.ip)
                before.sendall(b"out")
                assert conn.recv(3) == b"out"
                conn.sendall(b"back")
                assert before.recv(4) == b"back"


def test_without_the_proxys_listeners_new_connections_get_nowhere(
    topology: Topology, capture: EbpfCapture
) -> None:
    capture.install(pod_path(topology), POD.ip)
    with server(topology, PEER.name, APP_PORT), server(topology, POD.name, APP_PORT) as pod_app:
        for namespace, ip in ((POD.name, PEER.ip), (PEER.name, POD.ip)):
            with topology.entered(topology.pods[namespace].netns):
                attempt = socket.socket()
            with attempt:
                attempt.settimeout(DROPPED)
                with pytest.raises(TimeoutError):
                    attempt.connect((ip, APP_PORT))
        pod_app.settimeout(0.1)
        with pytest.raises(TimeoutError):
            pod_app.accept()  # the application never saw the inbound one


@contextlib.contextmanager
def proxy_listeners(topology: Topology) -> Iterator[dict[ListenerRole, socket.socket]]:
    """The node proxy's in-pod listeners as ztunnel opens and registers them (transparent,
    marked, SO_REUSEPORT)."""
    with topology.entered(topology.pods[POD.name].netns):
        listeners = {
            role: listening_socket_everywhere(port, transparent=True, mark=PROXY_MARK,
                                              reuse_port=True)
            for role, port in ((ListenerRole.OUTBOUND, OUTBOUND), (ListenerRole.HBONE, HBONE),
                               (ListenerRole.PLAINTEXT, PLAINTEXT))
        }  # fmt: skip
        listener_map = ListenerMap.of_current_netns()
        assert listener_map is not None
        with listener_map:
            for role, listener in listeners.items():
                listener.setblocking(True)
                listener.settimeout(TIMEOUT)
                listener_map.register(role, listener)
    try:
        yield listeners
    finally:
        for listener in listeners.values():
            listener.close()


def test_new_connections_reach_the_registered_listeners_with_their_addresses(
    topology: Topology, capture: EbpfCapture
) -> None:
    capture.install(pod_path(topology), POD.ip)
    pod_ns, peer_ns = topology.pods[POD.name].netns, topology.pods[PEER.name].netns
    with proxy_listeners(topology) as listeners:
        with dial(topology, pod_ns, PEER.ip, APP_PORT):
            # Outbound: the original destination is the accepted socket's local address.
            assert accepted_by(listeners[ListenerRole.OUTBOUND]) == (POD.ip, (PEER.ip, APP_PORT))
        with dial(topology, peer_ns, POD.ip, HBONE):
            assert accepted_by(listeners[ListenerRole.HBONE]) == (PEER.ip, (POD.ip, HBONE))
        with dial(topology, peer_ns, POD.ip, APP_PORT):
            assert accepted_by(listeners[ListenerRole.PLAINTEXT]) == (PEER.ip, (POD.ip, APP_PORT))


def test_the_probe_source_reaches_the_application_directly(
    topology: Topology, capture: EbpfCapture
) -> None:
    capture.install(pod_path(topology), POD.ip)
    node = topology.nodes[NODE.name].netns
    run("ip", "-n", node, "addr", "add", f"{DEFAULT_PROBE_SOURCE}/32", "dev", "lo")
    try:
        with proxy_listeners(topology), server(topology, POD.name, APP_PORT) as pod_app:
            with dial(topology, node, POD.ip, APP_PORT, DEFAULT_PROBE_SOURCE) as probe:
                conn, (peer, _) = pod_app.accept()
                with conn:
                    probe.sendall(b"ok?")
                    assert conn.recv(3) == b"ok?"
                    conn.sendall(b"ok")  # the reply leaves the pod: not turned around
                    assert probe.recv(2) == b"ok"
            assert peer == DEFAULT_PROBE_SOURCE
    finally:
        run("ip", "-n", node, "addr", "del", f"{DEFAULT_PROBE_SOURCE}/32", "dev", "lo")

"""Two pod network namespaces joined by a veth pair, the redirect rules of reference 04, and a
way for the harness's thread to step into a namespace (sockets it opens there stay there).

Everything is torn down by the context managers, also on failure: deleting a namespace
removes its veth end (and so the peer), its addresses and its iptables rules.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from perf.tools import PerfError, tail

CLONE_NEWNET = 0x40000000
# Marks of istio-cni (reference 04): 0x539 = the proxy's own sockets, 0x111 = redirected.
PROXY_MARK = 0x539
REDIRECTED_MARK = 0x111
LOCAL_ROUTE_TABLE = 100
_COMMAND_TIMEOUT_S = 10.0
_libc = ctypes.CDLL(None, use_errno=True)


def run(*argv: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise PerfError(f"{' '.join(argv)}: exit {done.returncode}", tail(done.stderr))
    return done.stdout


@dataclass(frozen=True, slots=True)
class PodPair:
    """The client pod's and the server pod's namespaces and addresses."""

    client_ns: str
    server_ns: str
    client_ip: str
    server_ip: str

    def exec_argv(self, namespace: str, argv: list[str]) -> list[str]:
        # `ip netns exec` execs in place: the child keeps the pid the harness waits on.
        return ["ip", "netns", "exec", namespace, *argv]


@contextlib.contextmanager
def pod_pair(client_ip: str = "10.98.0.1", server_ip: str = "10.98.0.2") -> Iterator[PodPair]:
    tag = uuid.uuid4().hex[:6]
    pair = PodPair(f"af-perf-client-{tag}", f"af-perf-server-{tag}", client_ip, server_ip)
    created: list[str] = []
    try:
        for ns in (pair.client_ns, pair.server_ns):
            run("ip", "netns", "add", ns)
            created.append(ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        veth_c, veth_s = f"afc{tag}", f"afs{tag}"
        run("ip", "link", "add", veth_c, "netns", pair.client_ns, "type", "veth",
            "peer", "name", veth_s, "netns", pair.server_ns)  # fmt: skip
        for ns, dev, ip in (
            (pair.client_ns, veth_c, client_ip),
            (pair.server_ns, veth_s, server_ip),
        ):
            run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
        yield pair
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


# istio-cni's chain; the port redirect uses it too, so `redirected_connections` counts either.
REDIRECT_CHAIN = "ISTIO_OUTPUT"


def outbound_redirect_rules(outbound_port: int) -> str:
    """The nat half of istio-cni's in-pod rules: the pod's TCP egress to the outbound port,
    except loopback and the proxy's own marked connections (reference 04)."""
    return "\n".join(
        [
            "*nat",
            ":ISTIO_OUTPUT - [0:0]",
            "-A OUTPUT -j ISTIO_OUTPUT",
            "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT",
            f"-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark {PROXY_MARK:#x}/0xfff "
            f"-j REDIRECT --to-ports {outbound_port}",
            "COMMIT",
            "",
        ]
    )


def port_redirect_rules(ip: str, port: int, to_port: int) -> str:
    """Only the pod's TCP egress to `ip`:`port`, to local `to_port`: a proxy that marks
    nothing can still dial onwards to another address or port."""
    return "\n".join(
        [
            "*nat",
            ":ISTIO_OUTPUT - [0:0]",
            "-A OUTPUT -j ISTIO_OUTPUT",
            f"-A ISTIO_OUTPUT -d {ip}/32 -p tcp --dport {port} -j REDIRECT --to-ports {to_port}",
            "COMMIT",
            "",
        ]
    )


# The inbound proxy dials the pod from the client's IP (IP_TRANSPARENT): the pod's replies
# must come back to the proxy, not leave through the veth. istio-cni's connmark + local table.
_INBOUND_RETURN_RULES = "\n".join(
    [
        "*mangle",
        f"-A PREROUTING -m mark --mark {PROXY_MARK:#x}/0xfff "
        f"-j CONNMARK --set-xmark {REDIRECTED_MARK:#x}/0xfff",
        f"-A OUTPUT -m connmark --mark {REDIRECTED_MARK:#x}/0xfff "
        "-j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff",
        "COMMIT",
        "",
    ]
)


def apply_rules(namespace: str, rules: str) -> None:
    run("ip", "netns", "exec", namespace, "iptables-restore", "--noflush", stdin=rules)


def remove_rules(namespace: str, table: str = "nat") -> None:
    # With iptables-nft an emptied table keeps no hook: the pod's traffic skips conntrack again.
    run("ip", "netns", "exec", namespace, "iptables", "-t", table, "-F")
    run("ip", "netns", "exec", namespace, "iptables", "-t", table, "-X")


def _return_route(action: str) -> tuple[list[str], list[str]]:
    return (
        ["rule", action, "fwmark", f"{REDIRECTED_MARK:#x}/0xfff",
         "pref", "32764", "lookup", str(LOCAL_ROUTE_TABLE)],
        ["route", action, "local", "0.0.0.0/0", "dev", "lo", "table", str(LOCAL_ROUTE_TABLE)],
    )  # fmt: skip


@contextlib.contextmanager
def inbound_return_path(namespace: str) -> Iterator[None]:
    """The return path below and its route, in place until exit."""
    for argv in _return_route("add"):
        run("ip", "-n", namespace, *argv)
    apply_rules(namespace, _INBOUND_RETURN_RULES)
    try:
        yield
    finally:
        remove_rules(namespace, "mangle")
        for argv in _return_route("del"):
            run("ip", "-n", namespace, *argv)


def redirected_connections(namespace: str) -> int:
    """Packets the REDIRECT rule matched (one per redirected connection: its SYN)."""
    listing = run("ip", "netns", "exec", namespace,
                  "iptables", "-t", "nat", "-L", REDIRECT_CHAIN, "-v", "-x", "-n")  # fmt: skip
    for line in listing.splitlines():
        if "REDIRECT" in line:
            return int(line.split()[0])
    return 0


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextlib.contextmanager
def inside(namespace: str) -> Iterator[None]:
    """The calling thread in `namespace` until exit (sockets opened meanwhile live there)."""
    with (
        open("/proc/thread-self/ns/net", "rb") as home,
        open(f"/run/netns/{namespace}", "rb") as ns,
    ):
        _setns(ns.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())

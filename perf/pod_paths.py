"""The paths from the client pod to the server pod that `perf ztunnel` compares.

A route opens its chain to a backend port in the server pod and yields the (host, port) the
client dials; leaving it stops the chain's own processes and removes its rules, so the next
path finds both pods as bare as `direct` does. The ztunnels outlive their route (they start
once per run), the other chains start each time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from perf.anchors import stunnel_client_config, stunnel_server_config
from perf.measure import Latency
from perf.netns import (
    PodPair,
    apply_rules,
    inbound_return_path,
    outbound_redirect_rules,
    port_redirect_rules,
    redirected_connections,
    remove_rules,
)
from perf.processes import running
from perf.scenarios import Workspace
from perf.tools import tool_path
from perf.ztunnels import OUTBOUND_PORT

# Fixed ports: each pod is a fresh namespace, nothing else listens there.
STUNNEL_SERVER_PORT = 7443
STUNNEL_CLIENT_PORT = 7000
RELAY_A_PORT = 7001  # client pod, 127.0.0.1: where a nat REDIRECT in OUTPUT delivers
RELAY_B_PORT = 7444  # server pod, its own IP: relay A's upstream, as 15008 is ztunnel A's

Route = Callable[[Workspace, PodPair, int], AbstractContextManager[tuple[str, int]]]
Measured = Callable[[], Latency]


def _as_is(measured: Measured) -> Latency:
    return measured()


@dataclass(slots=True)
class Redirects:
    """Client connections a path's nat REDIRECT rule matched, summed over its measurements."""

    connections: int = 0

    @contextmanager
    def installed(self, namespace: str, rules: str) -> Iterator[None]:
        apply_rules(namespace, rules)
        try:
            yield
            self.connections += redirected_connections(namespace)
        finally:
            remove_rules(namespace)


@dataclass(frozen=True, slots=True)
class PodPath:
    name: str
    route: Route
    redirects: Redirects | None = None  # set when the client reaches the chain by REDIRECT
    # Runs the latency measurement (the ztunnels read their CPU time around it).
    around_latency: Callable[[Measured], Latency] = _as_is


@contextmanager
def _direct(ws: Workspace, pods: PodPair, target: int) -> Iterator[tuple[str, int]]:
    yield pods.server_ip, target


@contextmanager
def _stunnel(ws: Workspace, pods: PodPair, target: int) -> Iterator[tuple[str, int]]:
    server_cfg = ws.write(
        f"stunnel-server-{target}.conf",
        stunnel_server_config(STUNNEL_SERVER_PORT, target, ws.certs.server, pods.server_ip),
    )
    client_cfg = ws.write(
        f"stunnel-client-{target}.conf",
        stunnel_client_config(STUNNEL_CLIENT_PORT, STUNNEL_SERVER_PORT, ws.certs.client,
                              pods.server_ip),
    )  # fmt: skip
    binary = tool_path("stunnel4")
    server = pods.exec_argv(pods.server_ns, [binary, str(server_cfg)])
    client = pods.exec_argv(pods.client_ns, [binary, str(client_cfg)])
    with (
        running("stunnel-server", server, ws.directory, STUNNEL_SERVER_PORT),
        running("stunnel-client", client, ws.directory, STUNNEL_CLIENT_PORT),
    ):
        yield "127.0.0.1", STUNNEL_CLIENT_PORT


def direct_path() -> PodPath:
    return PodPath("direct", _direct)


def stunnel_path() -> PodPath:
    return PodPath("stunnel", _stunnel)


def splice_pair_path() -> PodPath:
    """The ztunnel path's three TCP legs without TLS or HBONE: the client dials the server,
    a REDIRECT for that port only takes it to relay A (`ambient-fast relay`, client pod),
    relay A dials relay B on the server pod's IP, relay B dials the server. Unlike ztunnel B,
    relay B is not transparent: the server sees the connection from its own IP."""
    redirects = Redirects()

    @contextmanager
    def route(ws: Workspace, pods: PodPair, target: int) -> Iterator[tuple[str, int]]:
        server = f"{pods.server_ip}:{target}"
        relay_b = f"{pods.server_ip}:{RELAY_B_PORT}"
        b_argv = ws.ambient_fast("relay", "--listen", relay_b, "--to", server)
        a_argv = ws.ambient_fast("relay", "--listen", f"127.0.0.1:{RELAY_A_PORT}", "--to", relay_b)
        rules = port_redirect_rules(pods.server_ip, target, RELAY_A_PORT)
        with (
            running("relay-b", pods.exec_argv(pods.server_ns, b_argv), ws.directory,
                    RELAY_B_PORT, cwd=ws.package_root),
            running("relay-a", pods.exec_argv(pods.client_ns, a_argv), ws.directory,
                    RELAY_A_PORT, cwd=ws.package_root),
            redirects.installed(pods.client_ns, rules),
        ):  # fmt: skip
            yield pods.server_ip, target

    return PodPath("splice pair", route, redirects)


def ztunnel_path(around_latency: Callable[[Measured], Latency]) -> PodPath:
    """client dials the server -> istio-cni's REDIRECT to ztunnel A's 15001 -> HBONE -> ztunnel
    B's 15008 -> server, with the server pod's return path for B's transparent connections."""
    redirects = Redirects()

    @contextmanager
    def route(ws: Workspace, pods: PodPair, target: int) -> Iterator[tuple[str, int]]:
        with (
            inbound_return_path(pods.server_ns),
            redirects.installed(pods.client_ns, outbound_redirect_rules(OUTBOUND_PORT)),
        ):
            yield pods.server_ip, target

    return PodPath("ztunnel", route, redirects, around_latency)

"""`ambient-fast perf ztunnel`: a client pod and a server pod (network namespaces joined by a
veth pair), measured four ways in one run: direct, through the stunnel pair anchor, through
the splice pair anchor (the ztunnel path's three TCP legs, plaintext, `ambient-fast relay` on
both ends) and client -> ztunnel A (nat REDIRECT to 15001) -> HBONE -> ztunnel B (15008) ->
server. The paths are in `pod_paths.py`, the ztunnel processes in `ztunnels.py`, the table and
JSON in `ztunnel_report.py`.

Per path: single-stream iperf3, sockperf ping-pong p50/p99 (1 KiB at 1000 msg/s) and new
connections per second (connect, 64 B echo, close), measured phase by phase so the paths'
throughput runs follow each other. For the ztunnels also: RSS idle and with `tunnels`
connections open, CPU per 1000 req/s during the sockperf run, and proof that the traffic went
through them (the REDIRECT counter and istio_tcp_connections_opened_total).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import ambient_fast
from perf.certs import write_tunnel_certs
from perf.l4 import _sigterm_unwinds
from perf.measure import (
    SOCKPERF_MESSAGES_PER_S,
    Latency,
    latency,
    throughput_gbps,
    whole_seconds,
)
from perf.netns import PodPair, pod_pair
from perf.netns import run as run_command
from perf.pod_paths import (
    Measured,
    PodPath,
    direct_path,
    splice_pair_path,
    stunnel_path,
    ztunnel_path,
)
from perf.processes import running
from perf.scenarios import Workspace
from perf.tcp_echo import connection_rate, open_connections, raise_fd_limit
from perf.tools import PerfError, ToolError, ensure_tools, tool_path
from perf.ztunnel_report import (
    PairFigures,
    PathResult,
    ProxyFigures,
    compute_goals,
    render,
    write_json,
)
from perf.ztunnels import RunningZtunnel, connections_opened, cpu_seconds, rss_mib, ztunnel_pair

CHECKOUT = Path(__file__).resolve().parents[1]  # holds perf/
# Fixed ports: each pod is a fresh namespace, nothing else listens there.
IPERF3_PORT = 5201
SOCKPERF_PORT = 11111
ECHO_PORT = 7100
DEFAULT_TUNNELS = 1000


def _progress(message: str) -> None:
    print(f"[perf ztunnel] {message}", file=sys.stderr, flush=True)


@contextmanager
def backend(ws: Workspace, pods: PodPair, kind: str) -> Iterator[int]:
    """A fresh server in the server pod (iperf3 refuses a second test after a broken one)."""
    argv, port = {
        "iperf3": ([tool_path("iperf3"), "-s", "-p", str(IPERF3_PORT)], IPERF3_PORT),
        "sockperf": ([tool_path("sockperf"), "server", "--tcp", "-p", str(SOCKPERF_PORT)],
                     SOCKPERF_PORT),
        "echo": ([sys.executable, "-m", "perf.tcp_echo", str(ECHO_PORT)], ECHO_PORT),
    }[kind]  # fmt: skip
    wrapped = pods.exec_argv(pods.server_ns, argv)
    # From the checkout: `perf.tcp_echo` is not in an installed wheel's package root.
    with running(f"{kind}-server", wrapped, ws.directory, port, cwd=CHECKOUT):
        yield port


# -- measuring: phase by phase, every path in turn ----------------------------------------

Phase = Callable[[Workspace, PodPair, PodPath, int, PathResult], None]


def measure_throughput(
    ws: Workspace, pods: PodPair, path: PodPath, seconds: int, result: PathResult
) -> None:
    with backend(ws, pods, "iperf3") as port, path.route(ws, pods, port) as (host, dial):
        result.gbps = throughput_gbps(dial, 1, seconds, host, pods.client_ns)
    _progress(f"{path.name}: 1 stream {result.gbps:.2f} Gbit/s")


def measure_latency(
    ws: Workspace, pods: PodPair, path: PodPath, seconds: int, result: PathResult
) -> None:
    with backend(ws, pods, "sockperf") as port, path.route(ws, pods, port) as (host, dial):
        result.latency = path.around_latency(lambda: latency(dial, seconds, host, pods.client_ns))
    _progress(f"{path.name}: p50 {result.latency.p50_ms:.3f} ms"
              f" p99 {result.latency.p99_ms:.3f} ms")  # fmt: skip


def measure_connection_rate(
    ws: Workspace, pods: PodPair, path: PodPath, seconds: int, result: PathResult
) -> None:
    with backend(ws, pods, "echo") as port, path.route(ws, pods, port) as (host, dial):
        result.conn_per_s, result.conn_failures = connection_rate(
            pods.client_ns, host, dial, seconds
        )
    _progress(f"{path.name}: {result.conn_per_s:.0f} new connections/s"
              f" ({result.conn_failures} failed)")  # fmt: skip


# Throughput first: the paths' iperf3 runs are back to back, so their ratios see one load.
PHASES: tuple[Phase, ...] = (measure_throughput, measure_latency, measure_connection_rate)


def _fail(result: PathResult, exc: Exception) -> None:
    if isinstance(exc, PerfError):
        result.error, result.error_detail = exc.summary, str(exc)
    else:
        result.error = result.error_detail = f"{result.scenario}: {exc}"
    _progress(f"{result.scenario}: error: {result.error}")


def _check_redirected(path: PodPath, result: PathResult) -> None:
    if path.redirects is None:
        return
    result.redirected = path.redirects.connections
    if result.error is None and not result.redirected:
        _fail(result, PerfError(f"{path.name}: the REDIRECT rule matched no connection"))


def measure_paths(
    ws: Workspace, pods: PodPair, paths: list[PodPath], seconds: int
) -> dict[str, PathResult]:
    """A path that failed is skipped in later phases: they would only repeat the failure."""
    results = {path.name: PathResult(path.name) for path in paths}
    for phase in PHASES:
        for path in paths:
            result = results[path.name]
            if result.error is None:
                try:
                    phase(ws, pods, path, seconds, result)
                except (PerfError, OSError) as exc:
                    _fail(result, exc)
    for path in paths:
        _check_redirected(path, results[path.name])
    return results


# -- the ztunnels' own figures ------------------------------------------------------------


def cpu_around_latency(
    ztunnels: list[RunningZtunnel], figures: PairFigures
) -> Callable[[Measured], Latency]:
    def measured_with_cpu(measured: Measured) -> Latency:
        before = [cpu_seconds(z.pid) for z in ztunnels]
        started = time.monotonic()
        value = measured()
        elapsed = time.monotonic() - started
        for fig, z, cpu0 in zip(figures.proxies, ztunnels, before, strict=True):
            used = cpu_seconds(z.pid) - cpu0
            fig.cpu_s_during_latency = used
            # sockperf ping-pong at --mps=1000 is 1000 request/response pairs per second.
            fig.vcpu_per_1000_rps = used / elapsed / (SOCKPERF_MESSAGES_PER_S / 1000)
        return value

    return measured_with_cpu


def measure_tunnels_open(
    ws: Workspace, pods: PodPair, path: PodPath, ztunnels: list[RunningZtunnel],
    figures: PairFigures,
) -> None:  # fmt: skip
    with backend(ws, pods, "echo") as port, path.route(ws, pods, port) as (host, dial):
        with open_connections(pods.client_ns, host, dial, figures.tunnels_requested) as n:
            figures.tunnels_open = n
            for fig, z in zip(figures.proxies, ztunnels, strict=True):
                fig.rss_tunnels_mib = rss_mib(z.pid)
    rss = ", ".join(f"{f.rss_tunnels_mib:.1f}" for f in figures.proxies)
    _progress(f"ztunnel: {n} tunnels open, RSS {rss} MiB")


def _check_alive(ztunnels: list[RunningZtunnel], result: PathResult) -> None:
    """A ztunnel that died mid-run explains any later error (refused: no 15001 listener)."""
    for z in ztunnels:
        code = z.process.popen.poll()
        if code is not None:
            earlier = f"\nearlier error: {result.error_detail}" if result.error_detail else ""
            result.error = None
            _fail(result, PerfError(f"{z.name} exited {code} during the run",
                                    z.process.log_tail() + earlier))  # fmt: skip
            return


def measure_with_ztunnels(
    ws: Workspace, pods: PodPair, ztunnels: list[RunningZtunnel], seconds: int,
    figures: PairFigures,
) -> dict[str, PathResult]:  # fmt: skip
    figures.proxies = [ProxyFigures(z.name, rss_idle_mib=rss_mib(z.pid)) for z in ztunnels]
    opened_before = [connections_opened(z.namespace) for z in ztunnels]
    zt_path = ztunnel_path(cpu_around_latency(ztunnels, figures))
    paths = [direct_path(), stunnel_path(), splice_pair_path(), zt_path]
    results = measure_paths(ws, pods, paths, seconds)
    zt = results["ztunnel"]
    try:
        if zt.error is None:
            measure_tunnels_open(ws, pods, zt_path, ztunnels, figures)
        for fig, z, before in zip(figures.proxies, ztunnels, opened_before, strict=True):
            fig.connections_opened = connections_opened(z.namespace) - before
    except (PerfError, OSError) as exc:
        _fail(zt, exc)
    if zt_path.redirects is not None:  # the open tunnels were redirected too
        zt.redirected = zt_path.redirects.connections
    figures.redirected = zt.redirected
    _check_alive(ztunnels, zt)
    if zt.error is None and not figures.proxies[0].connections_opened:
        _fail(zt, PerfError("ztunnel A counted no opened connection: traffic did not go"
                            " through the pair"))  # fmt: skip
    return results


def measure_all(
    ws: Workspace, pods: PodPair, seconds: int, tunnels: int
) -> tuple[dict[str, PathResult], PairFigures]:
    """The ztunnels run through every phase (idle and unreachable while other paths are
    measured); if they do not start, the anchors are measured without them."""
    figures = PairFigures(tunnels)
    try:
        with ztunnel_pair(ws, pods) as ztunnels:
            return measure_with_ztunnels(ws, pods, ztunnels, seconds, figures), figures
    except (PerfError, OSError) as exc:
        # measure_with_ztunnels keeps the errors of its measurements: this is the start.
        failed = PathResult("ztunnel")
        _fail(failed, exc)
    anchors = [direct_path(), stunnel_path(), splice_pair_path()]
    return {**measure_paths(ws, pods, anchors, seconds), "ztunnel": failed}, figures


# -- the run ------------------------------------------------------------------------------

_TOOLS = {"iperf3": "iperf3", "stunnel4": "stunnel4", "sockperf": "sockperf"}


def run(duration: float, json_path: str | None, tunnels: int = DEFAULT_TUNNELS) -> int:
    """0 when every path measured, 1 when some path is an error row, 2 on setup errors."""
    if duration <= 0:
        print(f"perf ztunnel: --duration must be positive, got {duration}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("perf ztunnel: needs root (network namespaces, iptables)", file=sys.stderr)
        return 2
    try:
        ensure_tools(_TOOLS)
    except ToolError as exc:
        print(f"perf ztunnel: {exc}", file=sys.stderr)
        return 2
    raise_fd_limit()
    seconds = whole_seconds(duration)
    with (
        _sigterm_unwinds(),
        tempfile.TemporaryDirectory(prefix="ambient-fast-perf-zt-") as tmp,
    ):
        directory = Path(tmp)
        package_root = Path(ambient_fast.__file__).resolve().parents[1]
        ws = Workspace(directory, package_root, write_tunnel_certs(directory / "certs"))
        try:
            with pod_pair() as pods:
                for ns in (pods.client_ns, pods.server_ns):
                    # Many short connections in a few seconds: reuse TIME_WAIT ports. (The
                    # default port range stays: above ztunnel's 150xx listeners.)
                    run_command("ip", "netns", "exec", ns,
                                "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1")  # fmt: skip
                results, figures = measure_all(ws, pods, seconds, tunnels)
        except PerfError as exc:
            print(f"perf ztunnel: setup failed: {exc}", file=sys.stderr)
            return 2
    goals = compute_goals(results, figures)
    print(render(results, figures, goals, seconds))
    if json_path:
        write_json(Path(json_path), results, figures, goals, seconds)
        print(f"\nJSON written to {json_path}")
    return 1 if any(r.error for r in results.values()) else 0

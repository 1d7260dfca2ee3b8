"""`ambient-fast perf ztunnel`: a client pod and a server pod (network namespaces joined by a
veth pair), measured three ways in one run: direct, through the stunnel pair anchor, and
client -> ztunnel A (nat REDIRECT to 15001) -> HBONE -> ztunnel B (15008) -> server.

Per path: single-stream iperf3, sockperf ping-pong p50/p99 (1 KiB at 1000 msg/s) and new
connections per second (connect, 64 B echo, close). For the ztunnels also: RSS idle and with
`tunnels` connections open, CPU per 1000 req/s during the sockperf run, and proof that the
traffic went through them (the REDIRECT counter and istio_tcp_connections_opened_total).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

import ambient_fast
from ambient_fast.identity import MeshCA
from perf.anchors import stunnel_client_config, stunnel_server_config
from perf.certs import write_tunnel_certs
from perf.host import host_facts
from perf.l4 import _sigterm_unwinds
from perf.measure import (
    SOCKPERF_MESSAGE_BYTES,
    SOCKPERF_MESSAGES_PER_S,
    Latency,
    iperf3_argv,
    parse_iperf3,
    parse_sockperf,
    sockperf_argv,
    whole_seconds,
)
from perf.netns import (
    PodPair,
    apply_inbound_return_path,
    apply_outbound_redirect,
    inside,
    pod_pair,
    redirected_connections,
    remove_rules,
)
from perf.netns import (
    run as run_command,
)
from perf.processes import ManagedProcess, running
from perf.scenarios import Workspace
from perf.tcp_echo import connection_rate, open_connections, raise_fd_limit
from perf.tools import PerfError, ToolError, ensure_tools, tail, tool_path

# Fixed ports: each pod is a fresh namespace, nothing else listens there.
IPERF3_PORT = 5201
SOCKPERF_PORT = 11111
ECHO_PORT = 7100
STUNNEL_SERVER_PORT = 7443
STUNNEL_CLIENT_PORT = 7000
# ztunnel's ports (reference 01).
OUTBOUND_PORT = 15001
INBOUND_PORT = 15008
STATS_PORT = 15020
READINESS_PORT = 15021
DEFAULT_TUNNELS = 1000
# The goals (issue 4, "Performance goals").
ZTUNNEL_VS_STUNNEL_MIN = 1.5
ZTUNNEL_VS_DIRECT_MIN = 0.5
P99_OVER_DIRECT_MAX_MS = 0.2
RSS_IDLE_MAX_MIB = 40.0
RSS_PER_1000_TUNNELS_MAX_MIB = 20.0
VCPU_PER_1000_RPS_MAX = 0.06
_READY_DEADLINE_S = 30.0
_TOOL_SLACK_S = 20.0
_MIB = 1024 * 1024
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LATENCY_NOTE = "latency is what sockperf reports: half the round trip, in ms"


def _progress(message: str) -> None:
    print(f"[perf ztunnel] {message}", file=sys.stderr, flush=True)


@dataclass(slots=True)
class ProxyFigures:
    """One ztunnel's resource use."""

    name: str
    rss_idle_mib: float | None = None
    rss_tunnels_mib: float | None = None
    cpu_s_during_latency: float | None = None
    vcpu_per_1000_rps: float | None = None
    connections_opened: int | None = None  # istio_tcp_connections_opened_total delta


@dataclass(slots=True)
class PathResult:
    scenario: str
    gbps: float | None = None
    latency: Latency | None = None
    conn_per_s: float | None = None
    conn_failures: int | None = None
    error: str | None = None
    error_detail: str | None = None


@dataclass(slots=True)
class PairFigures:
    tunnels_requested: int
    tunnels_open: int | None = None
    redirected: int | None = None
    proxies: list[ProxyFigures] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Goal:
    name: str
    value: float | None
    unit: str
    goal: str | None
    met: bool | None


# -- running tools in a pod ---------------------------------------------------------------


def _tool_in(namespace: str, tool: str, argv: list[str], timeout: float) -> tuple[str, str, int]:
    try:
        done = subprocess.run(
            ["ip", "netns", "exec", namespace, tool_path(tool), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolError(tool, f"no result after {timeout:.0f} s") from exc
    return done.stdout, done.stderr, done.returncode


def throughput(pods: PodPair, host: str, port: int, seconds: int) -> float:
    argv = iperf3_argv(port, 1, seconds, host)
    out, err, code = _tool_in(pods.client_ns, "iperf3", argv, seconds + _TOOL_SLACK_S)
    gbps = parse_iperf3(out, err)
    if code != 0:
        raise ToolError("iperf3", f"exited {code}", tail(err or out))
    return gbps


def latency(pods: PodPair, host: str, port: int, seconds: int) -> Latency:
    argv = sockperf_argv(port, seconds, host)
    out, err, code = _tool_in(pods.client_ns, "sockperf", argv, seconds + _TOOL_SLACK_S)
    if code != 0:
        raise ToolError("sockperf", f"exited {code}", tail(err or out))
    return parse_sockperf(out, err)


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
    with running(f"{kind}-server", wrapped, ws.directory, port, cwd=ws.package_root):
        yield port


# -- the three paths: each yields (host, port) the client dials for a backend port -------

Path_ = Callable[[Workspace, PodPair, int], AbstractContextManager[tuple[str, int]]]


@contextmanager
def direct(ws: Workspace, pods: PodPair, target: int) -> Iterator[tuple[str, int]]:
    yield pods.server_ip, target


@contextmanager
def stunnel(ws: Workspace, pods: PodPair, target: int) -> Iterator[tuple[str, int]]:
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


@contextmanager
def ztunnel_route(ws: Workspace, pods: PodPair, target: int) -> Iterator[tuple[str, int]]:
    # The ztunnels run for the whole scenario; the client dials the server, REDIRECT does the rest.
    yield pods.server_ip, target


# -- the ztunnel pair ---------------------------------------------------------------------


def local_xds_yaml(pods: PodPair) -> str:
    """Both pods as HBONE-captured workloads (istio/ztunnel examples/localhost.yaml shape)."""

    def workload(name: str, ip: str) -> str:
        return f"""\
- uid: Kubernetes//Pod/perf/{name}
  name: {name}
  namespace: perf
  serviceAccount: {name}
  workloadIps: ["{ip}"]
  protocol: HBONE
  node: {name}-node
  network: ""
"""

    return "workloads:\n" + workload("client", pods.client_ip) + workload("server", pods.server_ip)


def write_shared_root(directory: Path) -> Path:
    """FAKE_CA_ROOT for both ztunnels: one root, so each trusts the other's certificate."""
    ca = MeshCA.create()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "root-cert.pem").write_bytes(ca.root_pem)
    key = directory / "root-key.pem"
    key.write_bytes(ca.key_pem)
    key.chmod(0o600)
    return directory


def ztunnel_argv(ws: Workspace, xds: Path, root: Path, workload: str, ip: str) -> list[str]:
    return ws.ambient_fast(
        "ztunnel",
        "--proxy-mode", "dedicated",
        "--proxy-workload-info", f"perf/{workload}/{workload}",
        "--local-xds-path", str(xds),
        "--fake-ca", "true",
        "--fake-ca-root", str(root),
        "--instance-ip", ip,
    )  # fmt: skip


def _http_get(namespace: str, url: str, timeout: float = 2.0) -> tuple[int, str]:
    with inside(namespace):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, ""


def wait_ready(process: ManagedProcess, namespace: str) -> None:
    deadline = time.monotonic() + _READY_DEADLINE_S
    url = f"http://127.0.0.1:{READINESS_PORT}/healthz/ready"
    while True:
        if process.popen.poll() is not None:
            raise PerfError(f"{process.name} exited {process.popen.returncode}", process.log_tail())
        try:
            if _http_get(namespace, url)[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise PerfError(f"{process.name} not ready after {_READY_DEADLINE_S:.0f} s",
                            process.log_tail())  # fmt: skip
        time.sleep(0.05)


def connections_opened(namespace: str) -> int:
    """Sum of istio_tcp_connections_opened_total over every label set."""
    status, text = _http_get(namespace, f"http://127.0.0.1:{STATS_PORT}/metrics")
    if status != 200:
        raise PerfError(f"metrics in {namespace}: HTTP {status}")
    total = 0.0
    for line in text.splitlines():
        if line.startswith("istio_tcp_connections_opened_total"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise PerfError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    # /proc/PID/stat: utime and stime are fields 14 and 15, after the "(comm)" field.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


@dataclass(slots=True)
class Ztunnels:
    a: ManagedProcess
    b: ManagedProcess


@contextmanager
def ztunnel_pair(ws: Workspace, pods: PodPair) -> Iterator[Ztunnels]:
    xds = ws.write("ztunnel-local.yaml", local_xds_yaml(pods))
    root = write_shared_root(ws.directory / "fake-ca-root")
    a_argv = pods.exec_argv(pods.client_ns, ztunnel_argv(ws, xds, root, "client", pods.client_ip))
    b_argv = pods.exec_argv(pods.server_ns, ztunnel_argv(ws, xds, root, "server", pods.server_ip))
    # The server pod's mangle rules and local route go away with its namespace.
    apply_inbound_return_path(pods.server_ns)
    with (
        running("ztunnel-b", b_argv, ws.directory, INBOUND_PORT, cwd=ws.package_root) as b,
        running("ztunnel-a", a_argv, ws.directory, OUTBOUND_PORT, cwd=ws.package_root) as a,
    ):
        wait_ready(b, pods.server_ns)
        wait_ready(a, pods.client_ns)
        apply_outbound_redirect(pods.client_ns, OUTBOUND_PORT)
        try:
            yield Ztunnels(a, b)
        finally:
            remove_rules(pods.client_ns)


# -- measuring ----------------------------------------------------------------------------


def measure_path(
    ws: Workspace,
    pods: PodPair,
    name: str,
    route: Path_,
    seconds: int,
    on_latency: Callable[[Callable[[], Latency]], Latency] | None = None,
) -> PathResult:
    result = PathResult(name)
    try:
        with backend(ws, pods, "iperf3") as port, route(ws, pods, port) as (host, dial):
            result.gbps = throughput(pods, host, dial, seconds)
            _progress(f"{name}: 1 stream {result.gbps:.2f} Gbit/s")
        with backend(ws, pods, "sockperf") as port, route(ws, pods, port) as (host, dial):

            def measured() -> Latency:
                return latency(pods, host, dial, seconds)

            result.latency = on_latency(measured) if on_latency else measured()
            _progress(
                f"{name}: p50 {result.latency.p50_ms:.3f} ms p99 {result.latency.p99_ms:.3f} ms"
            )
        with backend(ws, pods, "echo") as port, route(ws, pods, port) as (host, dial):
            result.conn_per_s, result.conn_failures = connection_rate(
                pods.client_ns, host, dial, seconds
            )
            _progress(f"{name}: {result.conn_per_s:.0f} new connections/s"
                      f" ({result.conn_failures} failed)")  # fmt: skip
    except PerfError as exc:
        result.error, result.error_detail = exc.summary, str(exc)
    except OSError as exc:
        result.error = result.error_detail = f"{name}: {exc}"
    if result.error:
        _progress(f"{name}: error: {result.error}")
    return result


def measure_ztunnels(
    ws: Workspace, pods: PodPair, seconds: int, tunnels: int
) -> tuple[PathResult, PairFigures]:
    figures = PairFigures(tunnels)
    try:
        with ztunnel_pair(ws, pods) as zt:
            procs = {"ztunnel A (client)": (zt.a, pods.client_ns),
                     "ztunnel B (server)": (zt.b, pods.server_ns)}  # fmt: skip
            figures.proxies = [ProxyFigures(name) for name in procs]
            for fig, (proc, _) in zip(figures.proxies, procs.values(), strict=True):
                fig.rss_idle_mib = rss_mib(proc.popen.pid)
            opened_before = [connections_opened(ns) for _, ns in procs.values()]

            def with_cpu(measured: Callable[[], Latency]) -> Latency:
                before = [cpu_seconds(p.popen.pid) for p, _ in procs.values()]
                started = time.monotonic()
                value = measured()
                elapsed = time.monotonic() - started
                for fig, (proc, _), cpu0 in zip(
                    figures.proxies, procs.values(), before, strict=True
                ):
                    used = cpu_seconds(proc.popen.pid) - cpu0
                    fig.cpu_s_during_latency = used
                    # sockperf ping-pong at --mps=1000 is 1000 request/response pairs per second.
                    rate = SOCKPERF_MESSAGES_PER_S / 1000
                    fig.vcpu_per_1000_rps = used / elapsed / rate
                return value

            result = measure_path(ws, pods, "ztunnel", ztunnel_route, seconds, with_cpu)
            if result.error is None:
                with backend(ws, pods, "echo") as port:
                    with open_connections(pods.client_ns, pods.server_ip, port, tunnels) as n:
                        figures.tunnels_open = n
                        for fig, (proc, _) in zip(figures.proxies, procs.values(), strict=True):
                            fig.rss_tunnels_mib = rss_mib(proc.popen.pid)
                    _progress(f"ztunnel: {n} tunnels open, RSS "
                              + ", ".join(f"{f.rss_tunnels_mib:.1f}" for f in figures.proxies)
                              + " MiB")  # fmt: skip
            figures.redirected = redirected_connections(pods.client_ns)
            for fig, (_, ns), before in zip(
                figures.proxies, procs.values(), opened_before, strict=True
            ):
                fig.connections_opened = connections_opened(ns) - before
    except PerfError as exc:
        return PathResult("ztunnel", error=exc.summary, error_detail=str(exc)), figures
    except OSError as exc:
        return PathResult("ztunnel", error=f"ztunnel: {exc}", error_detail=str(exc)), figures
    if result.error is None and not (figures.proxies and figures.proxies[0].connections_opened):
        result.error = result.error_detail = (
            "ztunnel A counted no opened connection: traffic did not go through the pair"
        )
    return result, figures


# -- goals, table, JSON -------------------------------------------------------------------


def _ratio(mine: float | None, base: float | None) -> float | None:
    return mine / base if mine is not None and base else None


def _goal(name: str, value: float | None, unit: str, goal: str | None,
          ok: Callable[[float], bool] | None) -> Goal:  # fmt: skip
    met = None if value is None or ok is None else ok(value)
    return Goal(name, value, unit, goal, met)


def per_1000_tunnels(fig: ProxyFigures, figures: PairFigures) -> float | None:
    if fig.rss_idle_mib is None or fig.rss_tunnels_mib is None or not figures.tunnels_open:
        return None
    return (fig.rss_tunnels_mib - fig.rss_idle_mib) * 1000 / figures.tunnels_open


def compute_goals(results: dict[str, PathResult], figures: PairFigures) -> list[Goal]:
    zt, st, di = results["ztunnel"], results["stunnel"], results["direct"]
    p99 = zt.latency.p99_ms - di.latency.p99_ms if zt.latency and di.latency else None
    goals = [
        _goal("ztunnel / stunnel, 1 stream", _ratio(zt.gbps, st.gbps), "x",
              f">= {ZTUNNEL_VS_STUNNEL_MIN}x", lambda v: v >= ZTUNNEL_VS_STUNNEL_MIN),
        _goal("ztunnel / direct, 1 stream", _ratio(zt.gbps, di.gbps), "x",
              f">= {ZTUNNEL_VS_DIRECT_MIN}x", lambda v: v >= ZTUNNEL_VS_DIRECT_MIN),
        _goal("ztunnel p99 - direct p99", p99, "ms",
              f"<= +{P99_OVER_DIRECT_MAX_MS} ms", lambda v: v <= P99_OVER_DIRECT_MAX_MS),
        _goal("ztunnel / direct, conn/s", _ratio(zt.conn_per_s, di.conn_per_s), "x", None, None),
        _goal("ztunnel / stunnel, conn/s", _ratio(zt.conn_per_s, st.conn_per_s), "x", None, None),
    ]  # fmt: skip
    for fig in figures.proxies:
        short = fig.name.split(" (")[0]
        goals += [
            _goal(f"{short} RSS idle", fig.rss_idle_mib, "MiB",
                  f"<= {RSS_IDLE_MAX_MIB:g} MiB", lambda v: v <= RSS_IDLE_MAX_MIB),
            _goal(f"{short} RSS per 1000 tunnels", per_1000_tunnels(fig, figures), "MiB",
                  f"<= {RSS_PER_1000_TUNNELS_MAX_MIB:g} MiB",
                  lambda v: v <= RSS_PER_1000_TUNNELS_MAX_MIB),
            _goal(f"{short} vCPU per 1000 req/s", fig.vcpu_per_1000_rps, "vCPU",
                  f"<= {VCPU_PER_1000_RPS_MAX}", lambda v: v <= VCPU_PER_1000_RPS_MAX),
        ]  # fmt: skip
    return goals


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _goal_value(goal: Goal) -> str:
    if goal.value is None:
        return "n/a"
    if goal.unit == "x":
        return f"{goal.value:.2f}x"
    if goal.unit == "ms":
        return f"{goal.value:+.3f} ms"
    return f"{goal.value:.3f} {goal.unit}" if goal.unit == "vCPU" else f"{goal.value:.1f} MiB"


def render(
    results: dict[str, PathResult], figures: PairFigures, goals: list[Goal], seconds: int
) -> str:
    lines = [
        f"ambient-fast perf ztunnel: client pod -> server pod over a veth, {seconds} s per"
        " measurement",
        f"  throughput: iperf3 -t {seconds}, 1 stream, receiver Gbit/s",
        f"  latency: sockperf ping-pong --tcp -m {SOCKPERF_MESSAGE_BYTES}"
        f" --mps={SOCKPERF_MESSAGES_PER_S} -t {seconds}, 1 connection; {LATENCY_NOTE}",
        "  conn/s: 4 client threads, each connect + 64 B echo + close, for the same time",
        "",
        f"{'path':<10}{'Gbit/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'conn/s':>10}",
    ]
    for r in results.values():
        row = (
            f"{r.scenario:<10}{_num(r.gbps, 2):>10}"
            f"{_num(r.latency.p50_ms if r.latency else None, 3):>10}"
            f"{_num(r.latency.p99_ms if r.latency else None, 3):>10}"
            f"{_num(r.conn_per_s, 0):>10}"
        )
        if r.error:
            row += f"  error: {r.error[:160]}"
        lines.append(row)
    lines += [
        "",
        f"{'ztunnel':<20}{'RSS idle':>10}{'RSS +N':>10}{'CPU s':>8}{'vCPU/1k rps':>13}"
        f"{'conns opened':>14}",
    ]
    for f in figures.proxies:
        lines.append(
            f"{f.name:<20}{_num(f.rss_idle_mib, 1):>10}{_num(f.rss_tunnels_mib, 1):>10}"
            f"{_num(f.cpu_s_during_latency, 2):>8}{_num(f.vcpu_per_1000_rps, 3):>13}"
            f"{'-' if f.connections_opened is None else f.connections_opened:>14}"
        )
    lines.append(
        f"  RSS in MiB; +N = with {figures.tunnels_open or 0} tunnels open"
        f" (asked {figures.tunnels_requested}); CPU during the sockperf run (1000 req/s);"
        f" client connections REDIRECTed to 15001: {figures.redirected}"
    )
    lines += ["", f"{'comparison':<34}{'measured':>12}  {'goal':<14}met"]
    for g in goals:
        met = {True: "yes", False: "NO", None: "-" if g.goal is None else "n/a"}[g.met]
        lines.append(f"{g.name:<34}{_goal_value(g):>12}  {g.goal or '(none)':<14}{met}")
    for r in results.values():
        if r.error_detail:
            lines += [
                "",
                f"{r.scenario} error detail:",
                "    " + r.error_detail.replace("\n", "\n    "),
            ]
    return "\n".join(lines)


def write_json(
    path: Path,
    results: dict[str, PathResult],
    figures: PairFigures,
    goals: list[Goal],
    seconds: int,
) -> None:
    document = {
        "results": [
            {
                "scenario": r.scenario,
                "streams": 1,
                "gbps": r.gbps,
                "rr_p50_ms": r.latency.p50_ms if r.latency else None,
                "rr_p99_ms": r.latency.p99_ms if r.latency else None,
                "conn_per_s": r.conn_per_s,
                "conn_failures": r.conn_failures,
                "error": r.error_detail,
            }
            for r in results.values()
        ],
        "ztunnels": {
            "tunnels_requested": figures.tunnels_requested,
            "tunnels_open": figures.tunnels_open,
            "redirected_connections": figures.redirected,
            "proxies": [
                {**asdict(f), "rss_per_1000_tunnels_mib": per_1000_tunnels(f, figures)}
                for f in figures.proxies
            ],
        },
        "ratios": [asdict(g) for g in goals],
        "duration_s": seconds,
        "latency_note": LATENCY_NOTE,
        "host": host_facts(),
    }
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")


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
                results = {
                    "direct": measure_path(ws, pods, "direct", direct, seconds),
                    "stunnel": measure_path(ws, pods, "stunnel", stunnel, seconds),
                }
                results["ztunnel"], figures = measure_ztunnels(ws, pods, seconds, tunnels)
        except PerfError as exc:
            print(f"perf ztunnel: setup failed: {exc}", file=sys.stderr)
            return 2
    goals = compute_goals(results, figures)
    print(render(results, figures, goals, seconds))
    if json_path:
        write_json(Path(json_path), results, figures, goals, seconds)
        print(f"\nJSON written to {json_path}")
    return 1 if any(r.error for r in results.values()) else 0

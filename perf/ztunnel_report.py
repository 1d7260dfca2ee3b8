"""`perf ztunnel`'s results: per path and per ztunnel, the goals and anchor ratios, the text
table and the JSON file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

from perf.host import host_facts
from perf.measure import SOCKPERF_MESSAGE_BYTES, SOCKPERF_MESSAGES_PER_S, Latency

# The goals (issue 4, "Performance goals").
ZTUNNEL_VS_STUNNEL_MIN = 1.5
ZTUNNEL_VS_DIRECT_MIN = 0.5
P99_OVER_DIRECT_MAX_MS = 0.2
RSS_IDLE_MAX_MIB = 40.0
RSS_PER_1000_TUNNELS_MAX_MIB = 20.0
VCPU_PER_1000_RPS_MAX = 0.06
LATENCY_NOTE = "latency is what sockperf reports: half the round trip, in ms"
_PATH_WIDTH = 13


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
    redirected: int | None = None  # client connections the path's REDIRECT rule matched
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


# -- goals and anchor ratios --------------------------------------------------------------


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


def _path_goals(results: dict[str, PathResult]) -> list[Goal]:
    zt, st, di = results["ztunnel"], results["stunnel"], results["direct"]
    sp = results["splice pair"]
    p99 = zt.latency.p99_ms - di.latency.p99_ms if zt.latency and di.latency else None
    return [
        _goal("ztunnel / stunnel, 1 stream", _ratio(zt.gbps, st.gbps), "x",
              f">= {ZTUNNEL_VS_STUNNEL_MIN}x", lambda v: v >= ZTUNNEL_VS_STUNNEL_MIN),
        _goal("ztunnel / direct, 1 stream", _ratio(zt.gbps, di.gbps), "x",
              f">= {ZTUNNEL_VS_DIRECT_MIN}x", lambda v: v >= ZTUNNEL_VS_DIRECT_MIN),
        # The anchor: how much of direct any three-hop user-space pair reaches here.
        _goal("ztunnel / splice pair, 1 stream", _ratio(zt.gbps, sp.gbps), "x", None, None),
        _goal("splice pair / direct, 1 stream", _ratio(sp.gbps, di.gbps), "x", None, None),
        _goal("ztunnel p99 - direct p99", p99, "ms",
              f"<= +{P99_OVER_DIRECT_MAX_MS} ms", lambda v: v <= P99_OVER_DIRECT_MAX_MS),
        _goal("ztunnel / direct, conn/s", _ratio(zt.conn_per_s, di.conn_per_s), "x", None, None),
        _goal("ztunnel / stunnel, conn/s", _ratio(zt.conn_per_s, st.conn_per_s), "x", None, None),
    ]  # fmt: skip


def _proxy_goals(fig: ProxyFigures, figures: PairFigures) -> list[Goal]:
    short = fig.name.split(" (")[0]
    return [
        _goal(f"{short} RSS idle", fig.rss_idle_mib, "MiB",
              f"<= {RSS_IDLE_MAX_MIB:g} MiB", lambda v: v <= RSS_IDLE_MAX_MIB),
        _goal(f"{short} RSS per 1000 tunnels", per_1000_tunnels(fig, figures), "MiB",
              f"<= {RSS_PER_1000_TUNNELS_MAX_MIB:g} MiB",
              lambda v: v <= RSS_PER_1000_TUNNELS_MAX_MIB),
        _goal(f"{short} vCPU per 1000 req/s", fig.vcpu_per_1000_rps, "vCPU",
              f"<= {VCPU_PER_1000_RPS_MAX}", lambda v: v <= VCPU_PER_1000_RPS_MAX),
    ]  # fmt: skip


def compute_goals(results: dict[str, PathResult], figures: PairFigures) -> list[Goal]:
    goals = _path_goals(results)
    for fig in figures.proxies:
        goals += _proxy_goals(fig, figures)
    return goals


# -- the table ----------------------------------------------------------------------------


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


def _header(seconds: int) -> list[str]:
    return [
        f"ambient-fast perf ztunnel: client pod -> server pod over a veth, {seconds} s per"
        " measurement",
        f"  throughput: iperf3 -t {seconds}, 1 stream, receiver Gbit/s",
        f"  latency: sockperf ping-pong --tcp -m {SOCKPERF_MESSAGE_BYTES}"
        f" --mps={SOCKPERF_MESSAGES_PER_S} -t {seconds}, 1 connection; {LATENCY_NOTE}",
        "  conn/s: 4 client threads, each connect + 64 B echo + close, for the same time",
        "  order: every path's throughput back to back, then every path's latency, then conn/s",
        "  splice pair: the ztunnel path's three TCP legs, plaintext: REDIRECT -> relay A ->"
        " relay B -> server (`ambient-fast relay`); an anchor, the most a 3-hop pair gets here",
    ]


def _path_rows(results: dict[str, PathResult]) -> list[str]:
    lines = [f"{'path':<{_PATH_WIDTH}}{'Gbit/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'conn/s':>10}"]
    for r in results.values():
        row = (
            f"{r.scenario:<{_PATH_WIDTH}}{_num(r.gbps, 2):>10}"
            f"{_num(r.latency.p50_ms if r.latency else None, 3):>10}"
            f"{_num(r.latency.p99_ms if r.latency else None, 3):>10}"
            f"{_num(r.conn_per_s, 0):>10}"
        )
        if r.error:
            row += f"  error: {r.error[:160]}"
        lines.append(row)
    redirected = ", ".join(
        f"{r.scenario} {r.redirected}" for r in results.values() if r.redirected is not None
    )
    lines.append(f"  client connections REDIRECTed: {redirected or '-'}")
    return lines


def _proxy_rows(figures: PairFigures) -> list[str]:
    lines = [
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
        f" (asked {figures.tunnels_requested}); CPU during the sockperf run (1000 req/s)"
    )
    return lines


def _goal_rows(goals: list[Goal]) -> list[str]:
    lines = [f"{'comparison':<34}{'measured':>12}  {'goal':<14}met"]
    for g in goals:
        met = {True: "yes", False: "NO", None: "-" if g.goal is None else "n/a"}[g.met]
        lines.append(f"{g.name:<34}{_goal_value(g):>12}  {g.goal or '(none)':<14}{met}")
    return lines


def render(
    results: dict[str, PathResult], figures: PairFigures, goals: list[Goal], seconds: int
) -> str:
    lines = [
        *_header(seconds), "",
        *_path_rows(results), "",
        *_proxy_rows(figures), "",
        *_goal_rows(goals),
    ]  # fmt: skip
    for r in results.values():
        if r.error_detail:
            lines += [
                "",
                f"{r.scenario} error detail:",
                "    " + r.error_detail.replace("\n", "\n    "),
            ]
    return "\n".join(lines)


# -- the JSON file ------------------------------------------------------------------------


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
                "redirected_connections": r.redirected,
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

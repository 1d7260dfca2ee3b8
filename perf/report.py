"""Results of a run: the text table with ratios against the anchors, and the JSON file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import orjson

from perf.measure import SOCKPERF_MESSAGE_BYTES, SOCKPERF_MESSAGES_PER_S, Latency

STREAM_COUNTS = (1, 8)
LATENCY_NOTE = "latency is what sockperf reports: half the round trip, in ms"
# The goals (stated next to the measured ratios, single stream).
HBONE_VS_STUNNEL_MIN = 1.5
SPLICE_VS_HAPROXY_MIN = 1.2
SPLICE_VS_DIRECT_MIN = 0.6
HBONE_P99_OVER_DIRECT_MAX_MS = 0.2
_ERROR_CELL_CHARS = 160


@dataclass(slots=True)
class ScenarioResult:
    scenario: str
    gbps: dict[int, float] = field(default_factory=dict)  # stream count -> Gbit/s
    latency: Latency | None = None
    error: str | None = None  # one line, for the table
    error_detail: str | None = None  # with the tool's stderr or the proxy's log


@dataclass(frozen=True, slots=True)
class Ratio:
    name: str
    value: float | None  # None when either side has no number (an error row)
    unit: str
    goal: str | None
    met: bool | None


def _throughput_ratio(
    by_name: dict[str, ScenarioResult], ours: str, anchor: str, streams: int, minimum: float | None
) -> Ratio:
    mine = by_name[ours].gbps.get(streams) if ours in by_name else None
    base = by_name[anchor].gbps.get(streams) if anchor in by_name else None
    value = mine / base if mine is not None and base else None
    name = f"{ours} / {anchor}, {streams} stream{'s' if streams > 1 else ''}"
    if minimum is None:
        return Ratio(name, value, "x", None, None)
    met = None if value is None else value >= minimum
    return Ratio(name, value, "x", f">= {minimum}x", met)


def _p99_over_direct(by_name: dict[str, ScenarioResult], ours: str, maximum: float) -> Ratio:
    mine = by_name[ours].latency if ours in by_name else None
    base = by_name["direct"].latency if "direct" in by_name else None
    value = mine.p99_ms - base.p99_ms if mine and base else None
    met = None if value is None else value <= maximum
    return Ratio(f"{ours} p99 - direct p99", value, "ms", f"<= +{maximum} ms", met)


def compute_ratios(results: list[ScenarioResult]) -> list[Ratio]:
    by_name = {r.scenario: r for r in results}
    goals = [
        _throughput_ratio(by_name, "hbone", "stunnel", 1, HBONE_VS_STUNNEL_MIN),
        _throughput_ratio(by_name, "splice", "haproxy", 1, SPLICE_VS_HAPROXY_MIN),
        _throughput_ratio(by_name, "splice", "direct", 1, SPLICE_VS_DIRECT_MIN),
        _p99_over_direct(by_name, "hbone", HBONE_P99_OVER_DIRECT_MAX_MS),
    ]
    # The 8-stream ratios carry no goal; they show whether a proxy scales past one core.
    extra = [
        _throughput_ratio(by_name, "hbone", "stunnel", 8, None),
        _throughput_ratio(by_name, "splice", "haproxy", 8, None),
        _throughput_ratio(by_name, "splice", "direct", 8, None),
    ]
    return goals + extra


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio_value(ratio: Ratio) -> str:
    if ratio.value is None:
        return "n/a"
    return f"{ratio.value:+.3f} ms" if ratio.unit == "ms" else f"{ratio.value:.2f}x"


def _met(ratio: Ratio) -> str:
    return {True: "yes", False: "NO", None: "-" if ratio.goal is None else "n/a"}[ratio.met]


def render_table(results: list[ScenarioResult], ratios: list[Ratio], seconds: int) -> str:
    lines = [
        f"ambient-fast perf l4: loopback, {seconds} s per measurement",
        f"  throughput: iperf3 -t {seconds}, receiver Gbit/s, 1 and 8 streams (-P 8)",
        f"  latency: sockperf ping-pong --tcp -m {SOCKPERF_MESSAGE_BYTES}"
        f" --mps={SOCKPERF_MESSAGES_PER_S} -t {seconds}; {LATENCY_NOTE}",
        "",
        f"{'scenario':<10}{'1 stream':>10}{'8 streams':>11}{'p50 ms':>10}{'p99 ms':>10}",
        f"{'':<10}{'Gbit/s':>10}{'Gbit/s':>11}{'half-RTT':>10}{'half-RTT':>10}",
    ]
    for r in results:
        row = (
            f"{r.scenario:<10}{_number(r.gbps.get(1), 2):>10}{_number(r.gbps.get(8), 2):>11}"
            f"{_number(r.latency.p50_ms if r.latency else None, 3):>10}"
            f"{_number(r.latency.p99_ms if r.latency else None, 3):>10}"
        )
        if r.error:
            row += f"  error: {r.error[:_ERROR_CELL_CHARS]}"
        lines.append(row.rstrip())
    lines += ["", f"{'comparison':<30}{'measured':>12}  {'goal':<12}met"]
    for ratio in ratios:
        goal = ratio.goal or "(none)"
        lines.append(f"{ratio.name:<30}{_ratio_value(ratio):>12}  {goal:<12}{_met(ratio)}")
    for r in results:
        if r.error_detail:
            detail = r.error_detail.replace("\n", "\n    ")
            lines += ["", f"{r.scenario} error detail:", f"    {detail}"]
    return "\n".join(lines)


def result_rows(results: list[ScenarioResult]) -> list[dict[str, object]]:
    """One row per scenario and stream count; latency sits on the streams=1 row only, since it
    is measured once per scenario with one connection (null on the 8-stream row)."""
    rows: list[dict[str, object]] = []
    for r in results:
        for streams in STREAM_COUNTS:
            lat = r.latency if streams == 1 else None
            rows.append(
                {
                    "scenario": r.scenario,
                    "streams": streams,
                    "gbps": r.gbps.get(streams),
                    "rr_p50_ms": lat.p50_ms if lat else None,
                    "rr_p99_ms": lat.p99_ms if lat else None,
                    "error": r.error_detail,
                }
            )
    return rows


def write_json(
    path: Path,
    results: list[ScenarioResult],
    ratios: list[Ratio],
    host: dict[str, object],
    seconds: int,
) -> None:
    document = {
        "results": result_rows(results),
        "ratios": [
            {"name": x.name, "value": x.value, "unit": x.unit, "goal": x.goal, "met": x.met}
            for x in ratios
        ],
        "duration_s": seconds,
        "latency_note": LATENCY_NOTE,
        "host": host,
    }
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")

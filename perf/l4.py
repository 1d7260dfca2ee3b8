"""`ambient-fast perf l4`: every L4 scenario measured in one run, printed with ratios.

Each scenario gets fresh backends, then 1- and 8-stream iperf3 and a sockperf ping-pong
through its proxy chain. A chain that fails becomes an error row; the others still run.
"""

from __future__ import annotations

import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import ambient_fast
from perf.backends import iperf3_server, sockperf_server
from perf.certs import write_tunnel_certs
from perf.host import host_facts
from perf.measure import latency, throughput_gbps, whole_seconds
from perf.report import (
    STREAM_COUNTS,
    ScenarioResult,
    compute_ratios,
    render_table,
    write_json,
)
from perf.scenarios import SCENARIOS, Chain, Workspace
from perf.tools import PerfError, ToolError, ensure_tools


def _progress(message: str) -> None:
    print(f"[perf l4] {message}", file=sys.stderr, flush=True)


def measure_scenario(ws: Workspace, name: str, chain: Chain, duration: float) -> ScenarioResult:
    result = ScenarioResult(name)
    try:
        with iperf3_server(ws.directory) as backend, chain(ws, backend) as port:
            for streams in STREAM_COUNTS:
                result.gbps[streams] = throughput_gbps(port, streams, duration)
                _progress(f"{name}: {streams} stream(s) {result.gbps[streams]:.2f} Gbit/s")
        with sockperf_server(ws.directory) as backend, chain(ws, backend) as port:
            result.latency = latency(port, duration)
            _progress(
                f"{name}: p50 {result.latency.p50_ms:.3f} ms p99 {result.latency.p99_ms:.3f} ms"
            )
    except PerfError as exc:
        # Later measurements of a broken chain would only repeat the failure (and its timeouts).
        result.error, result.error_detail = exc.summary, str(exc)
    except OSError as exc:
        result.error = result.error_detail = f"{name}: {exc}"
    if result.error:
        _progress(f"{name}: error: {result.error}")
    return result


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Turns SIGTERM into SystemExit so the finally blocks kill every child we started."""

    def exit_on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(duration: float, json_path: str | None) -> int:
    """Returns 0 when every scenario measured, 1 when some are error rows, 2 on setup errors."""
    if duration <= 0:
        print(f"perf l4: --duration must be positive, got {duration}", file=sys.stderr)
        return 2
    try:
        ensure_tools()
    except ToolError as exc:
        print(f"perf l4: {exc}", file=sys.stderr)
        return 2
    with _sigterm_unwinds(), tempfile.TemporaryDirectory(prefix="ambient-fast-perf-") as tmp:
        directory = Path(tmp)
        package_root = Path(ambient_fast.__file__).resolve().parents[1]
        ws = Workspace(directory, package_root, write_tunnel_certs(directory / "certs"))
        results = [measure_scenario(ws, n, chain, duration) for n, chain in SCENARIOS.items()]
    ratios = compute_ratios(results)
    seconds = whole_seconds(duration)
    print(render_table(results, ratios, seconds))
    if json_path:
        write_json(Path(json_path), results, ratios, host_facts(), seconds)
        print(f"\nJSON written to {json_path}")
    return 1 if any(r.error for r in results) else 0

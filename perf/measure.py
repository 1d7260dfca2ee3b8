"""The two measurements every scenario gets: iperf3 throughput and sockperf latency.

Parsing is separate from running so it can be checked on captured output.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

from perf.tools import ToolError, run_tool, tail

# The latency anchor's exact command (reference/05): 1 KiB messages, 1000 per second.
SOCKPERF_MESSAGE_BYTES = 1024
SOCKPERF_MESSAGES_PER_S = 1000
# Beyond the run itself: connection setup, sockperf's 400 ms warm-up, JSON output.
_TOOL_SLACK_S = 20.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True, slots=True)
class Latency:
    """As sockperf reports it: half the round trip, here in milliseconds."""

    p50_ms: float
    p99_ms: float


def whole_seconds(duration: float) -> int:
    # iperf3 and sockperf take whole seconds only (iperf3 parses -t with atoi).
    return max(1, math.ceil(duration))


def iperf3_argv(port: int, streams: int, seconds: int, host: str = "127.0.0.1") -> list[str]:
    return ["-c", host, "-p", str(port), "-P", str(streams), "-t", str(seconds), "-J"]


def throughput_gbps(
    port: int, streams: int, duration: float, host: str = "127.0.0.1", namespace: str | None = None
) -> float:
    """Receiver-side Gbit/s of an iperf3 upload to `host`:`port` (from `namespace`)."""
    seconds = whole_seconds(duration)
    argv = iperf3_argv(port, streams, seconds, host)
    done = run_tool("iperf3", argv, seconds + _TOOL_SLACK_S, False, namespace)
    gbps = parse_iperf3(done.stdout, done.stderr)
    if done.returncode != 0:
        raise ToolError("iperf3", f"exited {done.returncode}", tail(done.stderr or done.stdout))
    return gbps


def parse_iperf3(stdout: str, stderr: str = "") -> float:
    """Gbit/s from `iperf3 -J` output (end.sum_received, i.e. what the server got)."""
    try:
        report: Any = orjson.loads(stdout)
    except orjson.JSONDecodeError as exc:
        raise ToolError("iperf3", f"output is not JSON ({exc})", tail(stderr or stdout)) from exc
    if not isinstance(report, dict):
        raise ToolError("iperf3", "output is not a JSON object", tail(stdout))
    if report.get("error"):
        raise ToolError("iperf3", str(report["error"]), tail(stderr))
    try:
        bits_per_second = float(report["end"]["sum_received"]["bits_per_second"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ToolError("iperf3", "no end.sum_received.bits_per_second", tail(stdout)) from exc
    return bits_per_second / 1e9


def sockperf_argv(port: int, seconds: int, host: str = "127.0.0.1") -> list[str]:
    return [
        "ping-pong",
        "--tcp",
        "-i",
        host,
        "-p",
        str(port),
        "-m",
        str(SOCKPERF_MESSAGE_BYTES),
        f"--mps={SOCKPERF_MESSAGES_PER_S}",
        "-t",
        str(seconds),
    ]


def latency(
    port: int, duration: float, host: str = "127.0.0.1", namespace: str | None = None
) -> Latency:
    """p50/p99 of `sockperf ping-pong --tcp` to `host`:`port` (from `namespace`)."""
    seconds = whole_seconds(duration)
    argv = sockperf_argv(port, seconds, host)
    done = run_tool("sockperf", argv, seconds + _TOOL_SLACK_S, namespace=namespace)
    return parse_sockperf(done.stdout, done.stderr)


def parse_sockperf(stdout: str, stderr: str = "") -> Latency:
    """Reads the `percentile 50.000 = <usec>` lines; sockperf's numbers are half-RTT in usec."""
    text = _ANSI.sub("", stdout)

    def percentile(label: str) -> float:
        found = re.search(rf"percentile\s+{re.escape(label)}\s*=\s*([0-9.]+)", text)
        if found is None:
            raise ToolError("sockperf", f"no 'percentile {label}' line", tail(stderr or text))
        return float(found.group(1)) / 1000.0

    return Latency(p50_ms=percentile("50.000"), p99_ms=percentile("99.000"))

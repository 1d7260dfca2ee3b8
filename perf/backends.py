"""The servers behind every proxy: an iperf3 server (throughput) and a sockperf server (latency).

A fresh one per scenario, so a test broken by a failing proxy cannot leave iperf3 "busy".
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from perf.processes import running
from perf.tools import free_port, tool_path


@contextmanager
def iperf3_server(log_dir: Path) -> Iterator[int]:
    port = free_port()
    argv = [tool_path("iperf3"), "-s", "-B", "127.0.0.1", "-p", str(port)]
    with running("iperf3-server", argv, log_dir, port):
        yield port


@contextmanager
def sockperf_server(log_dir: Path) -> Iterator[int]:
    port = free_port()
    argv = [tool_path("sockperf"), "server", "--tcp", "-i", "127.0.0.1", "-p", str(port)]
    with running("sockperf-server", argv, log_dir, port):
        yield port

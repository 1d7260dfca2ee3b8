"""Facts about the machine a run was measured on, for the JSON report."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

from perf.tools import find_tool

# Tool -> the flag that prints its version (stunnel prints it on stderr).
_VERSION_FLAGS = {
    "iperf3": "--version",
    "haproxy": "-v",
    "stunnel4": "-version",
    "sockperf": "--version",
}
_VERSION_LINE = re.compile(r"(iperf \S+|HAProxy version \S+|stunnel \S+|version\W+\S+)")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def tool_version(name: str) -> str:
    path = find_tool(name)
    if path is None:
        return "not installed"
    try:
        done = subprocess.run(
            [path, _VERSION_FLAGS[name]], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    found = _VERSION_LINE.search(done.stdout + done.stderr)
    return found.group(1) if found else "unknown"


def host_facts() -> dict[str, object]:
    from ambient_fast import __version__

    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "ambient_fast": __version__,
        "tools": {name: tool_version(name) for name in _VERSION_FLAGS},
    }

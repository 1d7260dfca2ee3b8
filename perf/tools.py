"""Finding (and installing) the benchmark tools, running them, and loopback port helpers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

# Binary -> Debian package that ships it (the anchors in shared/reference come from these).
REQUIRED_TOOLS = {
    "iperf3": "iperf3",
    "haproxy": "haproxy",
    "stunnel4": "stunnel4",
    "sockperf": "sockperf",
}
# haproxy lives in /usr/sbin, which is not on a non-login PATH.
_EXTRA_PATH = ("/usr/sbin", "/sbin")
_TAIL_CHARS = 1500
_TCP_LISTEN = "0A"  # socket state LISTEN in /proc/net/tcp (include/net/tcp_states.h)


class PerfError(RuntimeError):
    """A failure that turns a scenario into an error row: `summary` fits in the table's row,
    the message holds the whole story (a tool's stderr, a proxy's log)."""

    def __init__(self, summary: str, detail: str = "") -> None:
        super().__init__(f"{summary}\n{detail.strip()}" if detail.strip() else summary)
        self.summary = summary


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


class ToolError(PerfError):
    """A benchmark tool failed; the message names the tool and shows what it printed."""

    def __init__(self, tool: str, what: str, output: str = "") -> None:
        # The last line of a tool's output is usually its actual complaint.
        hint = last_line(output)
        super().__init__(f"{tool}: {what}" + (f" ({hint})" if hint else ""), output)
        self.tool = tool


def tail(text: str, limit: int = _TAIL_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def find_tool(name: str) -> str | None:
    search = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_PATH])
    return shutil.which(name, path=search)


def tool_path(name: str) -> str:
    path = find_tool(name)
    if path is None:
        raise ToolError(name, "not installed (perf.tools.ensure_tools installs it)")
    return path


def ensure_tools(tools: dict[str, str] = REQUIRED_TOOLS) -> None:
    """Installs the Debian packages of any missing tool (needs root, like the CI machine)."""
    missing = sorted({pkg for binary, pkg in tools.items() if find_tool(binary) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise ToolError("apt-get", f"missing {missing}; run as root: apt-get install -y {missing}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *missing]):
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise ToolError(
                "apt-get", f"{' '.join(argv)} exited {done.returncode}", done.stderr or done.stdout
            )


def run_tool(
    name: str, argv: list[str], timeout: float, check: bool = True, namespace: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs a tool to completion (inside network namespace `namespace` if given); raises
    ToolError (with its stderr) on timeout or, if `check`, on a non-zero exit."""
    netns = ["ip", "netns", "exec", namespace] if namespace is not None else []
    try:
        done = subprocess.run(
            [*netns, tool_path(name), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolError(name, f"no result after {timeout:.0f} s", _text(exc.stderr)) from exc
    if check and done.returncode != 0:
        raise ToolError(name, f"exited {done.returncode}", tail(done.stderr or done.stdout))
    return done


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return tail(data.decode(errors="replace"))
    return tail(data or "")


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def is_listening(port: int, pid: int | None = None) -> bool:
    """Whether some socket listens on `port`, read from /proc so no probe connection is made;
    with `pid`, in that process's network namespace (a child started in another netns).

    A probe connect would be relayed to the backend, and iperf3 treats it as a broken test.
    """
    wanted = f":{port:04X}"
    net = Path(f"/proc/{pid}/net") if pid is not None else Path("/proc/net")
    for table in (net / "tcp", net / "tcp6"):
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:  # gone, or a zombie child whose namespace went with it
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[1].endswith(wanted) and fields[3] == _TCP_LISTEN:
                return True
    return False

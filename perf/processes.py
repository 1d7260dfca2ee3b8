"""Long-running children (backends, proxies): started, awaited on their port, always killed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from perf.tools import PerfError, is_listening, last_line, tail

# Our Python proxies import uvloop, cryptography and the native modules before listening.
DEFAULT_LISTEN_DEADLINE_S = 15.0
_STOP_GRACE_S = 3.0
_POLL_S = 0.02


class ProxyStartError(PerfError):
    """A child exited or did not listen in time; the message carries the tail of its log."""

    def __init__(self, reason: str, log: str) -> None:
        # The last log line is usually the exception or the tool's own complaint.
        super().__init__(f"{reason} ({last_line(log)})", log)


class ManagedProcess:
    """One child with its output in a log file, in its own session so it can be killed whole."""

    def __init__(self, name: str, argv: list[str], log_path: Path, cwd: Path | None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
            )

    def log_tail(self) -> str:
        try:
            return tail(self.log_path.read_text(errors="replace")) or "(no output)"
        except FileNotFoundError:
            return "(no log)"

    def wait_listening(self, port: int, deadline_s: float = DEFAULT_LISTEN_DEADLINE_S) -> None:
        deadline = time.monotonic() + deadline_s
        # The child's own view: it may run in another netns (`ip netns exec` keeps its pid).
        while not is_listening(port, self.popen.pid):
            code = self.popen.poll()
            if code is not None:
                raise ProxyStartError(
                    f"{self.name} exited {code} before listening on port {port}",
                    self.log_tail(),
                )
            if time.monotonic() > deadline:
                raise ProxyStartError(
                    f"{self.name} not listening on port {port} after {deadline_s:.0f} s",
                    self.log_tail(),
                )
            time.sleep(_POLL_S)

    def stop(self) -> None:
        """SIGTERM to the child's process group, SIGKILL if it lingers; reaps the child."""
        if self.popen.poll() is not None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.popen.wait(_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.popen.wait()

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            # start_new_session made the child the leader of a group whose id is its pid.
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass


@contextmanager
def running(
    name: str, argv: list[str], log_dir: Path, listen_port: int, cwd: Path | None = None
) -> Iterator[ManagedProcess]:
    """Starts `argv`, waits until it listens on `listen_port`, and stops it on exit."""
    process = ManagedProcess(name, argv, log_dir / f"{name}-{listen_port}.log", cwd)
    try:
        process.wait_listening(listen_port)
        yield process
    finally:
        process.stop()

"""`ambient-fast` subcommands as processes inside a namespace, each logging to its own file."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import ambient_fast
from ambient_fast.topology import Topology

# Children run the ambient_fast this process imported (an installed wheel or a checkout).
PACKAGE_ROOT = Path(ambient_fast.__file__).resolve().parents[1]
# Starting a Python process and warming xDS and certificates on a loaded 2-core machine.
START_DEADLINE_S = 30.0
STOP_GRACE_S = 10.0
_POLL_S = 0.05


class MeshError(RuntimeError):
    """A mesh process died or did not get where it should in time; carries its log's tail."""


@dataclass
class MeshProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def logged(self, text: str) -> bool:
        return self.log.exists() and text in self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = STOP_GRACE_S) -> int:
        """Signals the process (SIGKILL after `timeout`) and reaps it; its exit code."""
        if self.alive():
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def wait_for(self, what: str, ok: Callable[[], bool], within: float = START_DEADLINE_S) -> None:
        """Polls `ok` (an OSError counts as not yet) while the process lives."""
        end = time.monotonic() + within
        while True:
            if not self.alive():
                raise MeshError(
                    f"{self.name} exited {self.popen.returncode} waiting for {what}:\n{self.tail()}"
                )
            with contextlib.suppress(OSError):
                if ok():
                    return
            if time.monotonic() > end:
                raise MeshError(f"{self.name}: no {what} after {within:.0f} s:\n{self.tail()}")
            time.sleep(_POLL_S)

    def wait_logged(self, *lines: str, within: float = START_DEADLINE_S) -> None:
        for line in lines:
            self.wait_for(repr(line), functools.partial(self.logged, line), within)


@contextlib.contextmanager
def running_in(
    topology: Topology, namespace: str, name: str, argv: list[str], logs: Path,
    env: Mapping[str, str] | None = None,
) -> Iterator[MeshProcess]:  # fmt: skip
    """`ambient-fast <argv>` in `namespace`, logging to `logs/<name>.log`; stopped on exit."""
    log = logs / f"{name}.log"
    command = [sys.executable, "-m", "ambient_fast.cli", *argv]
    with log.open("wb") as out:
        popen = subprocess.Popen(
            topology.exec_argv(namespace, command), stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=PACKAGE_ROOT,
        )  # fmt: skip
    process = MeshProcess(name, popen, log)
    try:
        yield process
    finally:
        process.stop()


def http_get(topology: Topology, namespace: str, url: str, timeout: float = 2.0) -> tuple[int, str]:
    """GET from inside `namespace`: (status, body)."""
    with topology.entered(namespace):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return int(response.status), response.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")


def tcp_open(topology: Topology, namespace: str, host: str, port: int) -> bool:
    """Whether something accepts on host:port, seen from `namespace`."""
    with topology.entered(namespace), socket.create_connection((host, port), timeout=1.0):
        return True

"""A small ambient mesh in namespaces for tests: the control plane in the fabric namespace,
`ambient-fast ztunnel` processes, TCP echo servers in pods, and ways to look at them from
inside a namespace. Processes are stopped and sockets closed on exit (the topology's own
context manager deletes the namespaces)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import ambient_fast
from ambient_fast.topology import Topology

# Subprocesses run the ambient_fast this process imported (tests/integration/installed.py).
PACKAGE_ROOT = Path(ambient_fast.__file__).resolve().parents[1]

T = TypeVar("T")
XDS_PORT = 15012
READINESS_PORT = 15021
STATS_PORT = 15020
ADMIN_PORT = 15000
# Starting a Python process and warming xDS and certificates on a loaded 2-core machine.
START_DEADLINE = 30.0
IO_TIMEOUT = 10.0


@dataclass
class MeshProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = IO_TIMEOUT) -> int:
        if self.alive():
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def wait_for(self, what: str, ok: Callable[[], bool], within: float = START_DEADLINE) -> None:
        """Polls `ok` (OSError counts as not yet) while the process lives."""
        end = time.monotonic() + within
        while True:
            if not self.alive():
                raise AssertionError(
                    f"{self.name} exited {self.popen.returncode} waiting for {what}:\n{self.tail()}"
                )
            with contextlib.suppress(OSError):
                if ok():
                    return
            if time.monotonic() > end:
                raise AssertionError(f"{self.name}: no {what} after {within:.0f} s:\n{self.tail()}")
            time.sleep(0.05)


@contextlib.contextmanager
def process_in(
    topology: Topology, namespace: str, name: str, argv: list[str], env: Mapping[str, str],
    logs: Path,
) -> Iterator[MeshProcess]:  # fmt: skip
    """`ambient-fast <argv>` in `namespace`, logging to `logs/<name>.log`; stopped on exit."""
    log = logs / f"{name}.log"
    command = [sys.executable, "-m", "ambient_fast.cli", *argv]
    with log.open("wb") as out:
        popen = subprocess.Popen(
            topology.exec_argv(namespace, command), stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, **env}, cwd=PACKAGE_ROOT,
        )  # fmt: skip
    process = MeshProcess(name, popen, log)
    try:
        yield process
    finally:
        process.stop()


def http_get(topology: Topology, namespace: str, url: str, timeout: float = 2.0) -> tuple[int, str]:
    with topology.entered(namespace):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return int(response.status), response.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")


def tcp_open(topology: Topology, namespace: str, host: str, port: int) -> bool:
    with topology.entered(namespace), socket.create_connection((host, port), timeout=1.0):
        return True


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus counter's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- the echo workload -------------------------------------------------------------------


class Echo:
    """A TCP server in a pod: for each line it answers `Hostname=<pod>`, `IP=<peer ip>`,
    `ServicePort=<port>` and `Echo=<line>` (Istio echo's Key=Value lines), one thread."""

    def __init__(self, topology: Topology, pod: str, port: int, netns: str | None = None) -> None:
        self.pod = pod
        self.port = port
        with topology.entered(netns or topology.pods[pod].netns):
            self._server = socket.create_server(("0.0.0.0", port), backlog=64)
        self._thread = threading.Thread(target=self._serve, name=f"echo {pod}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, (peer, _) = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn, peer), daemon=True).start()

    def _answer(self, conn: socket.socket, peer: str) -> None:
        with conn, contextlib.suppress(OSError), conn.makefile("rwb") as stream:
            for line in stream:
                text = line.decode(errors="replace").rstrip("\n")
                stream.write(
                    f"Hostname={self.pod}\nIP={peer}\nServicePort={self.port}\nEcho={text}\n"
                    .encode()
                )  # fmt: skip
                stream.flush()

    def close(self) -> None:
        self._server.close()


@dataclass(frozen=True)
class Reply:
    hostname: str
    ip: str
    port: int


def dial(topology: Topology, pod: str, host: str, port: int) -> socket.socket:
    """A connection from inside `pod` (captured like any of the pod's own)."""
    with topology.entered(topology.pods[pod].netns):
        return socket.create_connection((host, port), timeout=IO_TIMEOUT)


def exchange(conn: socket.socket, text: str = "hi") -> Reply:
    """One line to an echo on `conn` and its answer; ConnectionError if the answer is cut."""
    conn.sendall(f"{text}\n".encode())
    fields: dict[str, str] = {}
    buffered = b""
    while len(fields) < 4:
        while b"\n" not in buffered:
            chunk = conn.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed after {fields}")
            buffered += chunk
        line, buffered = buffered.split(b"\n", 1)
        key, _, value = line.decode().partition("=")
        fields[key] = value
    assert fields["Echo"] == text, fields
    return Reply(fields["Hostname"], fields["IP"], int(fields["ServicePort"]))


def ask(topology: Topology, pod: str, host: str, port: int, text: str = "hi") -> Reply:
    """One request on a new connection from `pod` to host:port; the echo's answer."""
    with dial(topology, pod, host, port) as conn:
        try:
            return exchange(conn, text)
        except ConnectionError as e:
            raise ConnectionError(f"{pod} -> {host}:{port}: {e}") from e


@contextlib.contextmanager
def echoes(topology: Topology, pods: Mapping[str, int]) -> Iterator[dict[str, Echo]]:
    servers = {pod: Echo(topology, pod, port) for pod, port in pods.items()}
    try:
        yield servers
    finally:
        for server in servers.values():
            server.close()

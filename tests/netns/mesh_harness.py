"""What the netns tests run in pods and how they look at the mesh: TCP echo servers (Istio
echo's Key=Value lines), clients dialling from inside a pod, Prometheus counters."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ambient_fast.topology import Topology

IO_TIMEOUT = 10.0


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

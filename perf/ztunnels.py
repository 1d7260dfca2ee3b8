"""Two `ambient-fast ztunnel --proxy-mode dedicated`, one per pod, trusting one fake root:
started, awaited on their readiness port, and read (metrics, RSS, CPU time) while they run."""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ambient_fast.identity.ca import MeshCA
from perf.netns import PodPair, inside
from perf.processes import ManagedProcess, running
from perf.scenarios import Workspace
from perf.tools import PerfError

# ztunnel's ports (reference 01).
OUTBOUND_PORT = 15001
INBOUND_PORT = 15008
STATS_PORT = 15020
READINESS_PORT = 15021
_READY_DEADLINE_S = 30.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def local_xds_yaml(pods: PodPair) -> str:
    """Both pods as HBONE-captured workloads (istio/ztunnel examples/localhost.yaml shape)."""

    def workload(name: str, ip: str) -> str:
        return f"""\
- uid: Kubernetes//Pod/perf/{name}
  name: {name}
  namespace: perf
  serviceAccount: {name}
  workloadIps: ["{ip}"]
  protocol: HBONE
  node: {name}-node
  network: ""
"""

    return "workloads:\n" + workload("client", pods.client_ip) + workload("server", pods.server_ip)


def write_shared_root(directory: Path) -> Path:
    """FAKE_CA_ROOT for both ztunnels: one root, so each trusts the other's certificate."""
    ca = MeshCA.create()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "root-cert.pem").write_bytes(ca.root_pem)
    key = directory / "root-key.pem"
    key.write_bytes(ca.key_pem)
    key.chmod(0o600)
    return directory


def ztunnel_argv(ws: Workspace, xds: Path, root: Path, workload: str, ip: str) -> list[str]:
    return ws.ambient_fast(
        "ztunnel",
        "--proxy-mode", "dedicated",
        "--proxy-workload-info", f"perf/{workload}/{workload}",
        "--local-xds-path", str(xds),
        "--fake-ca", "true",
        "--fake-ca-root", str(root),
        "--instance-ip", ip,
    )  # fmt: skip


def _http_get(namespace: str, url: str, timeout: float = 2.0) -> tuple[int, str]:
    with inside(namespace):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, ""


def wait_ready(process: ManagedProcess, namespace: str) -> None:
    deadline = time.monotonic() + _READY_DEADLINE_S
    url = f"http://127.0.0.1:{READINESS_PORT}/healthz/ready"
    while True:
        if process.popen.poll() is not None:
            raise PerfError(f"{process.name} exited {process.popen.returncode}", process.log_tail())
        try:
            if _http_get(namespace, url)[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise PerfError(f"{process.name} not ready after {_READY_DEADLINE_S:.0f} s",
                            process.log_tail())  # fmt: skip
        time.sleep(0.05)


def connections_opened(namespace: str) -> int:
    """Sum of istio_tcp_connections_opened_total over every label set."""
    status, text = _http_get(namespace, f"http://127.0.0.1:{STATS_PORT}/metrics")
    if status != 200:
        raise PerfError(f"metrics in {namespace}: HTTP {status}")
    total = 0.0
    for line in text.splitlines():
        if line.startswith("istio_tcp_connections_opened_total"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise PerfError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    # /proc/PID/stat: utime and stime are fields 14 and 15, after the "(comm)" field.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


@dataclass(frozen=True, slots=True)
class RunningZtunnel:
    name: str
    process: ManagedProcess
    namespace: str

    @property
    def pid(self) -> int:
        return self.process.popen.pid


@contextmanager
def ztunnel_pair(ws: Workspace, pods: PodPair) -> Iterator[list[RunningZtunnel]]:
    """ztunnel A (client pod) and B (server pod), ready. Nothing reaches them yet: the ztunnel
    path installs istio-cni's rules only while it is measured (`pod_paths.ztunnel_path`)."""
    xds = ws.write("ztunnel-local.yaml", local_xds_yaml(pods))
    root = write_shared_root(ws.directory / "fake-ca-root")
    a_argv = pods.exec_argv(pods.client_ns, ztunnel_argv(ws, xds, root, "client", pods.client_ip))
    b_argv = pods.exec_argv(pods.server_ns, ztunnel_argv(ws, xds, root, "server", pods.server_ip))
    with (
        running("ztunnel-b", b_argv, ws.directory, INBOUND_PORT, cwd=ws.package_root) as b,
        running("ztunnel-a", a_argv, ws.directory, OUTBOUND_PORT, cwd=ws.package_root) as a,
    ):
        wait_ready(b, pods.server_ns)
        wait_ready(a, pods.client_ns)
        yield [
            RunningZtunnel("ztunnel A (client)", a, pods.client_ns),
            RunningZtunnel("ztunnel B (server)", b, pods.server_ns),
        ]

"""`ambient-fast perf cni`: what capture costs and how fast it starts, on a two-node mesh
(`ambient_fast.mesh.cluster`: control plane, `ambient-fast cni` and ztunnel per node).

One run, per capture mechanism (iptables, then eBPF, each on a fresh cluster):
- label -> capture: the time from writing the namespace label (the control plane watches the
  file) to both node agents reporting the pods captured and acked by ztunnel (goal <= 1 s);
  unlabel -> release likewise;
- pod-to-pod single-stream iperf3 across the nodes through both ztunnels (HBONE), proven by
  the server node's istio_tcp_connections_opened_total.
The anchor is the same iperf3 without capture (the namespace unlabelled), measured in the
same cluster before the label. Ratios: each mode / direct, and eBPF / iptables.
"""

from __future__ import annotations

import contextlib
import datetime
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from ambient_fast.mesh.cluster import Cluster, ClusterOptions, run_cluster
from ambient_fast.mesh.process import MeshError
from ambient_fast.topology import NodeSpec, PodSpec
from perf.host import host_facts
from perf.measure import iperf3_argv, parse_iperf3, whole_seconds
from perf.tools import PerfError, ToolError, ensure_tools, is_listening, tail, tool_path

NODES = [NodeSpec("node-a", "10.244.1.0/24"), NodeSpec("node-b", "10.244.2.0/24")]
CLIENT = PodSpec("client", "node-a", "10.244.1.10")
SERVER = PodSpec("server", "node-b", "10.244.2.10")
IPERF_PORT = 5201
ENROL_GOAL_S = 1.0
_SLACK_S = 20.0
_LOG_TIME = "%Y-%m-%d %H:%M:%S,%f"


def mesh_yaml(captured: bool) -> str:
    labels = "{istio.io/dataplane-mode: ambient}" if captured else "{}"
    pods = "".join(
        f"""---
apiVersion: v1
kind: Pod
metadata: {{name: {pod.name}, namespace: perf, labels: {{app: {pod.name}}}}}
spec: {{serviceAccountName: {pod.name}, nodeName: {pod.node}}}
status: {{podIP: {pod.ip}}}
"""
        for pod in (CLIENT, SERVER)
    )
    return f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: perf, labels: {labels}}}\n{pods}"


@dataclass
class ModeResult:
    mode: str
    direct_gbps: float | None = None
    captured_gbps: float | None = None
    enrol_s: float | None = None
    release_s: float | None = None
    error: str | None = None


def _progress(message: str) -> None:
    print(f"perf cni: {message}", file=sys.stderr, flush=True)


def _write(cluster: Cluster, captured: bool) -> float:
    """Rewrites the mesh file in one step; the wall-clock time it happened."""
    staged = cluster.work / "mesh.yaml.new"
    staged.write_text(mesh_yaml(captured))
    written = time.time()
    staged.replace(cluster.config_dir / "mesh.yaml")
    return written


def _logged_at(cluster: Cluster, node: str, line: str) -> float:
    """Wall-clock time of the agent's last log line containing `line` (waits for it)."""
    agent = cluster.agents[node]
    agent.wait_logged(line, within=_SLACK_S)
    stamp = [text for text in agent.log.read_text().splitlines() if line in text][-1][:23]
    return datetime.datetime.strptime(stamp, _LOG_TIME).timestamp()


def _switch(cluster: Cluster, captured: bool) -> float:
    """Seconds from the label edit until both agents are done with both pods."""
    verb = "captured" if captured else "released"
    written = _write(cluster, captured)
    done = [_logged_at(cluster, pod.node, f"{verb} perf/{pod.name} ") for pod in (CLIENT, SERVER)]
    return max(done) - written


@contextlib.contextmanager
def iperf_server(cluster: Cluster) -> Iterator[None]:
    netns = cluster.topology.pods[SERVER.name].netns
    argv = cluster.topology.exec_argv(netns, [tool_path("iperf3"), "-s", "-p", str(IPERF_PORT)])
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + _SLACK_S
        # The child's own view of its namespace (`ip netns exec` keeps the pid).
        while not is_listening(IPERF_PORT, server.pid):
            if server.poll() is not None or time.monotonic() > deadline:
                raise ToolError("iperf3", f"-s in {netns} did not listen on {IPERF_PORT}")
            time.sleep(0.02)
        yield
    finally:
        server.terminate()
        server.wait()


def _iperf(cluster: Cluster, seconds: int) -> float:
    netns = cluster.topology.pods[CLIENT.name].netns
    argv = [tool_path("iperf3"), *iperf3_argv(IPERF_PORT, 1, seconds, SERVER.ip)]
    done = subprocess.run(cluster.topology.exec_argv(netns, argv), capture_output=True, text=True,
                          timeout=seconds + _SLACK_S, check=False)  # fmt: skip
    gbps = parse_iperf3(done.stdout, done.stderr)
    if done.returncode != 0:
        raise ToolError("iperf3", f"exited {done.returncode}", tail(done.stderr or done.stdout))
    return gbps


def _opened(cluster: Cluster) -> float:
    total = 0.0
    for line in cluster.metrics(SERVER.node).splitlines():
        if line.startswith("istio_tcp_connections_opened_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def measure_mode(mode: str, work: Path, seconds: int) -> ModeResult:
    result = ModeResult(mode)
    (work / "config").mkdir(parents=True)
    (work / "config" / "mesh.yaml").write_text(mesh_yaml(False))
    try:
        options = ClusterOptions(redirect=mode)
        nodes, pods = NODES, [CLIENT, SERVER]
        with (
            run_cluster(nodes, pods, work / "config", work, options) as cluster,
            iperf_server(cluster),
        ):
            _progress(f"{mode}: direct (not captured)")
            result.direct_gbps = _iperf(cluster, seconds)
            result.enrol_s = _switch(cluster, captured=True)
            _progress(f"{mode}: captured in {result.enrol_s * 1000:.0f} ms; through ztunnel")
            before = _opened(cluster)
            result.captured_gbps = _iperf(cluster, seconds)
            if _opened(cluster) <= before:
                raise PerfError(f"{mode}: iperf3 did not go through ztunnel (no connection opened)")
            result.release_s = _switch(cluster, captured=False)
    except (PerfError, MeshError, OSError) as e:
        result.error = str(e).splitlines()[0]
        _progress(f"{mode}: {result.error}")
    return result


def _ratio(mine: float | None, base: float | None) -> float | None:
    return mine / base if mine and base else None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(results: list[ModeResult]) -> str:
    rows = [f"{'capture':<10} {'direct Gbit/s':>14} {'captured Gbit/s':>16} {'/direct':>8} "
            f"{'label->capture ms':>18} {'unlabel->release ms':>20}"]  # fmt: skip
    for r in results:
        if r.error:
            rows.append(f"{r.mode:<10} error: {r.error}")
            continue
        rows.append(
            f"{r.mode:<10} {_fmt(r.direct_gbps):>14} {_fmt(r.captured_gbps):>16} "
            f"{_fmt(_ratio(r.captured_gbps, r.direct_gbps)):>8} "
            f"{_fmt(r.enrol_s and r.enrol_s * 1000, 0):>18} "
            f"{_fmt(r.release_s and r.release_s * 1000, 0):>20}"
        )
    by_mode = {r.mode: r for r in results}
    ebpf, iptables = by_mode.get("ebpf"), by_mode.get("iptables")
    if ebpf and iptables:
        ratio = _ratio(ebpf.captured_gbps, iptables.captured_gbps)
        rows.append(f"ebpf / iptables through ztunnel: {_fmt(ratio)}x")
    for r in results:
        if r.enrol_s is not None:
            met = "met" if r.enrol_s <= ENROL_GOAL_S else "NOT met"
            rows.append(f"{r.mode}: label -> capture {r.enrol_s * 1000:.0f} ms "
                        f"(goal <= {ENROL_GOAL_S * 1000:.0f} ms: {met})")  # fmt: skip
    return "\n".join(rows)


def run(duration: float, json_path: str | None) -> int:
    try:
        ensure_tools({"iperf3": "iperf3"})
    except PerfError as e:
        print(f"perf cni: {e}", file=sys.stderr)
        return 2
    seconds = whole_seconds(duration)
    with tempfile.TemporaryDirectory(prefix="af-perf-cni-") as tmp:
        results = [measure_mode(mode, Path(tmp) / mode, seconds) for mode in ("iptables", "ebpf")]
    print(render(results))
    if json_path:
        Path(json_path).write_bytes(orjson.dumps(
            {"results": [asdict(r) for r in results], "host": host_facts()},
            option=orjson.OPT_INDENT_2,
        ))  # fmt: skip
    return 1 if any(r.error for r in results) else 0

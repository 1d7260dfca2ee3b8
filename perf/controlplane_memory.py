"""Server memory per workload: a control-plane process with the mesh loaded vs an empty one.

The child (`python -m perf.controlplane_memory --nodes N DIR`) is the control plane's own
pipeline: `ModelWatcher` loads DIR (parsed files and a digest per document stay held for
reloads), `ControlPlane` translates and publishes into its store (the Translation is then
dropped; the store keeps each resource's version and serialization), and
an `XdsServer` serves the store on loopback. The
parent connects one delta-ADS client (in its own process, so the client's memory is not
counted), syncs everything, then asks the child for its RSS. The same child on an empty DIR is
the baseline; (full - empty) / workloads is the cost of a workload.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import gc
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import orjson

from ambient_fast.controlplane.model import ModelWatcher
from ambient_fast.controlplane.run import ControlPlane
from ambient_fast.controlplane.translate import TranslateOptions
from ambient_fast.xds.proto.workload_pb2 import Address
from ambient_fast.xds.resources import ADDRESS_TYPE_URL
from ambient_fast.xds.server import ClientView, XdsServer
from perf.ads_client import ads_client
from perf.synthetic_mesh import topology
from perf.tools import PerfError, tail

# Stages the child reports, in order; "synced" is the one the goal is about.
STAGES = ("imported", "model", "published", "synced")
_CHILD_DEADLINE_S = 120.0
_SETTLE_DEADLINE_S = 30.0
_POLL_S = 0.005


def rss_kib() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in KiB, from /proc/self/status."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


def _trim_heap() -> bool:
    """glibc's malloc_trim(0): returns freed heap pages to the kernel (False if unavailable)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        return bool(ctypes.CDLL(name).malloc_trim(0))
    except (OSError, AttributeError):
        return False


# -- the child -------------------------------------------------------------------------------


async def _child(directory: Path, nodes: int) -> None:
    rss: dict[str, int] = {}

    def stage(name: str) -> None:
        gc.collect()
        rss[name] = rss_kib()[0]

    stage("imported")
    watcher = ModelWatcher([directory], topology=topology(nodes))
    # Subscribed before the ControlPlane: runs once the Mesh exists, before translation.
    watcher.subscribe(lambda mesh, report: stage("model"))
    plane = ControlPlane(watcher, TranslateOptions())
    watcher.poll()
    stage("published")  # translated and published; the Translation is dropped, as there
    store = plane.store
    async with XdsServer(store) as server:
        await server.start("127.0.0.1", 0)
        counts = {t: len(store.names(t)) for t in store.type_urls}
        workloads = sum(
            1
            for name in store.names(ADDRESS_TYPE_URL)
            if (resource := store.get(ADDRESS_TYPE_URL, name)) is not None
            and Address.FromString(resource.resource.value).WhichOneof("type") == "workload"
        )
        _say({"port": server.port, "resources": counts, "workloads": workloads})
        await _read_command("measure")
        deadline = asyncio.get_running_loop().time() + _SETTLE_DEADLINE_S
        while not _settled(server.clients()):
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"client never settled: {server.clients()}")
            await asyncio.sleep(_POLL_S)
        stage("synced")
        trimmed = _trim_heap()
        gc.collect()
        rss_after_trim, hwm = rss_kib()
        _say(
            {
                "rss_kib": rss,
                "rss_trimmed_kib": rss_after_trim if trimmed else None,
                "hwm_kib": hwm,
            }
        )
        await _read_command("exit")


def _settled(clients: list[ClientView]) -> bool:
    return len(clients) == 1 and clients[0].in_flight == 0 and clients[0].pending == 0


def _say(message: dict[str, object]) -> None:
    sys.stdout.buffer.write(orjson.dumps(message) + b"\n")
    sys.stdout.flush()


async def _read_command(expected: str) -> None:
    line = await asyncio.to_thread(sys.stdin.readline)
    if line.strip() != expected:
        raise SystemExit(0)  # the parent went away (EOF) or ended the run


def _die_with_parent() -> None:
    """prctl(PR_SET_PDEATHSIG, SIGTERM): a killed harness never leaves this child behind."""
    name = ctypes.util.find_library("c")
    if name is not None:
        pr_set_pdeathsig = 1  # linux/prctl.h
        ctypes.CDLL(name).prctl(pr_set_pdeathsig, signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    _die_with_parent()
    parser = argparse.ArgumentParser(prog="python -m perf.controlplane_memory")
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    # Plaintext on loopback is what this measures; the server's warning about it is noise.
    logging.getLogger("ambient_fast.xds").setLevel(logging.ERROR)
    import uvloop

    uvloop.run(_child(args.directory, args.nodes))
    return 0


# -- the parent ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessMemory:
    workloads: int
    resources: dict[str, int]
    rss_kib: dict[str, int]  # by stage
    rss_trimmed_kib: int | None  # after malloc_trim: what the process really holds
    hwm_kib: int  # peak RSS (the load)


@dataclass(frozen=True, slots=True)
class MemoryResult:
    empty: ProcessMemory
    full: ProcessMemory

    @property
    def per_workload_kib(self) -> float:
        return (self.full.rss_kib["synced"] - self.empty.rss_kib["synced"]) / self.full.workloads

    @property
    def per_workload_trimmed_kib(self) -> float | None:
        if self.full.rss_trimmed_kib is None or self.empty.rss_trimmed_kib is None:
            return None
        return (self.full.rss_trimmed_kib - self.empty.rss_trimmed_kib) / self.full.workloads

    def stage_deltas_kib(self) -> dict[str, int]:
        """How much each stage of the full process added beyond the empty one's same stage."""
        deltas, before = {}, 0
        for name in STAGES:
            extra = self.full.rss_kib[name] - self.empty.rss_kib[name]
            deltas[name] = extra - before
            before = extra
        return deltas


def _log_tail(path: Path) -> str:
    try:
        return tail(path.read_text(errors="replace"))
    except FileNotFoundError:
        return ""


async def _line(process: asyncio.subprocess.Process, stderr_path: Path) -> dict[str, object]:
    assert process.stdout is not None
    try:
        raw = await asyncio.wait_for(process.stdout.readline(), _CHILD_DEADLINE_S)
    except TimeoutError:
        raw = b""
    if not raw:
        raise PerfError("memory child: no answer", _log_tail(stderr_path))
    message: dict[str, object] = orjson.loads(raw)
    return message


async def measure_process(
    directory: Path, nodes: int, checkout: Path, stderr_path: Path
) -> ProcessMemory:
    """One child on `directory`, one client synced with it, its RSS by stage."""
    argv = [sys.executable, "-m", "perf.controlplane_memory", "--nodes", str(nodes), str(directory)]
    with stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=checkout,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    assert process.stdin is not None
    try:
        ready = await _line(process, stderr_path)
        resources = {str(k): int(v) for k, v in _mapping(ready["resources"]).items()}
        async with ads_client(int(str(ready["port"]))) as client:
            await client.subscribe(resources)
            await client.sync(resources)
            process.stdin.write(b"measure\n")
            await process.stdin.drain()
            measured = await _line(process, stderr_path)
            process.stdin.write(b"exit\n")
            await process.stdin.drain()
        await asyncio.wait_for(process.wait(), _CHILD_DEADLINE_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    trimmed = measured["rss_trimmed_kib"]
    return ProcessMemory(
        workloads=int(str(ready["workloads"])),
        resources=resources,
        rss_kib={str(k): int(v) for k, v in _mapping(measured["rss_kib"]).items()},
        rss_trimmed_kib=None if trimmed is None else int(str(trimmed)),
        hwm_kib=int(str(measured["hwm_kib"])),
    )


def _mapping(value: object) -> dict[str, int]:
    if not isinstance(value, dict):
        raise PerfError(f"memory child: expected a mapping, got {value!r}")
    return value


async def measure_memory(
    full_directory: Path, empty_directory: Path, nodes: int, checkout: Path, logs: Path
) -> MemoryResult:
    empty = await measure_process(empty_directory, nodes, checkout, logs / "memory-empty.log")
    full = await measure_process(full_directory, nodes, checkout, logs / "memory-full.log")
    if not full.workloads:
        raise PerfError("memory child: the mesh has no workloads")
    return MemoryResult(empty, full)


if __name__ == "__main__":
    sys.exit(main())

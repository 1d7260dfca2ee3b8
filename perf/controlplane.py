"""`ambient-fast perf controlplane`: the control plane's goals (issue 3) on a synthetic mesh.

1. translate: YAML load (`load_sources`), `translate()` and `publish` into a `ResourceStore`,
   timed separately, for 10k pods / 2k services / 1k AuthorizationPolicies.
2. push: the control plane's own pipeline (`ModelWatcher` -> `ControlPlane` -> `XdsServer` on
   loopback) with a real grpclib delta client subscribed (wildcard) and ACKing; one pod's
   labels are edited in its file and the watcher polls once (parse, assemble, translate,
   publish), timed until the client has the changed workload.
3. memory: RSS of a control-plane process holding the mesh, the store and one synced
   client, minus the same process empty, per workload (`perf.controlplane_memory`).

Every number is printed with its goal and the ratio measured / goal (<= 1 meets it).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import logging
import math
import os
import platform
import pstats
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
import uvloop

import ambient_fast
from ambient_fast.controlplane.model import LiveModel, ModelWatcher, load_sources
from ambient_fast.controlplane.run import ControlPlane
from ambient_fast.controlplane.translate import (
    LiveTranslation,
    TranslateOptions,
    Translation,
    translate,
)
from ambient_fast.xds.resources import ADDRESS_TYPE_URL, Change, Resources, ResourceStore
from ambient_fast.xds.server import XdsServer
from perf.ads_client import ads_client
from perf.controlplane_memory import MemoryResult, measure_memory
from perf.host import cpu_model
from perf.synthetic_mesh import MeshShape, SyntheticMesh
from perf.tools import PerfError

# The goals (issue 3, "Performance goals").
TRANSLATE_MAX_S = 2.0
PUSH_MAX_MS = 50.0
MEMORY_PER_WORKLOAD_MAX_KIB = 3.0
DEFAULT_EDITS = 20
TRANSLATE_RUNS = 3  # translate() is timed this many times; the median is reported
_SETTLE_DEADLINE_S = 30.0
_POLL_S = 0.001
_PROFILE_LINES = 20


def _progress(message: str) -> None:
    print(f"[perf controlplane] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Number:
    name: str
    value: float
    unit: str


@dataclass(frozen=True, slots=True)
class Goal:
    name: str
    value: float | None  # None: not measured (an error)
    unit: str
    limit: float

    @property
    def ratio(self) -> float | None:
        return None if self.value is None else self.value / self.limit

    @property
    def met(self) -> bool | None:
        return None if self.value is None else self.value <= self.limit


@dataclass
class Report:
    numbers: list[Number] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    samples_ms: dict[str, list[float]] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def number(self, name: str, value: float, unit: str) -> None:
        self.numbers.append(Number(name, value, unit))


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest rank: with 20 samples p99 is the largest one."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@contextmanager
def _timed(into: list[float]) -> Iterator[None]:
    gc.collect()  # garbage of the previous step is not this step's cost
    started = time.perf_counter()
    yield
    into.append(time.perf_counter() - started)


# -- 1. load, translate, publish -----------------------------------------------------------


def measure_translate(mesh: SyntheticMesh, report: Report) -> Translation:
    sources = mesh.sources()
    load: list[float] = []
    with _timed(load):
        result = load_sources(sources, mesh.topology)
    if result.report.errors:
        raise PerfError(
            f"synthetic mesh: {len(result.report.errors)} load errors", str(result.report.errors[0])
        )
    translations: list[float] = []
    translation = Translation()
    for _ in range(TRANSLATE_RUNS):
        with _timed(translations):
            translation = translate(result.mesh)
    store = ResourceStore()
    publish: list[float] = []
    with _timed(publish):
        translation.publish(store)
    again = translate(result.mesh)
    with _timed(publish):
        again.publish(store)  # nothing changed, yet every resource is serialized and hashed
    translate_s = statistics.median(translations)
    report.number("yaml load (load_sources)", load[0], "s")
    report.number(f"translate (median of {TRANSLATE_RUNS})", translate_s, "s")
    report.number("publish into an empty store", publish[0], "s")
    report.number("publish again, nothing changed", publish[1], "s")
    report.number("Address resources", len(translation.addresses), "")
    report.number("Authorization resources", len(translation.authorizations), "")
    shape = mesh.shape
    name = f"translate {shape.pods} pods / {shape.services} svc / {shape.policies} policies"
    report.goals.append(Goal(name, translate_s, "s", TRANSLATE_MAX_S))
    _progress(f"load {load[0]:.2f} s, translate {translate_s:.3f} s, publish {publish[0]:.3f} s")
    return translation


# -- 2. push one changed pod ------------------------------------------------------------------


class _TimedStore(ResourceStore):
    """The control plane's store, noting when a publish starts (its first `update` or
    `replace`)."""

    def __init__(self) -> None:
        super().__init__()
        self.publish_started: float | None = None

    def _note_start(self) -> None:
        if self.publish_started is None:
            self.publish_started = time.perf_counter()

    def update(
        self,
        type_url: str,
        upserts: Resources | None = None,
        removals: Iterable[str] = (),
    ) -> Change | None:
        self._note_start()
        return super().update(type_url, upserts, removals)

    def replace(self, type_url: str, resources: Resources) -> Change | None:
        self._note_start()
        return super().replace(type_url, resources)


@dataclass
class EditTimes:
    poll: list[float] = field(default_factory=list)  # stat, read, parse the file, assemble
    translate: list[float] = field(default_factory=list)
    publish: list[float] = field(default_factory=list)  # store updates: serialize, hash, diff
    deliver: list[float] = field(default_factory=list)  # publish done -> client has it

    def edit_to_client(self) -> list[float]:
        stages = zip(self.poll, self.translate, self.publish, self.deliver, strict=True)
        return [sum(s) for s in stages]

    def publish_to_client(self) -> list[float]:
        return [p + d for p, d in zip(self.publish, self.deliver, strict=True)]


async def _settled(server: XdsServer) -> None:
    """Until the server holds the client's ACK (else the next push would wait for it)."""
    deadline = time.monotonic() + _SETTLE_DEADLINE_S
    while True:
        views = server.clients()
        if views and all(v.in_flight == 0 and v.pending == 0 for v in views):
            return
        if time.monotonic() > deadline:
            raise PerfError(f"xds client never settled: {views}")
        await asyncio.sleep(_POLL_S)


def _write_files(mesh: SyntheticMesh, directory: Path) -> None:
    directory.mkdir()
    for source in mesh.sources():
        (directory / source.path).write_text(source.text)


async def _push(mesh: SyntheticMesh, edits: int, directory: Path, report: Report) -> EditTimes:
    """The control plane's own pipeline (`ModelWatcher` -> `ControlPlane` -> `XdsServer`) on
    files; each edit rewrites one file and polls once, as the watcher's next tick would."""
    _write_files(mesh, directory)
    watcher = ModelWatcher([directory], topology=mesh.topology)
    assembled: list[float] = []
    # Subscribed before the ControlPlane: called as soon as the new Mesh exists.
    watcher.subscribe(lambda mesh, report: assembled.append(time.perf_counter()))
    plane = ControlPlane(watcher, TranslateOptions())
    store = plane.store = _TimedStore()
    watcher.poll()
    expected = {t: len(store.names(t)) for t in store.type_urls}
    probe = mesh.probe
    times = EditTimes()
    async with XdsServer(store) as server:
        await server.start("127.0.0.1", 0)
        async with ads_client(server.port) as client:
            started = time.perf_counter()
            await client.subscribe(expected)
            responses = await client.sync(expected)
            await _settled(server)
            initial_s = time.perf_counter() - started
            report.number(f"initial push, {sum(expected.values())} resources", initial_s, "s")
            report.number("initial push, responses", responses, "")
            _progress(f"client synced in {initial_s:.2f} s ({responses} responses)")
            for i in range(edits + 1):  # the first edit warms up and is not counted
                source = mesh.edit_probe(f"edit-{i}")
                (directory / source.path).write_text(source.text)
                gc.collect()
                store.publish_started = None
                t0 = time.perf_counter()
                update = watcher.poll()
                t2 = time.perf_counter()
                response = await client.recv()
                t3 = time.perf_counter()
                if update is None or not update.published or store.publish_started is None:
                    raise PerfError(f"edit {i}: the watcher published nothing")
                names = {r.name for r in response.resources}
                if response.type_url != ADDRESS_TYPE_URL or names != {probe.uid}:
                    raise PerfError(
                        f"edit {i}: expected only {probe.uid}, got {sorted(names)[:5]}"
                        f" ({len(names)} names, {response.type_url})"
                    )
                await client.ack(response)
                await _settled(server)
                if i == 0:
                    continue
                t1, published = assembled[-1], store.publish_started
                times.poll.append(t1 - t0)
                times.translate.append(published - t1)
                times.publish.append(t2 - published)
                times.deliver.append(t3 - t2)
    return times


def measure_push(mesh: SyntheticMesh, edits: int, workspace: Path, report: Report) -> None:
    times = uvloop.run(_push(mesh, edits, workspace / "push", report))
    ms = {
        "edit -> client": [s * 1000 for s in times.edit_to_client()],
        "publish -> client": [s * 1000 for s in times.publish_to_client()],
        "stage: watcher poll (read, parse 1 file, assemble)": [s * 1000 for s in times.poll],
        "stage: translate": [s * 1000 for s in times.translate],
        "stage: publish (store update)": [s * 1000 for s in times.publish],
        "stage: server -> client": [s * 1000 for s in times.deliver],
    }
    report.samples_ms = ms
    for name, samples in ms.items():
        report.number(f"{name}, p50", statistics.median(samples), "ms")
        report.number(f"{name}, p99", percentile(samples, 0.99), "ms")
    for kind in ("edit -> client", "publish -> client"):
        for label, value in (
            ("p50", statistics.median(ms[kind])),
            ("p99", percentile(ms[kind], 0.99)),
        ):
            name = f"push 1 changed pod, {kind}, {label}"
            report.goals.append(Goal(name, value, "ms", PUSH_MAX_MS))
    p50 = statistics.median(ms["edit -> client"])
    _progress(f"{edits} edits: edit -> client p50 {p50:.1f} ms")


# -- 3. memory per workload ----------------------------------------------------------------


def measure_memory_per_workload(mesh: SyntheticMesh, workspace: Path, report: Report) -> None:
    full, empty = workspace / "mesh", workspace / "empty"
    _write_files(mesh, full)
    empty.mkdir()
    checkout = Path(__file__).resolve().parents[1]
    result: MemoryResult = uvloop.run(
        measure_memory(full, empty, mesh.shape.nodes, checkout, workspace)
    )
    per = result.per_workload_kib
    report.number("server RSS, empty (client synced)", result.empty.rss_kib["synced"], "KiB")
    report.number("server RSS, mesh (client synced)", result.full.rss_kib["synced"], "KiB")
    report.number("server RSS peak, mesh (the load)", result.full.hwm_kib, "KiB")
    for stage, kib in result.stage_deltas_kib().items():
        if stage != "imported":
            report.number(
                f"per workload, added by stage '{stage}'", kib / result.full.workloads, "KiB"
            )
    trimmed = result.per_workload_trimmed_kib
    if trimmed is not None:
        report.number("per workload after malloc_trim (freed heap returned)", trimmed, "KiB")
    peak = (result.full.hwm_kib - result.empty.hwm_kib) / result.full.workloads
    report.number("per workload at the peak (load + translation)", peak, "KiB")
    report.goals.append(
        Goal("server memory per workload (RSS)", per, "KiB", MEMORY_PER_WORKLOAD_MAX_KIB)
    )
    report.memory = {"empty": asdict(result.empty), "full": asdict(result.full)}
    _progress(f"memory: {per:.2f} KiB per workload")


# -- profiles --------------------------------------------------------------------------------


def profile(label: str, call: Callable[[], object]) -> str:
    """The top functions of one call, by own time and by cumulative time."""
    profiler = cProfile.Profile()
    profiler.enable()
    call()
    profiler.disable()
    out = io.StringIO()
    out.write(f"\n== profile: {label} ==\n")
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(_PROFILE_LINES)
    stats.sort_stats("cumulative").print_stats(_PROFILE_LINES)
    return out.getvalue()


def profiles(mesh: SyntheticMesh) -> str:
    live = LiveModel(mesh.topology)
    update = live.apply({s.path: s for s in mesh.sources()})
    store = ResourceStore()
    translation = LiveTranslation()
    translation.publish(update.mesh, store)
    text = profile("translate()", lambda: translate(update.mesh))
    source = mesh.edit_probe("profiled")

    def edit() -> None:
        translation.publish(live.apply({source.path: source}).mesh, store)

    return text + profile("one edit: LiveModel.apply + LiveTranslation.publish", edit)


# -- output --------------------------------------------------------------------------------


def _value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "KiB":
        return f"{value:,.2f} KiB" if value < 100 else f"{value:,.0f} KiB"
    return f"{value:,.0f}"


def render(mesh: SyntheticMesh, report: Report, edits: int) -> str:
    shape, counts = mesh.shape, mesh.counts
    lines = [
        f"ambient-fast perf controlplane: {shape.pods} pods, {shape.services} services,"
        f" {shape.policies} AuthorizationPolicies, {shape.namespaces} namespaces,"
        f" {shape.nodes} nodes (seed {shape.seed})",
        f"  input: {len(mesh.sources())} files, {counts.documents} documents,"
        f" {counts.yaml_bytes / 2**20:.1f} MiB of YAML; push: {edits} edits after 1 warm-up,"
        " p99 = nearest rank (the largest of 20)",
        "",
    ]
    for n in report.numbers:
        lines.append(f"  {n.name:<56}{_value(n.value, n.unit):>14}")
    lines += ["", f"{'goal':<58}{'measured':>14}  {'limit':<12}{'ratio':>7}  met"]
    for g in report.goals:
        ratio = "n/a" if g.ratio is None else f"{g.ratio:.2f}x"
        met = {True: "yes", False: "NO", None: "n/a"}[g.met]
        limit = f"<= {_value(g.limit, g.unit)}"
        lines.append(f"{g.name:<58}{_value(g.value, g.unit):>14}  {limit:<12}{ratio:>7}  {met}")
    lines.append("  (ratio = measured / limit: at most 1.00x meets the goal)")
    for error in report.errors:
        lines += ["", f"error: {error}"]
    return "\n".join(lines)


def host_facts() -> dict[str, object]:
    import yaml  # type: ignore[import-untyped,unused-ignore]
    from google.protobuf import __version__ as protobuf_version
    from google.protobuf.internal import api_implementation

    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "ambient_fast": ambient_fast.__version__,
        "protobuf": f"{protobuf_version} ({api_implementation.Type()})",
        "libyaml": bool(getattr(yaml, "__with_libyaml__", False)),
    }


def write_json(path: Path, mesh: SyntheticMesh, report: Report, edits: int) -> None:
    document = {
        "shape": asdict(mesh.shape),
        "input": mesh.counts.as_dict(),
        "edits": edits,
        "results": [asdict(n) for n in report.numbers],
        "goals": [
            {
                "name": g.name,
                "value": g.value,
                "unit": g.unit,
                "goal": f"<= {g.limit} {g.unit}",
                "ratio": g.ratio,
                "met": g.met,
            }
            for g in report.goals
        ],
        "push_samples_ms": report.samples_ms,
        "memory": report.memory,
        "errors": report.errors,
        "host": host_facts(),
    }
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")


# -- entry points --------------------------------------------------------------------------


def run(
    json_path: str | None,
    *,
    shape: MeshShape | None = None,
    edits: int = DEFAULT_EDITS,
    with_profiles: bool = False,
) -> int:
    """Returns 0 when everything was measured (goals met or not), 1 when a part failed."""
    with _sigterm_unwinds():
        return _run(json_path, shape, edits, with_profiles)


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM -> SystemExit, so the servers close and the memory child is killed."""

    def exit_on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(json_path: str | None, shape: MeshShape | None, edits: int, with_profiles: bool) -> int:
    # Plaintext on loopback is what this measures; the server's warning about it is noise.
    logging.getLogger("ambient_fast.xds").setLevel(logging.ERROR)
    started = time.perf_counter()
    mesh = SyntheticMesh(shape)
    _progress(
        f"generated {mesh.counts.documents} documents in {time.perf_counter() - started:.1f} s"
    )
    report = Report()
    parts: list[tuple[str, Callable[[], object]]] = [
        ("translate", lambda: measure_translate(mesh, report)),
    ]
    with tempfile.TemporaryDirectory(prefix="ambient-fast-perf-cp-") as workspace:
        parts.append(("push", lambda: measure_push(mesh, edits, Path(workspace), report)))
        parts.append(("memory", lambda: measure_memory_per_workload(mesh, Path(workspace), report)))
        for name, part in parts:
            try:
                part()
            except (PerfError, OSError) as exc:
                report.errors.append(f"{name}: {exc}")
                _progress(f"{name}: error: {exc}")
    print(render(mesh, report, edits))
    translate_goal = next((g for g in report.goals if g.name.startswith("translate")), None)
    if with_profiles or (translate_goal is not None and translate_goal.met is False):
        print(profiles(mesh))
    if json_path:
        write_json(Path(json_path), mesh, report, edits)
        print(f"\nJSON written to {json_path}")
    _progress(f"done in {time.perf_counter() - started:.1f} s")
    return 1 if report.errors else 0


def main(argv: list[str] | None = None) -> int:
    defaults = MeshShape()
    parser = argparse.ArgumentParser(prog="python -m perf.controlplane", description=__doc__)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--edits", type=int, default=DEFAULT_EDITS)
    parser.add_argument("--profile", action="store_true", help="print cProfile hot spots")
    for name in ("pods", "services", "policies", "namespaces", "nodes", "seed"):
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    args = parser.parse_args(argv)
    if args.edits < 1:
        parser.error("--edits must be at least 1")
    try:
        shape = MeshShape(
            pods=args.pods,
            services=args.services,
            policies=args.policies,
            namespaces=args.namespaces,
            nodes=args.nodes,
            seed=args.seed,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return run(args.json, shape=shape, edits=args.edits, with_profiles=args.profile)


if __name__ == "__main__":
    sys.exit(main())

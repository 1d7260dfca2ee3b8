"""Reload on change: `LiveModel` (sans-IO: file contents in, Mesh out) and `ModelWatcher`.

A file that fails as a whole (YAML syntax error, unreadable) keeps its last good version:
its objects stay in the mesh and the failure is reported until a fixed edit arrives. A
file that parses is taken as written (its bad documents reported and skipped, as on the
first load); a deleted file takes its objects with it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from ambient_fast.controlplane.model.edits import FileEdit, reassemble
from ambient_fast.controlplane.model.loader import (
    Assembly,
    LoadResult,
    ParsedFile,
    assemble_files,
    parse_file,
)
from ambient_fast.controlplane.model.mesh import Mesh
from ambient_fast.controlplane.model.placement import Topology
from ambient_fast.controlplane.model.report import LoadReport, ModelError, Severity
from ambient_fast.controlplane.model.sources import (
    FileStamp,
    SourceFile,
    expand_paths,
    read_source,
    stat_sources,
    text_digest,
)

log = logging.getLogger(__name__)

# Seconds between polls: an edit waits at most this long to be seen, well within the push goal
# (issue 3: one changed pod at the proxies within 50 ms); polling stays portable (no inotify).
DEFAULT_POLL_INTERVAL = 0.025
# A poll that finds nothing (a stat of every file) may use at most this share of one core:
# with many files the watcher waits longer than `interval` between polls.
MAX_IDLE_POLL_SHARE = 0.05
# Files modified this close before a scan are re-read even with an unchanged stamp:
# coarse filesystem timestamps can hide a second write in the same tick ("racy git").
RACY_WINDOW_NS = 2_000_000_000

FileChange = SourceFile | ModelError | None  # new contents, unreadable, or deleted


@dataclass(frozen=True, slots=True)
class Update:
    """The outcome of applying changes: the current result and whether the Mesh is new."""

    result: LoadResult
    published: bool

    @property
    def mesh(self) -> Mesh:
        return self.result.mesh

    @property
    def report(self) -> LoadReport:
        return self.result.report


@dataclass(frozen=True, slots=True)
class _FileState:
    good: ParsedFile | None  # the last version that parsed, None if it never did
    digest: bytes | None  # of the text of `good` (the text itself is not kept)
    failure: ModelError | None  # why the current contents are not used


class LiveModel:
    """The current files and the Mesh built from them; feed it changes, get updates.

    An edit reparses only the documents it changed (`parse_file` with the last parse) and,
    when it keeps the mesh's shape, patches the last Mesh (`reassemble`) instead of
    assembling every file again; either way the result is what a full load would give.
    """

    def __init__(self, topology: Topology | None = None) -> None:
        self._topology = topology or Topology()
        self._files: dict[str, _FileState] = {}
        self._base: Assembly | None = None  # the last assembly, before per-file failures
        self._result: LoadResult | None = None

    @property
    def result(self) -> LoadResult | None:
        return self._result

    def apply(self, changes: Mapping[str, FileChange] | Iterable[tuple[str, FileChange]]) -> Update:
        """Apply new contents per path (None: deleted); rebuild if anything usable changed.
        Given as (path, change) pairs, each file can be read only when its turn comes: one
        text in memory at a time, not all of them."""
        edits: list[tuple[ParsedFile | None, ParsedFile | None]] = []
        pairs = changes.items() if isinstance(changes, Mapping) else changes
        for path, change in pairs:
            state = self._files.get(path)
            good, digest = (state.good, state.digest) if state is not None else (None, None)
            if change is None:
                if self._files.pop(path, None) is not None and good is not None:
                    edits.append((good, None))
            elif isinstance(change, ModelError):
                self._files[path] = _FileState(good, digest, change)
            elif (new_digest := text_digest(change.text)) == digest:
                self._files[path] = _FileState(good, digest, None)  # touched, or an edit undone
            else:
                parsed = parse_file(change, good)
                if parsed.failure is None:
                    self._files[path] = _FileState(parsed, new_digest, None)
                    edits.append((good, parsed))
                else:
                    self._files[path] = _FileState(good, digest, parsed.failure)
        changed = bool(edits) or self._base is None
        if changed:
            self._base = self._assemble(edits)
        assert self._base is not None
        base = self._base.result
        self._result = LoadResult(base.mesh, LoadReport((*self._failures(), *base.report.problems)))
        return Update(self._result, published=changed)

    def _assemble(self, edits: list[tuple[ParsedFile | None, ParsedFile | None]]) -> Assembly:
        if self._base is not None:
            modified: list[FileEdit] = [(b, a) for b, a in edits if b is not None and a is not None]
            if len(modified) == len(edits):  # no file added or removed
                patched = reassemble(self._base, modified, self._topology)
                if patched is not None:
                    return patched
        previous = self._base.result.mesh.allocations if self._base is not None else None
        good_files = [s.good for _, s in sorted(self._files.items()) if s.good is not None]
        return assemble_files(good_files, self._topology, previous)

    def _failures(self) -> list[ModelError]:
        problems = []
        for path, state in sorted(self._files.items()):
            if state.failure is None:
                continue
            problems.append(state.failure)
            if state.good is not None:
                kept = len(state.good.objects)
                problems.append(
                    ModelError(
                        path,
                        f"keeping the last good version of this file ({kept} objects)",
                        severity=Severity.WARNING,
                    )
                )
        return problems


class ModelWatcher:
    """Polls the given files and directories by mtime/size and publishes each new Mesh.

    `poll()` does one check synchronously (tests call it directly); `run()` polls every
    `interval` seconds using the injected `sleep` (longer when a poll that finds nothing
    takes more than MAX_IDLE_POLL_SHARE of that). Subscribers get `(mesh, report)` for each
    published Mesh; a broken edit is logged and reported but not published.
    """

    def __init__(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        topology: Topology | None = None,
        interval: float = DEFAULT_POLL_INTERVAL,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        now_ns: Callable[[], int] = time.time_ns,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._paths: Sequence[str | os.PathLike[str]] = tuple(paths)
        self._interval = interval
        self._sleep = sleep
        self._now_ns = now_ns
        self._clock = clock
        self._model = LiveModel(topology)
        self._stamps: dict[str, FileStamp] = {}
        self._missing: dict[str, ModelError] = {}
        self._last_scan_ns = 0
        self._subscribers: list[Callable[[Mesh, LoadReport], None]] = []

    @property
    def mesh(self) -> Mesh | None:
        result = self._model.result
        return result.mesh if result is not None else None

    @property
    def report(self) -> LoadReport | None:
        result = self._model.result
        return result.report if result is not None else None

    def subscribe(self, callback: Callable[[Mesh, LoadReport], None]) -> None:
        self._subscribers.append(callback)

    def poll(self) -> Update | None:
        """Check the paths once; returns the update if anything changed, else None."""
        scan_started = self._now_ns()
        files, missing = expand_paths(self._paths)
        stamps = stat_sources(files)
        changed: dict[str, bool] = {}  # path -> whether it can be read
        for path, stamp in stamps.items():
            before = self._stamps.get(path)
            racy = stamp is not None and stamp.mtime_ns >= self._last_scan_ns - RACY_WINDOW_NS
            if stamp is None or stamp != before or racy:
                changed[path] = stamp is not None
        for path in self._stamps.keys() - stamps.keys():
            changed[path] = False
        self._stamps = {p: s for p, s in stamps.items() if s is not None}
        self._last_scan_ns = scan_started
        new_missing = {str(p.path): p for p in missing}
        if not changed and new_missing == self._missing and self._model.result is not None:
            return None
        self._missing = new_missing
        update = self._model.apply(
            (path, read_source(path) if readable else None) for path, readable in changed.items()
        )
        if missing:
            update = Update(
                LoadResult(update.mesh, LoadReport((*missing, *update.report.problems))),
                update.published,
            )
        for problem in update.report.problems:
            if problem.file_level:
                log.warning("%s", problem)
        if update.published:
            log.info(
                "mesh reloaded: %d objects, %d problems",
                len(update.mesh),
                len(update.report.problems),
            )
            for callback in self._subscribers:
                callback(update.mesh, update.report)
        return update

    async def run(self) -> None:
        """Poll forever (cancel the task to stop); the first poll happens immediately."""
        while True:
            interval = self._interval
            started = self._clock()
            try:
                if self.poll() is None:
                    spent = self._clock() - started
                    interval = max(interval, spent * (1 / MAX_IDLE_POLL_SHARE - 1))
            except Exception:  # one bad poll must not stop the control plane
                log.exception("model poll failed")
            await self._sleep(interval)

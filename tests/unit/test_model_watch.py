"""Reloads: an edit publishes a new Mesh; a broken edit keeps the file's last good version."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from ambient_fast.controlplane.model import (
    LiveModel,
    LoadReport,
    Mesh,
    ModelError,
    ModelWatcher,
    SourceFile,
)
from ambient_fast.controlplane.model.watch import MAX_IDLE_POLL_SHARE

SERVICES = """\
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 80}]}
"""
PODS = """\
apiVersion: v1
kind: Pod
metadata: {name: web-1, labels: {app: web}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, labels: {app: web}}
"""
BROKEN = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1\n"


def names(mesh: Mesh) -> list[str]:
    return [f"{o.KIND}/{o.name}" for o in mesh.objects()]


# -- LiveModel: the sans-IO core ----------------------------------------------------------------


def test_first_apply_publishes() -> None:
    live = LiveModel()
    update = live.apply({"svc.yaml": SourceFile("svc.yaml", SERVICES)})
    assert update.published and update.report.problems == ()
    assert names(update.mesh) == ["Service/web"]


def test_edit_publishes_a_new_mesh_and_keeps_addresses() -> None:
    live = LiveModel()
    first = live.apply(
        {"svc.yaml": SourceFile("svc.yaml", SERVICES), "pods.yaml": SourceFile("pods.yaml", PODS)}
    )
    edited = PODS + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: a-new, labels: {app: web}}\n"
    second = live.apply({"pods.yaml": SourceFile("pods.yaml", edited)})
    assert second.published and second.mesh is not first.mesh
    assert len(second.mesh.pods) == 3 and len(first.mesh.pods) == 2  # the old snapshot is intact
    for pod in first.mesh.pods:
        assert second.mesh.pod(pod.namespace, pod.name) == pod  # same node and IP as before
    web = second.mesh.service("default", "web")
    assert web is not None and len(second.mesh.service_pods(web)) == 3


def test_broken_edit_keeps_the_last_good_version_of_that_file_and_fix_resumes() -> None:
    live = LiveModel()
    good = live.apply(
        {"svc.yaml": SourceFile("svc.yaml", SERVICES), "pods.yaml": SourceFile("pods.yaml", PODS)}
    )
    broken = live.apply({"pods.yaml": SourceFile("pods.yaml", BROKEN)})
    assert not broken.published
    assert broken.mesh is good.mesh
    failure, kept = broken.report.problems
    assert failure.file_level and failure.path == "pods.yaml" and failure.line == 4
    assert str(failure).startswith("pods.yaml:4: YAML syntax error")
    assert str(kept) == "warning: pods.yaml: keeping the last good version of this file (2 objects)"
    # another file changes meanwhile: published, with the broken file's last good objects
    renamed = SERVICES.replace("name: web", "name: web2")
    other = live.apply({"svc.yaml": SourceFile("svc.yaml", renamed)})
    assert other.published
    assert names(other.mesh) == ["Pod/web-1", "Pod/web-2", "Service/web2"]
    assert [p.file_level for p in other.report.problems] == [True, False]
    # the fix resumes: published, no problems left
    fixed = PODS.replace("web-2", "web-3")
    resumed = live.apply({"pods.yaml": SourceFile("pods.yaml", fixed)})
    assert resumed.published and resumed.report.problems == ()
    assert names(resumed.mesh) == ["Pod/web-1", "Pod/web-3", "Service/web2"]


def test_reverting_a_broken_edit_clears_the_error_without_a_rebuild() -> None:
    live = LiveModel()
    good = live.apply({"pods.yaml": SourceFile("pods.yaml", PODS)})
    live.apply({"pods.yaml": SourceFile("pods.yaml", BROKEN)})
    reverted = live.apply({"pods.yaml": SourceFile("pods.yaml", PODS)})
    assert not reverted.published and reverted.mesh is good.mesh
    assert reverted.report.problems == ()


def test_a_file_that_never_parsed_contributes_nothing() -> None:
    live = LiveModel()
    update = live.apply(
        {"svc.yaml": SourceFile("svc.yaml", SERVICES), "pods.yaml": SourceFile("pods.yaml", BROKEN)}
    )
    assert update.published and names(update.mesh) == ["Service/web"]
    assert [str(p).split(":")[0] for p in update.report.problems] == ["pods.yaml"]


def test_unreadable_file_keeps_last_good_and_deletion_drops_objects() -> None:
    live = LiveModel()
    live.apply(
        {"pods.yaml": SourceFile("pods.yaml", PODS), "svc.yaml": SourceFile("svc.yaml", SERVICES)}
    )
    unreadable = live.apply(
        {"pods.yaml": ModelError("pods.yaml", "cannot read: Permission denied")}
    )
    assert not unreadable.published and len(unreadable.mesh.pods) == 2
    assert unreadable.report.lines()[0] == "pods.yaml: cannot read: Permission denied"
    deleted = live.apply({"pods.yaml": None})
    assert deleted.published and names(deleted.mesh) == ["Service/web"]
    assert deleted.report.problems == ()


def test_document_errors_in_an_edit_are_reported_and_skipped() -> None:
    live = LiveModel()
    live.apply({"svc.yaml": SourceFile("svc.yaml", SERVICES)})
    bad_port = SERVICES.replace("port: 80", "port: eighty")
    update = live.apply({"svc.yaml": SourceFile("svc.yaml", bad_port)})
    assert update.published and update.mesh.services == ()
    assert update.report.lines() == [
        "svc.yaml doc 1 Service default/web: spec.ports[0].port: expected an integer 1-65535, "
        'got "eighty"'
    ]


def test_unchanged_text_is_not_a_change() -> None:
    live = LiveModel()
    first = live.apply({"svc.yaml": SourceFile("svc.yaml", SERVICES)})
    again = live.apply({"svc.yaml": SourceFile("svc.yaml", SERVICES)})
    assert not again.published and again.mesh is first.mesh


# -- ModelWatcher: files on disk ----------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.meshes: list[Mesh] = []

    def __call__(self, mesh: Mesh, report: LoadReport) -> None:
        self.meshes.append(mesh)


def write(path: Path, text: str) -> None:
    """Write and move the mtime forward, as a later edit would (filesystem ticks are coarse)."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    stamp = max(path.stat().st_mtime_ns, before + 1_000_000)
    os.utime(path, ns=(stamp, stamp))


@pytest.fixture
def mesh_dir(tmp_path: Path) -> Path:
    (tmp_path / "svc.yaml").write_text(SERVICES)
    (tmp_path / "pods.yml").write_text(PODS)
    (tmp_path / "notes.txt").write_text("not yaml: [")  # other extensions are ignored
    return tmp_path


def test_watcher_edit_broken_edit_fix(mesh_dir: Path) -> None:
    watcher = ModelWatcher([mesh_dir])
    seen = Recorder()
    watcher.subscribe(seen)
    first = watcher.poll()
    assert first is not None and first.published and len(seen.meshes) == 1
    assert watcher.mesh is not None and len(watcher.mesh.pods) == 2
    # edit
    write(mesh_dir / "pods.yml", PODS.replace("web-2", "web-9"))
    edited = watcher.poll()
    assert edited is not None and edited.published and len(seen.meshes) == 2
    assert [p.name for p in watcher.mesh.pods] == ["web-1", "web-9"]
    # broken edit: reported, not published, last good objects stay
    write(mesh_dir / "pods.yml", BROKEN)
    broken = watcher.poll()
    assert broken is not None and not broken.published and len(seen.meshes) == 2
    assert watcher.report is not None and watcher.report.file_failures[0].path == str(
        mesh_dir / "pods.yml"
    )
    assert [p.name for p in watcher.mesh.pods] == ["web-1", "web-9"]
    # fix
    write(mesh_dir / "pods.yml", PODS)
    fixed = watcher.poll()
    assert fixed is not None and fixed.published and fixed.report.problems == ()
    assert [p.name for p in watcher.mesh.pods] == ["web-1", "web-2"]


def test_watcher_sees_new_and_deleted_files(mesh_dir: Path) -> None:
    watcher = ModelWatcher([mesh_dir])
    watcher.poll()
    sub = mesh_dir / "more"
    sub.mkdir()
    write(sub / "sa.yaml", "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: web}\n")
    added = watcher.poll()
    assert added is not None and added.published
    assert watcher.mesh is not None and len(watcher.mesh.service_accounts) == 1
    (mesh_dir / "svc.yaml").unlink()
    removed = watcher.poll()
    assert removed is not None and removed.published and watcher.mesh.services == ()


def test_watcher_quiet_when_nothing_changed(mesh_dir: Path) -> None:
    clock = iter(range(10**12, 10**13, 10**10))  # 10 s between scans: no racy re-reads
    watcher = ModelWatcher([mesh_dir], now_ns=lambda: next(clock))
    watcher.poll()
    os.utime(mesh_dir / "svc.yaml", ns=(1, 1))  # old mtime: not racy
    os.utime(mesh_dir / "pods.yml", ns=(1, 1))
    watcher.poll()
    assert watcher.poll() is None


def test_watcher_rereads_racy_files_with_unchanged_stamp(mesh_dir: Path) -> None:
    watcher = ModelWatcher([mesh_dir])
    watcher.poll()
    path = mesh_dir / "svc.yaml"
    stamp = path.stat().st_mtime_ns
    path.write_text(SERVICES.replace("name: web", "name: bew"))  # same size
    os.utime(path, ns=(stamp, stamp))  # same tick: the stamp does not change
    update = watcher.poll()
    assert update is not None and update.published
    assert watcher.mesh is not None and [s.name for s in watcher.mesh.services] == ["bew"]


def test_watcher_reports_missing_paths(tmp_path: Path) -> None:
    watcher = ModelWatcher([tmp_path / "absent.yaml"])
    update = watcher.poll()
    assert update is not None
    assert update.report.lines() == [f"{tmp_path / 'absent.yaml'}: no such file or directory"]
    assert len(update.mesh) == 0


async def test_run_polls_on_the_injected_interval(mesh_dir: Path) -> None:
    intervals: list[float] = []
    polled = asyncio.Event()

    async def fake_sleep(seconds: float) -> None:
        intervals.append(seconds)
        if len(intervals) == 1:
            write(mesh_dir / "svc.yaml", SERVICES.replace("port: 80", "port: 81"))
        else:
            polled.set()
            await asyncio.Event().wait()  # park until cancelled

    watcher = ModelWatcher([mesh_dir], interval=0.25, sleep=fake_sleep)
    seen = Recorder()
    watcher.subscribe(seen)
    task = asyncio.create_task(watcher.run())
    await asyncio.wait_for(polled.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert intervals == [0.25, 0.25]
    assert len(seen.meshes) == 2
    assert seen.meshes[-1].services[0].ports[0].port == 81


async def test_run_waits_longer_when_an_idle_poll_is_slow(mesh_dir: Path) -> None:
    """A poll that finds nothing may take at most MAX_IDLE_POLL_SHARE of a core."""
    intervals: list[float] = []
    done = asyncio.Event()
    ticks = iter([0.0, 1.0, 1.01, 2.0, 2.0001])  # the first poll loads; then 10 ms, 0.1 ms

    async def fake_sleep(seconds: float) -> None:
        intervals.append(seconds)
        if len(intervals) == 3:
            done.set()
            await asyncio.Event().wait()

    watcher = ModelWatcher(
        [mesh_dir],
        interval=0.025,
        sleep=fake_sleep,
        now_ns=iter(range(10**12, 10**13, 10**10)).__next__,  # no racy re-reads
        clock=lambda: next(ticks),
    )
    os.utime(mesh_dir / "svc.yaml", ns=(1, 1))
    os.utime(mesh_dir / "pods.yml", ns=(1, 1))
    task = asyncio.create_task(watcher.run())
    await asyncio.wait_for(done.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert intervals == [0.025, pytest.approx(0.01 * (1 / MAX_IDLE_POLL_SHARE - 1)), 0.025]

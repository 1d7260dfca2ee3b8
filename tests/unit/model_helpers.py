"""Shared helpers for the mesh model tests: load YAML text without touching the disk."""

from __future__ import annotations

import textwrap
from pathlib import Path

from ambient_fast.controlplane.model import (
    LoadResult,
    MeshObject,
    SourceFile,
    Topology,
    load_sources,
    parse_file,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "meshes"


def load(text: str, path: str = "mesh.yaml", topology: Topology | None = None) -> LoadResult:
    return load_sources([SourceFile(path, textwrap.dedent(text))], topology)


def only(text: str) -> MeshObject:
    """The single object a one-document text parses to (fails on any problem)."""
    parsed = parse_file(SourceFile("mesh.yaml", textwrap.dedent(text)))
    assert not parsed.problems, [str(p) for p in parsed.problems]
    assert len(parsed.objects) == 1, parsed.objects
    return parsed.objects[0]


def errors(text: str) -> list[str]:
    """Every problem of loading `text`, as the lines users see."""
    return load(text).report.lines()

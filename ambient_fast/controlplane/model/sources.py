"""YAML in: files and directories -> `SourceFile`s -> raw documents with their line numbers.

Sans-IO split: `split_documents` works on text; only `read_sources` and `stat_sources`
touch the filesystem.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped,unused-ignore]

from ambient_fast.controlplane.model.report import ModelError

YAML_SUFFIXES = (".yaml", ".yml")
# libyaml's parser when PyYAML was built with it (much faster); same results either way.
_Loader: Any = getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One file's text, under the name reports use for it."""

    path: str
    text: str


@dataclass(frozen=True, slots=True)
class RawDocument:
    index: int  # 1-based position in the file
    line: int  # 1-based line where it starts
    body: object


@dataclass(frozen=True, slots=True)
class FileStamp:
    """What the watcher compares to notice a change without reading the file."""

    mtime_ns: int
    size: int


def split_documents(source: SourceFile) -> tuple[list[RawDocument], ModelError | None]:
    """All documents of a file, or none and the syntax error (a file is used whole or not)."""
    documents: list[RawDocument] = []
    loader = _Loader(source.text)
    try:
        while loader.check_node():
            node = loader.get_node()
            body = _Builder(loader).build(node)
            documents.append(RawDocument(len(documents) + 1, node.start_mark.line + 1, body))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        return [], ModelError(
            source.path,
            f"YAML syntax error: {problem}",
            line=mark.line + 1 if mark is not None else None,
        )
    except yaml.YAMLError as exc:
        return [], ModelError(source.path, f"YAML error: {exc}")
    finally:
        loader.dispose()
    return documents, None


_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"


class _Builder:
    """Nodes -> Python values, as PyYAML's SafeConstructor would build them, about twice as
    fast: strings, mappings and lists (nearly all of a manifest) are built here; every other
    scalar and any unusual node (merge keys, explicit tags) goes to the SafeConstructor.
    Aliases share one value (as in PyYAML), so alias bombs cost no memory.
    """

    __slots__ = ("_built", "_loader")

    def __init__(self, loader: Any) -> None:
        self._loader = loader
        self._built: dict[int, object] = {}

    def build(self, node: Any) -> object:
        try:
            return self._value(node)
        except _Unusual:
            return self._loader.construct_document(node)
        finally:
            self._loader.constructed_objects = {}

    def _value(self, node: Any) -> object:
        cls = node.__class__
        if cls is _ScalarNode:
            if node.tag == _STR:
                return node.value
            return self._loader.construct_object(node)
        known = self._built.get(id(node))
        if known is not None:
            return known
        if cls is _MappingNode and node.tag == _MAP:
            mapping: dict[object, object] = {}
            self._built[id(node)] = mapping
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE or key_node.__class__ is not _ScalarNode:
                    raise _Unusual
                mapping[self._value(key_node)] = self._value(value_node)
            return mapping
        if cls is _SequenceNode and node.tag == _SEQ:
            sequence: list[object] = []
            self._built[id(node)] = sequence
            sequence.extend(self._value(item) for item in node.value)
            return sequence
        raise _Unusual


class _Unusual(Exception):
    """A node the fast builder leaves to PyYAML's SafeConstructor."""


_ScalarNode: Any = yaml.ScalarNode
_MappingNode: Any = yaml.MappingNode
_SequenceNode: Any = yaml.SequenceNode


def expand_paths(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[str], list[ModelError]]:
    """Files named directly, plus *.yaml / *.yml under directories (recursively), sorted."""
    files: list[str] = []
    problems: list[ModelError] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(
                str(p) for p in path.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file()
            )
            files.extend(found)
        elif path.exists():
            files.append(str(path))
        else:
            problems.append(ModelError(str(path), "no such file or directory"))
    return list(dict.fromkeys(files)), problems  # a file named twice loads once


def read_source(path: str) -> SourceFile | ModelError:
    try:
        return SourceFile(path, Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return ModelError(path, f"cannot read: {reason}")


def read_sources(
    paths: Iterable[str | os.PathLike[str]],
) -> tuple[list[SourceFile], list[ModelError]]:
    files, problems = expand_paths(paths)
    sources: list[SourceFile] = []
    for file in files:
        result = read_source(file)
        if isinstance(result, ModelError):
            problems.append(result)
        else:
            sources.append(result)
    return sources, problems


def stat_sources(files: Iterable[str]) -> dict[str, FileStamp | None]:
    """mtime and size of each file; None for one that vanished or cannot be stat'ed."""
    stamps: dict[str, FileStamp | None] = {}
    for file in files:
        try:
            st = os.stat(file)
        except OSError:
            stamps[file] = None
        else:
            stamps[file] = FileStamp(st.st_mtime_ns, st.st_size)
    return stamps

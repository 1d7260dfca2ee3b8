"""YAML in: files and directories -> `SourceFile`s -> raw documents with their line numbers.

Sans-IO split: `split_documents` and `split_chunks` work on text; only `read_sources` and
`stat_sources` touch the filesystem.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator
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
class TextChunk:
    """A stretch of a file from one bare `---` line to the next (the first chunk: what comes
    before the first `---`). Each holds one document, the first at most one."""

    line: int  # 1-based line of the chunk's first line in the file
    text: str

    @property
    def digest(self) -> bytes:
        return text_digest(self.text)


@dataclass(frozen=True, slots=True)
class FileStamp:
    """What the watcher compares to notice a change without reading the file."""

    mtime_ns: int
    size: int


class YamlFailure(Exception):
    """A file that is not YAML (syntax error): it is used whole or not at all."""

    def __init__(self, error: ModelError) -> None:
        super().__init__(str(error))
        self.error = error


def iter_documents(source: SourceFile) -> Iterator[RawDocument]:
    """The documents of a file, each built when asked for (so a caller that turns one into
    objects before asking for the next never holds the whole file as YAML values); raises
    `YamlFailure` where the text stops being YAML."""
    loader = _Loader(source.text)
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            index += 1
            yield RawDocument(index, node.start_mark.line + 1, _Builder(loader).build(node))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        line = mark.line + 1 if mark is not None else None
        raise YamlFailure(
            ModelError(source.path, f"YAML syntax error: {problem}", line=line)
        ) from None
    except yaml.YAMLError as exc:
        raise YamlFailure(ModelError(source.path, f"YAML error: {exc}")) from None
    finally:
        loader.dispose()


def split_documents(source: SourceFile) -> tuple[list[RawDocument], ModelError | None]:
    """All documents of a file, or none and the syntax error (a file is used whole or not)."""
    try:
        return list(iter_documents(source)), None
    except YamlFailure as failure:
        return [], failure.error


# Lines that start a document, end one or hold a directive, at column 0. Only bare `---` lines
# are cut at; any other match makes the cut unsafe (directives apply to the next document,
# `...` may be followed by a bare document, `--- value` starts a document on its own line).
_MARKERS = re.compile(r"^(?:---|\.\.\.|%)[^\n]*", re.MULTILINE)
_BARE_MARKER = re.compile(r"---[ \t]*\r?")
# Line breaks other than \n and \r\n (YAML 1.1 also breaks lines at these).
_UNUSUAL_BREAKS = ("\x85", "\u2028", "\u2029")


def text_digest(text: str) -> bytes:
    """What the watcher keeps of a text to notice a change (not the text itself)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def split_chunks(text: str) -> list[TextChunk] | None:
    """The text cut at its bare `---` lines, so that each chunk parsed alone gives what the
    whole text's parse gives for that document (YAML forbids `---` at column 0 inside any
    scalar, and anchors and tags never cross documents). None when a cut is not safe."""
    if any(mark in text for mark in _UNUSUAL_BREAKS) or text.count("\r") != text.count("\r\n"):
        return None
    if text.find("\ufeff", 1) != -1:
        return None  # a byte order mark past the start (one at the start stays in chunk 0)
    cuts: list[int] = []
    for match in _MARKERS.finditer(text):
        if _BARE_MARKER.fullmatch(match.group()) is None:
            return None
        cuts.append(match.start())
    chunks = []
    start, line = 0, 1
    for cut in (*cuts, len(text)):
        piece = text[start:cut]
        chunks.append(TextChunk(line, piece))
        line += piece.count("\n")
        start = cut
    return chunks


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

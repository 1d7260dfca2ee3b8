"""Documents -> typed objects -> placed, indexed `Mesh`, with every problem in a `LoadReport`.

Two steps, both sans-IO: `parse_file` turns one file's text into objects (a bad document
is reported and skipped; a YAML syntax error fails the whole file), and `assemble` joins
the files: duplicates, Deployment expansion, placement and IP allocation, indexes.
`load_sources` and `load_paths` do both.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ambient_fast.controlplane.model.core import Deployment, Pod, Service
from ambient_fast.controlplane.model.deployments import expand
from ambient_fast.controlplane.model.documents import SourceDocument
from ambient_fast.controlplane.model.fields import FieldError, describe
from ambient_fast.controlplane.model.kinds import (
    KINDS,
    KindSpec,
    MeshObject,
    SourceKeeping,
    may_reach_waypoints,
)
from ambient_fast.controlplane.model.mesh import Mesh
from ambient_fast.controlplane.model.meta import (
    DEFAULT_NAMESPACE,
    ObjectKey,
    parse_meta,
    peek_identity,
)
from ambient_fast.controlplane.model.placement import Allocations, Topology, place
from ambient_fast.controlplane.model.report import LoadReport, ModelError, Origin, Severity
from ambient_fast.controlplane.model.sources import (
    RawDocument,
    SourceFile,
    TextChunk,
    YamlFailure,
    iter_documents,
    read_sources,
    split_chunks,
    split_documents,
)

# Namespaces every cluster has; objects in them need no Namespace document.
BUILTIN_NAMESPACES = frozenset({"default", "kube-system", "kube-public", "kube-node-lease"})


@dataclass(frozen=True, slots=True)
class UnknownDocument:
    """A document of a kind the model does not know (reported once per kind, skipped)."""

    api_version: str
    kind: str
    origin: Origin
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class ParsedChunk:
    """What one chunk of a file (`split_chunks`) gave; the next parse of the file reuses it
    while the chunk's text, first line and document index stay the same."""

    digest: bytes
    line: int
    document: int  # the 1-based index its document has in the file
    documents: int  # how many documents it holds: 1, or 0 for a first chunk of comments
    objects: tuple[MeshObject, ...]
    problems: tuple[ModelError, ...]
    unknown: tuple[UnknownDocument, ...]


@dataclass(frozen=True, slots=True)
class ParsedFile:
    """What one file contributes: its objects in document order and its problems."""

    path: str
    objects: tuple[MeshObject, ...] = ()
    problems: tuple[ModelError, ...] = ()
    unknown: tuple[UnknownDocument, ...] = ()
    # Per chunk, for reparsing only what an edit changed; empty when the file cannot be cut.
    chunks: tuple[ParsedChunk, ...] = field(default=(), compare=False, repr=False)

    @property
    def failure(self) -> ModelError | None:
        """The file-level failure (YAML syntax error, unreadable), if the file was unusable."""
        return next((p for p in self.problems if p.file_level), None)


@dataclass(frozen=True, slots=True)
class LoadResult:
    mesh: Mesh
    report: LoadReport


_Parsed = tuple[list[MeshObject], list[ModelError], list[UnknownDocument]]
# An edit that changes more chunks than this share of a file is parsed as a whole (cheaper).
_REPARSE_SHARE = 0.25


def parse_file(source: SourceFile, previous: ParsedFile | None = None) -> ParsedFile:
    """One file's objects and problems. With `previous` (the last parse of this file), the
    documents an edit left alone (same text, line and index) are not parsed again: their
    objects are reused as they are, so unchanged objects stay the same Python objects."""
    chunks = split_chunks(source.text)
    if chunks is not None and previous is not None and previous.chunks:
        reparsed = _reparse(source.path, chunks, previous.chunks)
        if reparsed is not None:
            return reparsed
    results: list[_Parsed] = []
    lines: list[int | None] = []  # where each document starts; None for an empty one
    try:
        for document in iter_documents(source):  # one at a time: parsed, then dropped
            results.append(_parse_raw(source.path, document))
            lines.append(None if document.body is None else document.line)
    except YamlFailure as failure:
        return ParsedFile(source.path, problems=(failure.error,))
    records = _chunk_records(chunks, lines, results) if chunks is not None else ()
    return ParsedFile(
        source.path,
        tuple(o for objects, _, _ in results for o in objects),
        tuple(p for _, problems, _ in results for p in problems),
        tuple(u for _, _, unknown in results for u in unknown),
        records,
    )


def _parse_raw(path: str, document: RawDocument) -> _Parsed:
    """One document's objects (several for a List), problems and unknown kinds."""
    objects: list[MeshObject] = []
    problems: list[ModelError] = []
    unknown: list[UnknownDocument] = []
    if document.body is None:  # an empty document, e.g. after a trailing "---"
        return objects, problems, unknown
    origin = Origin(path, document.index, document.line)
    items: list[tuple[str, object]] = [("", document.body)]
    if isinstance(document.body, Mapping) and _is_list(document.body):
        raw_items = document.body.get("items") or []
        if not isinstance(raw_items, list):
            problems.append(_error(origin, "List", "", "", "items", "expected a list"))
            return objects, problems, unknown
        items = [(f"items[{i}].", item) for i, item in enumerate(raw_items)]
    for prefix, body in items:
        result = parse_document(body, origin, prefix)
        if isinstance(result, ModelError):
            problems.append(result)
        elif isinstance(result, UnknownDocument):
            unknown.append(result)
        else:
            objects.append(result)
    return objects, problems, unknown


def _record(
    digest: bytes, chunk: TextChunk, document: int, results: Sequence[_Parsed]
) -> ParsedChunk:
    return ParsedChunk(
        digest,
        chunk.line,
        document,
        len(results),
        tuple(o for objects, _, _ in results for o in objects),
        tuple(p for _, problems, _ in results for p in problems),
        tuple(u for _, _, unknown in results for u in unknown),
    )


def _chunk_records(
    chunks: Sequence[TextChunk], lines: Sequence[int | None], results: Sequence[_Parsed]
) -> tuple[ParsedChunk, ...]:
    """The whole file's parse, per chunk; () if the documents (starting at `lines`, None for
    an empty one) do not line up with the chunks."""
    first = len(lines) - len(chunks) + 1  # documents in the first chunk: 0 or 1
    if first not in (0, 1):
        return ()
    records = []
    for c, chunk in enumerate(chunks):
        held = range(first) if c == 0 else range(c - 1 + first, c + first)
        end = chunks[c + 1].line if c + 1 < len(chunks) else None
        for d in held:
            line = lines[d]
            if line is not None and (line < chunk.line or (end is not None and line >= end)):
                return ()  # not where the cut says: no reuse for this file
        records.append(_record(chunk.digest, chunk, held.start + 1, [results[d] for d in held]))
    return tuple(records)


def _reparse(
    path: str, chunks: Sequence[TextChunk], previous: Sequence[ParsedChunk]
) -> ParsedFile | None:
    """The file from the previous parse's chunks and the changed ones parsed alone; None when
    a changed chunk fails or does not hold one document (the whole file is parsed then)."""
    known = {(c.digest, c.line, c.document): c for c in previous}
    budget = int(len(chunks) * _REPARSE_SHARE) + 1
    records: list[ParsedChunk] = []
    document = 1
    for i, chunk in enumerate(chunks):
        digest = chunk.digest
        record = known.get((digest, chunk.line, document))
        if record is None:
            budget -= 1
            if budget < 0:
                return None
            documents, failure = split_documents(SourceFile(path, chunk.text))
            if failure is not None or len(documents) > 1 or (i > 0 and not documents):
                return None
            placed = (RawDocument(document, chunk.line + d.line - 1, d.body) for d in documents)
            record = _record(digest, chunk, document, [_parse_raw(path, d) for d in placed])
        records.append(record)
        document += record.documents
    return ParsedFile(
        path,
        tuple(o for r in records for o in r.objects),
        tuple(p for r in records for p in r.problems),
        tuple(u for r in records for u in r.unknown),
        tuple(records),
    )


def _is_list(body: Mapping[object, object]) -> bool:
    kind = body.get("kind")
    return isinstance(kind, str) and kind.endswith("List") and "items" in body


def _error(
    origin: Origin, kind: str, namespace: str, name: str, field: str, message: str
) -> ModelError:
    return ModelError(
        origin.path,
        message,
        document=origin.document,
        line=origin.line,
        kind=kind,
        namespace=namespace,
        name=name,
        field=field,
    )


def parse_document(
    body: object, origin: Origin, field_prefix: str = ""
) -> MeshObject | UnknownDocument | ModelError:
    """One document (or List item) -> its typed object, an unknown kind, or the error."""
    if not isinstance(body, Mapping):
        return _error(
            origin,
            "",
            "",
            "",
            field_prefix.rstrip("."),
            f"expected a mapping, got {describe(body)}",
        )
    kind = body.get("kind")
    api_version = body.get("apiVersion")
    namespace, name = peek_identity(body)
    if not isinstance(kind, str) or not kind:
        return _error(origin, "", namespace, name, field_prefix + "kind", "required")
    spec = KINDS.get(kind)
    if not isinstance(api_version, str) or not api_version:
        namespace = _display_namespace(spec, namespace, name)
        return _error(origin, kind, namespace, name, field_prefix + "apiVersion", "required")
    if spec is not None and all(_group(v) != _group(api_version) for v in spec.api_versions):
        spec = None  # the same kind name in another API group, e.g. Istio's own Gateway
    if spec is None:
        return UnknownDocument(api_version, kind, origin, namespace, name)
    namespace = _display_namespace(spec, namespace, name)
    if api_version not in spec.api_versions:
        expected = ", ".join(spec.api_versions)
        return _error(
            origin,
            kind,
            namespace,
            name,
            field_prefix + "apiVersion",
            f"expected one of {expected}, got {describe(api_version)}",
        )
    try:
        meta = parse_meta(body, origin, namespaced=spec.namespaced)
        obj = spec.parse(body, meta)
    except FieldError as exc:
        return _error(origin, kind, namespace, name, field_prefix + exc.field, exc.message)
    if spec.keep_source and isinstance(obj, SourceKeeping) and may_reach_waypoints(obj):
        return dataclasses.replace(obj, source=SourceDocument.of(body))
    return obj


def _display_namespace(spec: KindSpec | None, namespace: str, name: str) -> str:
    """The namespace as the rest of the report names the object ("default" if unset)."""
    if spec is None:
        return namespace
    if not spec.namespaced:
        return ""
    return namespace or (DEFAULT_NAMESPACE if name else "")


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


@dataclass(frozen=True, slots=True)
class Assembly:
    """An `assemble` result, and what decides whether an edit can patch its Mesh instead of
    assembling again (`controlplane.model.edits`)."""

    result: LoadResult
    unique: bool  # every key written once (no duplicate, no generated pod named like another)
    placed_all: bool  # placement refused nothing


def assemble(
    files: Sequence[ParsedFile],
    topology: Topology | None = None,
    previous: Allocations | None = None,
) -> LoadResult:
    """Join parsed files into a Mesh: duplicates, Deployments -> Pods, placement, indexes.

    `previous` (the last load's `Mesh.allocations`) keeps model-chosen nodes and addresses
    stable across reloads.
    """
    return assemble_files(files, topology, previous).result


def assemble_files(
    files: Sequence[ParsedFile],
    topology: Topology | None = None,
    previous: Allocations | None = None,
) -> Assembly:
    """`assemble`, telling whether every key was unique."""
    topology = topology or Topology()
    problems: list[ModelError] = [p for f in files for p in f.problems]
    problems.extend(_unknown_kind_warnings(files))

    # Each key -> the object written under it (a generated pod: its Deployment).
    written: dict[ObjectKey, MeshObject] = {}
    kept: list[MeshObject] = []
    unique = True
    for file in files:
        for obj in file.objects:
            key, origin = obj.key, obj.meta.origin
            first = written.get(key)
            if first is not None:
                message = f"duplicate of {first.meta.origin}; skipped"
                problems.append(_at(origin, key, "", message))
                unique = False
                continue
            written[key] = obj
            kept.append(obj)

    pods: list[Pod] = []
    services: list[Service] = []
    others: list[MeshObject] = []
    for obj in kept:
        if isinstance(obj, Pod):
            pods.append(obj)
        elif isinstance(obj, Service):
            services.append(obj)
        else:
            others.append(obj)
    for obj in kept:
        if isinstance(obj, Deployment):
            for pod in expand(obj):
                first = written.get(pod.key)
                if first is not None:
                    message = f"pod {pod.name} already exists ({first.meta.origin}); skipped"
                    problems.append(_at(obj.meta.origin, obj.key, "", message))
                    unique = False
                    continue
                written[pod.key] = obj
                pods.append(pod)

    problems.extend(_undeclared_namespace_warnings(kept))

    placement = place(pods, services, topology, previous)
    for problem in placement.problems:
        source = written[problem.key]
        origin, reported_as = source.meta.origin, source.key
        if reported_as != problem.key:  # a generated pod: report it on its Deployment
            message = f"pod {problem.key.name}: {problem.message}"
            problems.append(_at(origin, reported_as, "", message))
        else:
            problems.append(_at(origin, reported_as, problem.field, problem.message))

    mesh = Mesh([*others, *placement.pods, *placement.services], topology)
    report = LoadReport(tuple(problems))
    return Assembly(LoadResult(mesh, report), unique, placed_all=not placement.problems)


def _at(
    origin: Origin, key: ObjectKey, field: str, message: str, severity: Severity = Severity.ERROR
) -> ModelError:
    return ModelError(
        origin.path,
        message,
        document=origin.document,
        line=origin.line,
        kind=key.kind,
        namespace=key.namespace,
        name=key.name,
        field=field,
        severity=severity,
    )


def _unknown_kind_warnings(files: Sequence[ParsedFile]) -> list[ModelError]:
    first: dict[tuple[str, str], UnknownDocument] = {}
    counts: dict[tuple[str, str], int] = {}
    for file in files:
        for doc in file.unknown:
            key = (doc.api_version, doc.kind)
            first.setdefault(key, doc)
            counts[key] = counts.get(key, 0) + 1
    warnings = []
    for key, doc in first.items():
        count = counts[key]
        more = f" ({count} documents)" if count > 1 else ""
        warnings.append(
            ModelError(
                doc.origin.path,
                f"unknown kind {doc.kind} ({doc.api_version}); skipped{more}",
                document=doc.origin.document,
                line=doc.origin.line,
                kind=doc.kind,
                namespace=doc.namespace,
                name=doc.name,
                severity=Severity.WARNING,
            )
        )
    return warnings


def _undeclared_namespace_warnings(objects: Iterable[MeshObject]) -> list[ModelError]:
    declared = {obj.name for obj in objects if obj.KIND == "Namespace"}
    warned: set[str] = set()
    warnings = []
    for obj in objects:
        namespace = obj.namespace
        if not namespace or namespace in declared or namespace in BUILTIN_NAMESPACES:
            continue
        if namespace in warned:
            continue
        warned.add(namespace)
        warnings.append(
            _at(
                obj.meta.origin,
                obj.key,
                "metadata.namespace",
                f"namespace {namespace!r} has no Namespace document; it has no labels",
                Severity.WARNING,
            )
        )
    return warnings


def load_sources(
    sources: Iterable[SourceFile],
    topology: Topology | None = None,
    previous: Allocations | None = None,
) -> LoadResult:
    """Parse and assemble file contents (no filesystem access)."""
    return assemble([parse_file(s) for s in sources], topology, previous)


def load_paths(
    paths: Iterable[str | os.PathLike[str]],
    topology: Topology | None = None,
) -> LoadResult:
    """Read files and directories (recursively, *.yaml / *.yml, sorted) and load them."""
    sources, read_problems = read_sources(paths)
    files = [ParsedFile(p.path, problems=(p,)) for p in read_problems]
    files.extend(parse_file(s) for s in sources)
    return assemble(files, topology)

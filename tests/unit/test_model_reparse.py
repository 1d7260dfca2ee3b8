"""Reparsing an edited file parses only the documents that changed, and gives exactly what
parsing the whole file gives: the same objects (the unchanged ones reused as they are), the
same problems, the same origins; a file that cannot be cut safely is parsed whole."""

from __future__ import annotations

import pytest

from ambient_fast.controlplane.model import ParsedFile, SourceFile, parse_file
from ambient_fast.controlplane.model.sources import split_chunks

MESH = """\
# leading comment: the first chunk holds no document
apiVersion: v1
kind: Namespace
metadata: {name: apps}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: apps
  labels: {app: web}
  annotations:
    note: |
      a block scalar
        with --- inside (indented: not a document marker)
spec: {containers: [{name: web, image: web}]}
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: ServiceAccount, metadata: {name: web, namespace: apps}}
- {apiVersion: v1, kind: ServiceAccount, metadata: {name: db, namespace: apps}}
---
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: apps}
spec: {selector: {app: web}, ports: [{port: eighty}]}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: apps, labels: {app: web}}
---
"""


def fields(parsed: ParsedFile) -> tuple[object, ...]:
    origins = tuple(o.meta.origin for o in parsed.objects)
    return parsed.objects, origins, parsed.problems, parsed.unknown


def reparse(old: str, new: str) -> tuple[ParsedFile, ParsedFile, ParsedFile]:
    previous = parse_file(SourceFile("mesh.yaml", old))
    assert previous.chunks, "the test text must be cut into chunks"
    return (
        previous,
        parse_file(SourceFile("mesh.yaml", new), previous),
        parse_file(SourceFile("mesh.yaml", new)),
    )


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("name: web-2, namespace: apps, labels: {app: web}", "name: web-2, namespace: apps"),
        ("ports: [{port: eighty}]", "ports: [{port: 80}]"),  # a bad document fixed
        ("kind: Widget", "kind: Gadget"),  # an unknown kind
        ("name: db, namespace", "name: cache, namespace"),  # one List item
        ("# leading comment", "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n#"),
        ("  labels: {app: web}\n", "  labels: {app: web}\n  uid: u-1\n"),  # later lines shift
        ("---\n---\n", "---\n"),  # an empty document gone: later indexes shift
        ("metadata: {name: w}\n---\n", "metadata: {name: w}\n---\n" * 3),
    ],
)
def test_reparse_matches_a_whole_parse(old: str, new: str) -> None:
    assert old in MESH
    _, reparsed, whole = reparse(MESH, MESH.replace(old, new, 1))
    assert fields(reparsed) == fields(whole)
    assert reparsed.chunks == whole.chunks or not whole.chunks


def test_unchanged_documents_keep_their_objects() -> None:
    previous, reparsed, _ = reparse(MESH, MESH.replace("app: web}}", "app: web, v: x}}"))
    reused = [
        new for old, new in zip(previous.objects, reparsed.objects, strict=True) if old is new
    ]
    assert len(reused) == len(reparsed.objects) - 1
    assert reparsed.objects[-1] is not previous.objects[-1]  # web-2, the edited one


def test_an_edit_that_breaks_the_yaml_fails_the_whole_file_as_a_whole_parse_does() -> None:
    _, reparsed, whole = reparse(MESH, MESH.replace("kind: Widget", "kind: [Widget"))
    assert reparsed.failure is not None and reparsed.problems == whole.problems
    assert str(reparsed.failure).startswith("mesh.yaml:")


def test_a_document_marker_in_a_flow_collection_is_an_error_either_way() -> None:
    _, reparsed, whole = reparse(MESH, MESH.replace("kind: Widget", "kind: [Widget,\n---\n]"))
    assert reparsed.failure is not None and reparsed.problems == whole.problems


@pytest.mark.parametrize(
    "text",
    [
        "%YAML 1.1\n---\na: 1\n",  # a directive
        "a: 1\n...\nb: 2\n",  # a document end marker
        "--- {a: 1}\n",  # content on the marker line
        "--- |\n  text\n",
        "a: 1\r---\r",  # old Mac line breaks
        "a: 1\n---\n\ufeffb: 2\n",  # a byte order mark past the start
    ],
)
def test_texts_that_cannot_be_cut_are_parsed_whole(text: str) -> None:
    assert split_chunks(text) is None
    previous = parse_file(SourceFile("mesh.yaml", text))
    assert previous.chunks == ()
    edited = text.replace("a: 1", "a: 2")
    assert fields(parse_file(SourceFile("mesh.yaml", edited), previous)) == fields(
        parse_file(SourceFile("mesh.yaml", edited))
    )


def test_a_byte_order_mark_at_the_start_stays_in_the_first_chunk() -> None:
    text = "\ufeff" + MESH
    _, reparsed, whole = reparse(text, text.replace("kind: Widget", "kind: Gadget"))
    assert fields(reparsed) == fields(whole) and reparsed.chunks


def test_chunks_follow_bare_markers_and_count_lines() -> None:
    chunks = split_chunks("a: 1\n---\nb: 2\n--- \r\nc: 3\n---")
    assert chunks is not None
    assert [(c.line, c.text) for c in chunks] == [
        (1, "a: 1\n"),
        (2, "---\nb: 2\n"),
        (4, "--- \r\nc: 3\n"),
        (6, "---"),
    ]

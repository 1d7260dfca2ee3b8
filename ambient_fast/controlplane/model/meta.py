"""What every object has: its key (kind, namespace, name) and Kubernetes metadata."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from ambient_fast.controlplane.model.fields import (
    FieldError,
    Obj,
    check_name,
    opt_map,
    opt_str,
    str_map,
)
from ambient_fast.controlplane.model.report import Origin

# Kubernetes puts objects without metadata.namespace into "default".
DEFAULT_NAMESPACE = "default"
# Annotation Istio reads to run an AuthorizationPolicy in dry-run mode.
DRY_RUN_ANNOTATION = "istio.io/dry-run"


class ObjectKey(NamedTuple):
    """Identity of an object in the mesh; cluster-scoped kinds have namespace ""."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind} {where}"


@dataclass(frozen=True, slots=True)
class OwnerReference:
    kind: str
    name: str
    api_version: str = ""
    controller: bool = False


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    name: str
    namespace: str  # "" for cluster-scoped kinds
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    uid: str | None = None
    creation_timestamp: str | None = None  # RFC 3339 as written; Gateway API route precedence
    owner_references: tuple[OwnerReference, ...] = ()
    # Where the object was written; not part of the object's value.
    origin: Origin = field(default=Origin("", 0), compare=False, repr=False)


def parse_meta(doc: Obj, origin: Origin, *, namespaced: bool) -> ObjectMeta:
    """metadata.* of a document; namespace defaults to "default" for namespaced kinds."""
    meta = opt_map(doc, "metadata", "")
    name = opt_str(meta, "name", "metadata")
    if not name:
        raise FieldError("metadata.name", "required")
    check_name(name, "metadata.name")
    namespace = ""
    if namespaced:
        namespace = opt_str(meta, "namespace", "metadata") or DEFAULT_NAMESPACE
        check_name(namespace, "metadata.namespace", label=True)
    owners = []
    for i, ref in enumerate(meta.get("ownerReferences") or ()):
        path = f"metadata.ownerReferences[{i}]"
        if not isinstance(ref, Mapping):
            raise FieldError(path, "expected a mapping")
        owners.append(
            OwnerReference(
                kind=opt_str(ref, "kind", path) or "",
                name=opt_str(ref, "name", path) or "",
                api_version=opt_str(ref, "apiVersion", path) or "",
                controller=ref.get("controller") is True,
            )
        )
    uid = meta.get("uid")
    created = meta.get("creationTimestamp")
    return ObjectMeta(
        name=name,
        namespace=namespace,
        labels=str_map(meta, "labels", "metadata"),
        annotations=str_map(meta, "annotations", "metadata"),
        uid=str(uid) if uid is not None else None,
        # YAML turns an unquoted timestamp into a datetime; keep the text form.
        creation_timestamp=str(created) if created is not None else None,
        owner_references=tuple(owners),
        origin=origin,
    )


def peek_identity(doc: Obj) -> tuple[str, str]:
    """Best-effort (namespace, name) of a document, for naming it in an error report."""
    meta = doc.get("metadata")
    if not isinstance(meta, Mapping):
        return "", ""
    name = meta.get("name")
    namespace = meta.get("namespace")
    return (
        namespace if isinstance(namespace, str) else "",
        name if isinstance(name, str) else "",
    )


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Kubernetes equality-based selection: every selector label present with the same value."""
    return all(labels.get(k) == v for k, v in selector.items())

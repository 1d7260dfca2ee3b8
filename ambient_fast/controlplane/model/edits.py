"""Edits of a few objects: patch the last assembly instead of assembling every file again.

`reassemble` gives exactly what `assemble` would give for the edited files (with the last
Mesh's allocations as `previous`), by replacing, adding and removing objects in the last
Mesh (`Mesh.with_changes`). It can when the outcome of the whole-mesh steps is known:

- every key was written once, before and after (no duplicate to resolve);
- each edited file keeps its problems (bad documents, unknown kinds);
- a changed pod or service keeps its placement inputs (placed where it was);
- objects added, removed or moved in their file (another origin) belong to declared
  namespaces (no warning about an undeclared one names them), are no Namespace, and the
  last assembly placed everything: added pods and services have no address written and
  get the next free ones, exactly as placement's last pass would hand them out.

For anything else it returns None, and the caller assembles again.
"""

from __future__ import annotations

from collections.abc import Sequence

from ambient_fast.controlplane.model.core import Deployment, Pod, Service
from ambient_fast.controlplane.model.deployments import expand
from ambient_fast.controlplane.model.kinds import MeshObject
from ambient_fast.controlplane.model.loader import (
    BUILTIN_NAMESPACES,
    Assembly,
    LoadResult,
    ParsedFile,
)
from ambient_fast.controlplane.model.mesh import Mesh
from ambient_fast.controlplane.model.meta import ObjectKey
from ambient_fast.controlplane.model.placement import (
    Topology,
    place_added,
    place_again,
    placement_inputs,
    vip_again,
)

FileEdit = tuple[ParsedFile, ParsedFile]  # the file's last good parse, and its new one


class _Unsure(Exception):
    """The edit's outcome depends on more than the edited objects: assemble again."""


def reassemble(
    previous: Assembly, edits: Sequence[FileEdit], topology: Topology
) -> Assembly | None:
    """What `assemble` would give after `edits`, from `previous`; None when it cannot tell."""
    if not previous.unique:
        return None
    patch = _Patch(previous, topology)
    try:
        for before, after in edits:
            if before.problems != after.problems or before.unknown != after.unknown:
                return None
            patch.file(before, after)
        mesh = patch.finish()
    except _Unsure:
        return None
    result = LoadResult(mesh, previous.result.report)
    return Assembly(result, unique=True, placed_all=previous.placed_all)


class _Patch:
    """The objects an edit upserts and removes, placed as `place` would place them."""

    def __init__(self, previous: Assembly, topology: Topology) -> None:
        self.mesh = previous.result.mesh
        self.placed_all = previous.placed_all
        self.topology = topology
        self.upserts: dict[ObjectKey, MeshObject] = {}
        self.removals: set[ObjectKey] = set()
        self.moved: set[ObjectKey] = set()  # upserts equal to what they replace, but for origin
        self.new_pods: list[Pod] = []  # to place, as placement's last pass would
        self.new_services: list[Service] = []

    def file(self, before: ParsedFile, after: ParsedFile) -> None:
        if len(before.objects) == len(after.objects):
            pairs = [
                (a, b) for a, b in zip(before.objects, after.objects, strict=True) if a is not b
            ]
            if all(a.key == b.key for a, b in pairs):  # the usual edit: objects changed in place
                for old, new in pairs:
                    self.changed(old, new)
                return
        old_by_key = {o.key: o for o in before.objects}
        new_by_key = {o.key: o for o in after.objects}
        if len(old_by_key) != len(before.objects) or len(new_by_key) != len(after.objects):
            raise _Unsure  # a key twice in one file
        for key, new in new_by_key.items():
            prior = old_by_key.get(key)
            if prior is None:
                self.added(new)
            elif prior is not new:
                self.changed(prior, new)
        for key, old in old_by_key.items():
            if key not in new_by_key:
                self.removed(old)

    # -- one object each ---------------------------------------------------------------

    def changed(self, old: MeshObject, new: MeshObject) -> None:
        same = old == new and _source(old) == _source(new)  # e.g. a comment edited
        moved = old.meta.origin != new.meta.origin  # e.g. a document inserted above it
        if same and not moved:
            return  # the Mesh keeps the old object: nothing tells them apart
        if moved:
            self._may_move(new)
            if isinstance(new, Pod) and new.ip is not None:
                raise _Unsure  # written addresses are reserved in input order
        if same:
            self.moved.add(new.key)
        if isinstance(new, Pod) and isinstance(old, Pod):
            self._changed_pod(old, new)
        elif isinstance(new, Service) and isinstance(old, Service):
            if placement_inputs(old) != placement_inputs(new):
                raise _Unsure
            if self.mesh.service(new.namespace, new.name) is not None:  # else refused again
                self._upsert(vip_again(new, self.mesh.allocations))
        elif isinstance(new, Deployment) and isinstance(old, Deployment):
            self._upsert(new)
            old_pods = {p.key: p for p in expand(old)}
            new_pods = {p.key: p for p in expand(new)}
            for key, pod in new_pods.items():
                before = old_pods.get(key)
                if before is None:
                    self._added_pod(pod)  # more replicas, or a template edit renamed them
                else:
                    self._changed_pod(before, pod)
            for key, pod in old_pods.items():
                if key not in new_pods:
                    self._removed_pod(pod)
        else:
            self._upsert(new)

    def added(self, obj: MeshObject) -> None:
        self._may_move(obj)
        if obj.KIND == "Namespace":
            raise _Unsure  # declares a namespace: warnings about its objects go away
        if isinstance(obj, Pod):
            self._added_pod(obj)
        elif isinstance(obj, Service):
            self._new_key(obj.key)
            if obj.cluster_ip is not None:
                raise _Unsure  # a written VIP is reserved before any allocation
            if obj.headless or obj.type == "ExternalName":
                self._upsert(obj)
            else:
                self.new_services.append(obj)
        elif isinstance(obj, Deployment):
            self._new_key(obj.key)
            self._upsert(obj)
            for pod in expand(obj):
                self._added_pod(pod)
        else:
            self._new_key(obj.key)
            self._upsert(obj)

    def removed(self, obj: MeshObject) -> None:
        self._may_move(obj)
        if obj.KIND == "Namespace":
            raise _Unsure  # its objects' namespace becomes undeclared: a warning
        if isinstance(obj, Pod):
            self._removed_pod(obj)
        elif isinstance(obj, Deployment):
            self.removals.add(obj.key)
            for pod in expand(obj):
                self._removed_pod(pod)
        else:
            self.removals.add(obj.key)

    # -- helpers -----------------------------------------------------------------------

    def _may_move(self, obj: MeshObject) -> None:
        """Objects may come, go or move when no report line and no placement depends on
        where they are written or whether they exist."""
        if not self.placed_all:
            raise _Unsure
        namespace = obj.meta.namespace
        declared = self.mesh.namespace(namespace) is not None
        if namespace and not declared and namespace not in BUILTIN_NAMESPACES:
            raise _Unsure  # the undeclared-namespace warning names the first object in it

    def _new_key(self, key: ObjectKey) -> None:
        if self.mesh.get(key) is not None or key in self.upserts:
            raise _Unsure  # a duplicate, reported on whichever was written first

    def _upsert(self, obj: MeshObject) -> None:
        self.upserts[obj.key] = obj

    def _changed_pod(self, old: Pod, new: Pod) -> None:
        if placement_inputs(old) != placement_inputs(new):
            raise _Unsure
        placed = self.mesh.pod(new.namespace, new.name)
        if placed is None:
            return  # placement refused it (reported), and refuses it again
        again = place_again(new, placed, self.mesh.allocations, self.topology)
        if again == placed:
            if again.meta.origin == placed.meta.origin:
                return  # a Deployment edit that leaves this pod as it was
            self.moved.add(again.key)
        self._upsert(again)

    def _added_pod(self, pod: Pod) -> None:
        self._may_move(pod)
        self._new_key(pod.key)
        if pod.ip is not None:
            raise _Unsure  # a written address is reserved before any allocation
        self.upserts[pod.key] = pod  # a placeholder: taken, placed in `finish`
        self.new_pods.append(pod)

    def _removed_pod(self, pod: Pod) -> None:
        self._may_move(pod)
        if pod.ip is not None:
            raise _Unsure  # written addresses are reserved in input order
        self.removals.add(pod.key)

    def finish(self) -> Mesh:
        if self.removals & self.upserts.keys():
            raise _Unsure  # moved between files in one edit: which copy comes first matters
        mesh = self.mesh
        if self.new_pods or self.new_services or self.removals:
            gone = self.removals
            pods_gone = {(k.namespace, k.name) for k in gone if k.kind == "Pod"}
            services_gone = {(k.namespace, k.name) for k in gone if k.kind == "Service"}
            placement = place_added(
                self.new_pods,
                self.new_services,
                self.topology,
                (p for p in mesh.pods if (p.meta.namespace, p.meta.name) not in pods_gone),
                (s for s in mesh.services if (s.meta.namespace, s.meta.name) not in services_gone),
            )
            if placement.problems:
                raise _Unsure  # reported on the object's origin, maybe on its Deployment
            for pod in placement.pods:
                self.upserts[pod.key] = pod
            for service in placement.services:
                self.upserts[service.key] = service
        return mesh.with_changes(self.upserts.values(), self.removals, self.moved)


def _source(obj: MeshObject) -> object:
    """The document as written, for the kinds that keep it (equality leaves it out)."""
    return getattr(obj, "source", None)

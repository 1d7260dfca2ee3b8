"""The indexes a `Mesh` is made of: objects by namespace and name, label selection, routes by
parent. Each is immutable once built; `changed` gives a patched copy that shares what an
edit does not touch.

Sized for 10k pods: no key tuple per object (one dict of names per namespace) and
exact-size tuples rather than lists.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from ambient_fast.controlplane.model.gateway_api import Route
from ambient_fast.controlplane.model.kinds import MeshObject
from ambient_fast.controlplane.model.meta import selector_matches

T = TypeVar("T", bound=MeshObject)
V = TypeVar("V")
NamespacedName = tuple[str, str]


def name_of(obj: MeshObject) -> NamespacedName:
    """The order of every index: namespace, then name."""
    return obj.meta.namespace, obj.meta.name


class ByNamespace(Generic[V]):
    """(namespace, name) -> value, as one dict of names per namespace: no key tuple per
    entry, and a change copies only the namespaces it touches."""

    __slots__ = ("_namespaces",)

    def __init__(self, namespaces: dict[str, dict[str, V]] | None = None) -> None:
        self._namespaces = namespaces if namespaces is not None else {}

    @classmethod
    def of(cls, entries: Iterable[tuple[str, str, V]]) -> ByNamespace[V]:
        namespaces: dict[str, dict[str, V]] = {}
        for namespace, name, value in entries:
            names = namespaces.get(namespace)
            if names is None:
                names = namespaces[namespace] = {}
            names[name] = value
        return cls(namespaces)

    def get(self, namespace: str, name: str) -> V | None:
        names = self._namespaces.get(namespace)
        return None if names is None else names.get(name)

    def values(self) -> Iterator[V]:
        for names in self._namespaces.values():
            yield from names.values()

    def changed(
        self, removals: Iterable[NamespacedName], upserts: Iterable[tuple[str, str, V]] = ()
    ) -> ByNamespace[V]:
        namespaces = dict(self._namespaces)
        copied: set[str] = set()

        def names(namespace: str) -> dict[str, V]:
            if namespace not in copied:
                namespaces[namespace] = dict(namespaces.get(namespace, {}))
                copied.add(namespace)
            return namespaces[namespace]

        for namespace, name in removals:
            names(namespace).pop(name, None)
        for namespace, name, value in upserts:
            names(namespace)[name] = value
        for namespace in copied:
            if not namespaces[namespace]:
                del namespaces[namespace]
        return ByNamespace(namespaces)


class KindIndex(Generic[T]):
    """The objects of one kind: by namespace and name, by namespace, and in name order."""

    __slots__ = ("all", "by_name", "by_namespace")

    def __init__(self, objects: Iterable[T]) -> None:
        ordered = sorted(objects, key=name_of)
        self.all: tuple[T, ...] = tuple(ordered)
        self.by_name: ByNamespace[T] = ByNamespace.of(
            (o.meta.namespace, o.meta.name, o) for o in ordered
        )
        grouped: dict[str, list[T]] = defaultdict(list)
        for o in ordered:
            grouped[o.meta.namespace].append(o)
        self.by_namespace: dict[str, tuple[T, ...]] = {ns: tuple(v) for ns, v in grouped.items()}

    def changed(self, removals: Iterable[NamespacedName], upserts: Iterable[T]) -> KindIndex[T]:
        """A copy without `removals` and with `upserts` added or replacing their key's object."""
        ordered = list(self.all)
        namespaces: dict[str, list[T]] = {}

        def namespace(name: str) -> list[T]:
            if name not in namespaces:
                namespaces[name] = list(self.by_namespace.get(name, ()))
            return namespaces[name]

        gone = {key for key in removals if self.get(*key) is not None}
        for key in gone:
            del ordered[bisect_left(ordered, key, key=name_of)]
            members = namespace(key[0])
            del members[bisect_left(members, key, key=name_of)]
        added: dict[NamespacedName, T] = {}
        for obj in upserts:
            key = name_of(obj)
            replaced = key in added or (key not in gone and self.get(*key) is not None)
            added[key] = obj
            for members in (ordered, namespace(key[0])):
                at = bisect_left(members, key, key=name_of)
                if replaced:
                    members[at] = obj
                else:
                    members.insert(at, obj)
        index: KindIndex[T] = KindIndex(())
        index.all = tuple(ordered)
        index.by_name = self.by_name.changed(gone, ((*key, o) for key, o in added.items()))
        index.by_namespace = dict(self.by_namespace)
        for name, members in namespaces.items():
            if members:
                index.by_namespace[name] = tuple(members)
            else:
                del index.by_namespace[name]
        return index

    def get(self, namespace: str, name: str) -> T | None:
        return self.by_name.get(namespace, name)

    def in_namespace(self, namespace: str) -> tuple[T, ...]:
        return self.by_namespace.get(namespace, ())


class LabelIndex(Generic[T]):
    """Label selection over one kind: (namespace, label, value) -> names, in name order."""

    __slots__ = ("_index", "_labels_of", "_names")

    def __init__(
        self,
        index: KindIndex[T],
        labels_of: Callable[[T], Mapping[str, str]],
        names: dict[tuple[str, str, str], tuple[str, ...]] | None = None,
    ) -> None:
        self._index = index
        self._labels_of = labels_of
        if names is None:
            grouped: dict[tuple[str, str, str], list[str]] = defaultdict(list)
            for obj in index.all:
                namespace, name = obj.meta.namespace, obj.meta.name
                for label, value in labels_of(obj).items():
                    grouped[namespace, label, value].append(name)
            names = {key: tuple(members) for key, members in grouped.items()}
        self._names = names

    def changed(
        self, index: KindIndex[T], removed: Iterable[T], added: Iterable[T]
    ) -> LabelIndex[T]:
        """For `index`, which differs from this one's by `removed` and `added` objects."""
        labels_of = self._labels_of

        def entries(objects: Iterable[T]) -> set[tuple[str, str, str, str]]:
            return {
                (o.meta.namespace, label, value, o.meta.name)
                for o in objects
                for label, value in labels_of(o).items()
            }

        gone, new = entries(removed), entries(added)
        edited: dict[tuple[str, str, str], list[str]] = {}

        def members(key: tuple[str, str, str]) -> list[str]:
            if key not in edited:
                edited[key] = list(self._names.get(key, ()))
            return edited[key]

        for namespace, label, value, name in gone - new:
            members((namespace, label, value)).remove(name)
        for namespace, label, value, name in new - gone:
            insort(members((namespace, label, value)), name)
        names = dict(self._names)
        for key, names_of_key in edited.items():
            if names_of_key:
                names[key] = tuple(names_of_key)
            else:
                del names[key]
        return LabelIndex(index, labels_of, names)

    def select(self, namespace: str, selector: Mapping[str, str]) -> tuple[T, ...]:
        if not selector:
            return self._index.in_namespace(namespace)
        candidates: tuple[str, ...] | None = None
        for label, value in selector.items():
            found = self._names.get((namespace, label, value))
            if not found:
                return ()
            if candidates is None or len(found) < len(candidates):
                candidates = found
        assert candidates is not None
        by_name, labels_of = self._index.by_name, self._labels_of
        objects = (by_name.get(namespace, name) for name in candidates)
        return tuple(
            o for o in objects if o is not None and selector_matches(selector, labels_of(o))
        )


def routes_by_parent(
    http_routes: Iterable[Route], grpc_routes: Iterable[Route]
) -> dict[tuple[str, str, str], tuple[Route, ...]]:
    """(parent kind, namespace, name) -> routes with a parentRef to it, HTTP first."""
    routes: dict[tuple[str, str, str], list[Route]] = defaultdict(list)
    for route in (*http_routes, *grpc_routes):
        for ref in route.parent_refs:
            target = "Service" if ref.is_service else ref.kind
            entry = routes[target, ref.namespace or route.namespace, ref.name]
            if not entry or entry[-1] is not route:  # two refs (e.g. ports) to one parent
                entry.append(route)
    return {key: tuple(v) for key, v in routes.items()}

"""One copy of the values that repeat on thousands of objects: label maps, port lists, the
Services that pick each pod.

The first copy of a value is handed out for every equal one after it, as `sys.intern` does
for strings. The parser's tables (`SharedValues`, `SharedMaps`) live as long as the process
and are bounded (the oldest entries go first), so they never keep more than a few thousand
values alive that no object uses any more; `SharedTuples` lives for one index build. Shared
values are never modified: the model's objects are immutable.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Generic, TypeVar

H = TypeVar("H", bound=Hashable)
V = TypeVar("V")

# Entries per table: a mesh repeats a value mostly within a namespace (a Deployment's
# selector, its template's labels and its Service's selector), so recent values suffice.
DEFAULT_LIMIT = 4096


class SharedValues(Generic[H]):
    """Hashable values (tuples of frozen dataclasses) by themselves."""

    __slots__ = ("_limit", "_table")

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self._limit = limit
        self._table: dict[H, H] = {}

    def get(self, value: H) -> H:
        table = self._table
        found = table.get(value)
        if found is not None:
            return found
        if len(table) >= self._limit:
            del table[next(iter(table))]
        table[value] = value
        return value


class SharedMaps:
    """String maps (labels, selectors) by content, in the order written: dicts are not
    hashable, so the table is keyed by the hash of the items, checked on every hit."""

    __slots__ = ("_limit", "_table")

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self._limit = limit
        self._table: dict[int, dict[str, str]] = {}

    def get(self, mapping: dict[str, str]) -> Mapping[str, str]:
        items = tuple(mapping.items())
        key = hash(items)
        table = self._table
        found = table.get(key)
        if found is not None and tuple(found.items()) == items:
            return found
        if found is None and len(table) >= self._limit:
            del table[next(iter(table))]
        table[key] = mapping  # a different map with the same hash: the newer one is kept
        return mapping


class SharedTuples(Generic[V]):
    """One copy of each distinct tuple of objects (compared by identity: model objects hold
    label maps and are not hashable), for values that repeat across many keys: the pods of
    one Deployment are picked by the same Services."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[tuple[int, ...], tuple[V, ...]] = {}

    def get(self, values: Iterable[V]) -> tuple[V, ...]:
        value = tuple(values)
        return self._seen.setdefault(tuple(map(id, value)), value)

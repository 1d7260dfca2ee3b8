"""The resources the control plane serves, by type URL and name, with change notifications.

The translation writes here (`update` or `replace`); every connected delta-xDS stream
subscribes and is told which names changed, never the whole state again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, KeysView, Mapping
from dataclasses import dataclass

from google.protobuf.any_pb2 import Any
from google.protobuf.message import Message

from ambient_fast.xds.proto.discovery_pb2 import Resource

log = logging.getLogger(__name__)

# The prefix protobuf's Any uses, and Istio's type URLs (reference 02).
TYPE_PREFIX = "type.googleapis.com/"
ADDRESS_TYPE_URL = TYPE_PREFIX + "istio.workload.Address"
AUTHORIZATION_TYPE_URL = TYPE_PREFIX + "istio.security.Authorization"
ISTIO_TYPE_URLS = (ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL)
# Our own type: a waypoint's L7 configuration (waypoint.proto), resource name "<ns>/<gateway>".
WAYPOINT_CONFIG_TYPE_URL = TYPE_PREFIX + "ambient.waypoint.v1.WaypointConfig"


def type_url_of(message: Message) -> str:
    return TYPE_PREFIX + message.DESCRIPTOR.full_name


def resource_version(serialized: bytes) -> str:
    """Content hash: the same resource has the same version across control-plane restarts,
    so a reconnecting client's initial_resource_versions still match what is unchanged."""
    return hashlib.blake2b(serialized, digest_size=8).hexdigest()


def _envelope(name: str, version: str, type_url: str, serialized: bytes) -> Resource:
    return Resource(name=name, version=version, resource=Any(type_url=type_url, value=serialized))


def make_resource(name: str, message: Message) -> Resource:
    """The delta-xDS envelope of one resource: name, content version and the packed message."""
    # Deterministic: map fields (e.g. Workload.services) must not reorder the hash input.
    serialized = message.SerializeToString(deterministic=True)
    return _envelope(name, resource_version(serialized), type_url_of(message), serialized)


@dataclass(frozen=True, slots=True)
class Change:
    """Names of one type whose resource was added, changed or removed by one update."""

    type_url: str
    names: frozenset[str]


Subscriber = Callable[[Change], None]


class UnknownTypeUrl(KeyError):
    """A type URL nobody registered with the store."""

    def __init__(self, type_url: str, known: Iterable[str]) -> None:
        super().__init__(type_url)
        self.type_url = type_url
        self.known = tuple(known)

    def __str__(self) -> str:
        return f"unknown type_url {self.type_url!r} (served: {', '.join(self.known) or 'none'})"


# What the store keeps per resource: its version and serialization. The delta-xDS envelope
# (`Resource`) is built when a stream asks for it: a protobuf message per resource would cost
# several times the bytes it holds.
_Entry = tuple[str, bytes]
# Resources by name: a mapping, or (name, message) pairs (e.g. made one at a time).
Resources = Mapping[str, Message] | Iterable[tuple[str, Message]]


class ResourceStore:
    """Resources by type URL and name; `update` tells subscribers only what really changed."""

    def __init__(self, type_urls: Iterable[str] = ISTIO_TYPE_URLS) -> None:
        self._resources: dict[str, dict[str, _Entry]] = {}
        self._subscribers: list[Subscriber] = []
        # Bumped by every effective update; sent as system_version_info (debugging only).
        self.system_version = 0
        for type_url in type_urls:
            self.register_type(type_url)

    def register_type(self, type_url: str) -> None:
        """Serves another type (e.g. the waypoint L7 config); registering twice is harmless."""
        if not type_url.startswith(TYPE_PREFIX):
            raise ValueError(f"type_url {type_url!r} must start with {TYPE_PREFIX!r}")
        self._resources.setdefault(type_url, {})

    @property
    def type_urls(self) -> tuple[str, ...]:
        return tuple(self._resources)

    def has_type(self, type_url: str) -> bool:
        return type_url in self._resources

    def _of_type(self, type_url: str) -> dict[str, _Entry]:
        try:
            return self._resources[type_url]
        except KeyError:
            raise UnknownTypeUrl(type_url, self._resources) from None

    def names(self, type_url: str) -> KeysView[str]:
        return self._of_type(type_url).keys()

    def get(self, type_url: str, name: str) -> Resource | None:
        """The resource's delta-xDS envelope (built anew on each call), None if absent."""
        entry = self._of_type(type_url).get(name)
        return None if entry is None else _envelope(name, entry[0], type_url, entry[1])

    def entry(self, type_url: str, name: str) -> tuple[str, bytes]:
        """(version, serialized message) of a resource the store holds (KeyError if absent)."""
        return self._of_type(type_url)[name]

    def version(self, type_url: str, name: str) -> str | None:
        """The resource's version (its content hash), None if absent."""
        entry = self._of_type(type_url).get(name)
        return None if entry is None else entry[0]

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Calls `subscriber` after each effective update; returns the unsubscribe function."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    def update(
        self,
        type_url: str,
        upserts: Resources | None = None,
        removals: Iterable[str] = (),
    ) -> Change | None:
        """Adds or replaces `upserts` and drops `removals`; returns the effective change.

        Unchanged upserts and removals of absent names are not changes and reach nobody.
        """
        current = self._of_type(type_url)
        prepared = _prepare(type_url, current, upserts or {})
        removals = set(removals)
        if both := removals & prepared.keys():
            raise ValueError(f"{type_url}: both upserted and removed: {sorted(both)}")
        return self._apply(type_url, current, prepared, removals)

    def replace(self, type_url: str, resources: Resources) -> Change | None:
        """Makes `resources` the whole content of the type (a full recomputation's result)."""
        current = self._of_type(type_url)
        prepared = _prepare(type_url, current, resources)
        if not current:
            # The first fill: the prepared dict becomes the store's, rather than a second
            # table grown entry by entry beside it (the tables it outgrows, up to MiBs for
            # 10k resources, are freed in between and stay in the heap).
            self._resources[type_url] = prepared
            return self._notify(type_url, set(prepared))
        return self._apply(type_url, current, prepared, current.keys() - prepared.keys())

    def _apply(
        self,
        type_url: str,
        current: dict[str, _Entry],
        prepared: dict[str, _Entry],
        removals: Iterable[str],
    ) -> Change | None:
        changed: set[str] = set()
        for name, entry in prepared.items():
            if current.get(name) is not entry:
                current[name] = entry
                changed.add(name)
        for name in removals:
            if current.pop(name, None) is not None:
                changed.add(name)
        return self._notify(type_url, changed)

    def _notify(self, type_url: str, changed: set[str]) -> Change | None:
        if not changed:
            return None
        self.system_version += 1
        change = Change(type_url, frozenset(changed))
        for subscriber in list(self._subscribers):
            try:
                subscriber(change)
            except Exception:
                # One broken stream must not stop the others from hearing about the change.
                log.exception("xds: subscriber failed on a change of %s", type_url)
        return change


def _prepare(
    type_url: str, current: Mapping[str, _Entry], resources: Resources
) -> dict[str, _Entry]:
    """Each resource's entry, checked and serialized before anything is applied (a bad
    update changes nothing); an unchanged resource keeps the entry the store has. Pairs are
    taken one at a time, so a caller that makes each message as it is asked for never holds
    them all (10k protobuf messages at once leave the heap fragmented)."""
    pairs = resources.items() if isinstance(resources, Mapping) else resources
    prepared: dict[str, _Entry] = {}
    for name, message in pairs:
        if type_url_of(message) != type_url:
            raise TypeError(f"{type_url}: resource {name!r} is a {type_url_of(message)}")
        serialized = message.SerializeToString(deterministic=True)
        version = resource_version(serialized)
        previous = current.get(name)
        if previous is not None and previous[0] == version:
            prepared[name] = previous
        else:
            prepared[name] = (version, serialized)
    return prepared

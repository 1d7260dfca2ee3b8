"""Envoy delta xDS for one client stream, sans-IO: requests and store changes in, responses out.

Per type URL the stream tracks what the client subscribed to (wildcard and/or names), what it
holds (ACKed versions, or `initial_resource_versions` after a reconnect) and the one response
in flight. While a response waits for its (N)ACK, further changes only mark names dirty, so a
client that never ACKs costs at most one pending mark per resource, however often things change.
A NACKed version is never sent again; the next different version of that resource is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count

from ambient_fast.xds.proto.core_pb2 import Node
from ambient_fast.xds.proto.discovery_pb2 import DeltaDiscoveryRequest, DeltaDiscoveryResponse
from ambient_fast.xds.resources import Change, ResourceStore, UnknownTypeUrl

# Subscribing to "*" means every resource of the type (Envoy's xDS protocol).
WILDCARD = "*"
# Responses are cut after this many bytes of resources; the rest follows the ACK. ztunnel's
# gRPC stack (tonic) refuses messages over 4 MiB by default. A response lives three times
# while it drains (the message, its serialization, grpclib's framed copy): at 1 MiB that
# left about 0.3 KiB per workload of freed heap resident after a 10k-pod initial sync.
DEFAULT_MAX_RESPONSE_BYTES = 512 << 10
# Stands for "the removal of this name" in the set of versions a client rejected.
_REMOVAL = ""


class DeltaProtocolError(ValueError):
    """A request this server cannot serve; the stream ends with INVALID_ARGUMENT."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """A NACK: the client refused the response `nonce` and keeps its previous versions."""

    type_url: str
    nonce: str
    names: tuple[str, ...]
    code: int
    message: str


@dataclass(slots=True)
class Step:
    """What the caller must do after one request: send `responses`, log `rejection`."""

    responses: list[DeltaDiscoveryResponse]
    rejection: Rejection | None = None


@dataclass(slots=True)
class _InFlight:
    nonce: str
    sent: dict[str, str]
    removed: set[str]


@dataclass(slots=True)
class _Subscription:
    """One type URL's state on one stream."""

    wildcard: bool
    names: set[str]
    # What the client holds: name -> version.
    known: dict[str, str]
    # Names whose state may differ from `known`; examined when nothing is in flight.
    dirty: set[str] = field(default_factory=set)
    # Explicitly (re)subscribed names: answered even if the client seems up to date.
    forced: set[str] = field(default_factory=set)
    # name -> version (or _REMOVAL) the client NACKed; not sent again.
    rejected: dict[str, str] = field(default_factory=dict)
    in_flight: _InFlight | None = None
    # The first request of a type is always answered, even with nothing, so the client
    # can tell it is in sync (ztunnel's readiness waits for it).
    owe_response: bool = True

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names

    def forget(self, name: str) -> None:
        self.known.pop(name, None)
        self.dirty.discard(name)
        self.forced.discard(name)
        self.rejected.pop(name, None)


class DeltaStream:
    """The delta-xDS state of one ADS stream over a `ResourceStore`."""

    def __init__(
        self, store: ResourceStore, *, max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    ) -> None:
        self._store = store
        self._max_response_bytes = max_response_bytes
        self._subscriptions: dict[str, _Subscription] = {}
        self._nonces = count(1)
        # The first node the client identified itself with (Envoy sends it once).
        self.node: Node | None = None
        # Per type: how many resources the client said it held when it subscribed (its
        # initial_resource_versions; non-zero after a reconnect).
        self.resumed: dict[str, int] = {}

    @property
    def node_id(self) -> str:
        return self.node.id if self.node is not None else ""

    def receive(self, request: DeltaDiscoveryRequest) -> Step:
        """Applies one client request: (N)ACK, subscription changes, initial versions."""
        if self.node is None and request.HasField("node"):
            self.node = Node()
            self.node.CopyFrom(request.node)
        type_url = request.type_url
        if not type_url:
            raise DeltaProtocolError("DeltaDiscoveryRequest without type_url")
        if not self._store.has_type(type_url):
            raise DeltaProtocolError(str(UnknownTypeUrl(type_url, self._store.type_urls)))
        sub = self._subscriptions.get(type_url)
        rejection = None
        if sub is None:
            sub = self._start(type_url, request)
        else:
            if request.response_nonce:
                rejection = self._settle(type_url, sub, request)
            self._resubscribe(type_url, sub, request)
        return Step(self._flush(type_url, sub), rejection)

    def resources_changed(self, change: Change) -> list[DeltaDiscoveryResponse]:
        """Notes a store change; returns a response now unless one is already in flight."""
        sub = self._subscriptions.get(change.type_url)
        if sub is None:
            return []
        sub.dirty.update(name for name in change.names if sub.wants(name) or name in sub.known)
        return self._flush(change.type_url, sub)

    def pending(self) -> int:
        """Names waiting to be examined across all types (bounded by the store's size)."""
        return sum(len(sub.dirty | sub.forced) for sub in self._subscriptions.values())

    def in_flight(self) -> int:
        """Responses sent and not yet (N)ACKed: at most one per type."""
        return sum(sub.in_flight is not None for sub in self._subscriptions.values())

    def _start(self, type_url: str, request: DeltaDiscoveryRequest) -> _Subscription:
        requested = set(request.resource_names_subscribe)
        names = requested - {WILDCARD}
        # Envoy's legacy rule: an empty first subscription is a wildcard one.
        wildcard = not requested or WILDCARD in requested
        known = dict(request.initial_resource_versions)
        self.resumed[type_url] = len(known)
        sub = _Subscription(wildcard=wildcard, names=names, known=known)
        sub.dirty.update(known)
        sub.dirty.update(names)
        if wildcard:
            sub.dirty.update(self._store.names(type_url))
        # Named subscriptions must be answered even if current, except where the client
        # states its version in this very request (a reconnect): then it provably has it.
        sub.forced.update(names - known.keys())
        self._subscriptions[type_url] = sub
        return sub

    def _resubscribe(
        self, type_url: str, sub: _Subscription, request: DeltaDiscoveryRequest
    ) -> None:
        for name in request.resource_names_subscribe:
            if name == WILDCARD:
                if not sub.wildcard:
                    sub.wildcard = True
                    sub.dirty.update(self._store.names(type_url))
            else:
                sub.names.add(name)
                sub.forced.add(name)
        for name in request.resource_names_unsubscribe:
            if name == WILDCARD:
                sub.wildcard = False
                # The client drops what it held only through the wildcard.
                for held in [n for n in sub.known if n not in sub.names]:
                    sub.forget(held)
            else:
                sub.names.discard(name)
                if not sub.wildcard:
                    sub.forget(name)

    def _settle(
        self, type_url: str, sub: _Subscription, request: DeltaDiscoveryRequest
    ) -> Rejection | None:
        flight = sub.in_flight
        if flight is None or request.response_nonce != flight.nonce:
            # A nonce we are not waiting for: stale or invented. Nothing to settle.
            return None
        sub.in_flight = None
        if request.HasField("error_detail"):
            sub.rejected.update(flight.sent)
            sub.rejected.update(dict.fromkeys(flight.removed, _REMOVAL))
            detail = request.error_detail
            names = tuple(sorted(flight.sent.keys() | flight.removed))
            return Rejection(type_url, flight.nonce, names, detail.code, detail.message)
        for name, version in flight.sent.items():
            sub.rejected.pop(name, None)
            if sub.wants(name):
                sub.known[name] = version
        for name in flight.removed:
            sub.rejected.pop(name, None)
            sub.known.pop(name, None)
        return None

    def _flush(self, type_url: str, sub: _Subscription) -> list[DeltaDiscoveryResponse]:
        if sub.in_flight is not None or not (sub.dirty or sub.forced or sub.owe_response):
            return []
        # Filled in place: an envelope made on its own and copied in costs a protobuf arena
        # per resource (a 1 MiB response holds thousands).
        response = DeltaDiscoveryResponse(type_url=type_url)
        removed: list[str] = []
        size = 0
        examined: list[str] = []
        # The store's version strings, not copies: what a client holds costs each stream a
        # dict entry per resource.
        sent: dict[str, str] = {}
        for name in sorted(sub.dirty | sub.forced):
            if size >= self._max_response_bytes:
                break  # the rest stays dirty for the next response
            examined.append(name)
            outcome = self._outcome(type_url, sub, name)
            if isinstance(outcome, str):
                version, serialized = self._store.entry(type_url, name)
                resource = response.resources.add(name=name, version=version)
                resource.resource.type_url = type_url
                resource.resource.value = serialized
                sent[name] = version
                size += resource.ByteSize()
            elif outcome:
                removed.append(name)
        # New sets, not difference_update: an emptied set would keep its largest table.
        sub.dirty = sub.dirty.difference(examined)
        sub.forced = sub.forced.difference(examined)
        if not sent and not removed and not sub.owe_response:
            return []
        sub.owe_response = False
        response.nonce = str(next(self._nonces))
        response.system_version_info = str(self._store.system_version)
        response.removed_resources.extend(removed)
        sub.in_flight = _InFlight(response.nonce, sent, set(removed))
        return [response]

    def _outcome(self, type_url: str, sub: _Subscription, name: str) -> str | bool:
        """What to tell the client about `name`: the version of the resource to send, True
        for a removal, False for nothing."""
        current = self._store.version(type_url, name)
        forced = name in sub.forced
        if not sub.wants(name):
            # Only a reconnecting client's claims get here: drop what is gone, and stop
            # tracking what it no longer subscribes to.
            if name in sub.known and current is not None:
                sub.known.pop(name)
            return name in sub.known
        if current is None:
            if forced:
                # An explicit subscription to a missing name is answered with its removal.
                return True
            return name in sub.known and sub.rejected.get(name) != _REMOVAL
        if forced:
            return current
        if current in (sub.known.get(name), sub.rejected.get(name)):
            return False
        return current

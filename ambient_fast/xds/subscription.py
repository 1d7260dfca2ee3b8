"""The client side of delta ADS, sans-IO: responses in, (N)ACKs and applied resources out.

`DeltaSubscription` is what a node proxy keeps across streams: the versions it holds per type
(sent back as `initial_resource_versions` when a new stream starts, so the control plane sends
only what differs) and whether every subscribed type has answered once (readiness). Each
response is decoded and handed to a `ResourceSink` (the state store); resources that fail to
decode or that the sink refuses are NACKed by name while the rest are applied, as ztunnel does.
`Backoff` is the reconnect schedule. No sockets, no clock: `xds/client.py` does the I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from google.protobuf.message import DecodeError, Message
from google.protobuf.struct_pb2 import Struct

from ambient_fast.xds.proto.authorization_pb2 import Authorization
from ambient_fast.xds.proto.core_pb2 import Node
from ambient_fast.xds.proto.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    Status,
)
from ambient_fast.xds.proto.workload_pb2 import Address
from ambient_fast.xds.resources import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL

log = logging.getLogger(__name__)

# What a ztunnel subscribes to (reference 02), and the message each type URL carries.
ZTUNNEL_TYPES: Mapping[str, type[Message]] = {
    ADDRESS_TYPE_URL: Address,
    AUTHORIZATION_TYPE_URL: Authorization,
}
# google.rpc.Code INVALID_ARGUMENT: the code we put in a NACK's error_detail.
INVALID_ARGUMENT = 3
# Rejections spelled out in one NACK; the rest are counted (a NACK is a log line at istiod).
MAX_DETAILED_REJECTIONS = 20
# ztunnel's reconnect backoff (src/xds/client.rs INITIAL_BACKOFF / MAX_BACKOFF).
INITIAL_BACKOFF = 0.010
MAX_BACKOFF = 15.0


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """Who the node proxy says it is: ztunnel's node id and metadata (reference 02)."""

    instance_ip: str
    pod_name: str
    pod_namespace: str
    node_name: str = ""
    cluster_id: str = "Kubernetes"
    # Extra node metadata (ztunnel's proxy metadata); strings only.
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def node_id(self) -> str:
        ns = self.pod_namespace
        return f"ztunnel~{self.instance_ip}~{self.pod_name}.{ns}~{ns}.svc.cluster.local"

    def node(self) -> Node:
        metadata = Struct()
        metadata.update(
            {
                "NAME": self.pod_name,
                "NAMESPACE": self.pod_namespace,
                "INSTANCE_IPS": self.instance_ip,
                "NODE_NAME": self.node_name,
                "CLUSTER_ID": self.cluster_id,
                **self.metadata,
            }
        )
        return Node(id=self.node_id, metadata=metadata)


class ApplyOutcome(Protocol):
    @property
    def rejected(self) -> Mapping[str, str]:
        """Resource name -> why it was refused (the sink keeps its previous version)."""
        ...


class ResourceSink(Protocol):
    """Where decoded resources go (the state store); it may refuse some of them."""

    def apply(
        self, type_url: str, upserts: Mapping[str, Message], removals: Collection[str]
    ) -> ApplyOutcome: ...


@dataclass(frozen=True, slots=True)
class Received:
    """The outcome of one response: the request to send back and what happened."""

    reply: DeltaDiscoveryRequest  # the ACK, or the NACK (error_detail set)
    type_url: str
    applied: tuple[str, ...]  # names accepted (added or updated)
    removed: tuple[str, ...]
    rejected: Mapping[str, str]  # name -> reason
    became_ready: bool = False

    @property
    def nack(self) -> bool:
        return self.reply.HasField("error_detail")


def describe_rejections(rejected: Mapping[str, str]) -> str:
    """The NACK's message: "name: reason; ..." with the first few spelled out."""
    items = sorted(rejected.items())
    shown = [f"{name}: {reason}" for name, reason in items[:MAX_DETAILED_REJECTIONS]]
    if len(items) > MAX_DETAILED_REJECTIONS:
        shown.append(f"and {len(items) - MAX_DETAILED_REJECTIONS} more")
    return "; ".join(shown)


class DeltaSubscription:
    """Wildcard delta subscriptions to `types`, applied to `sink`, across reconnects."""

    def __init__(
        self,
        sink: ResourceSink,
        node: Node,
        types: Mapping[str, type[Message]] = ZTUNNEL_TYPES,
    ) -> None:
        self._sink = sink
        self._node = node
        self._types = dict(types)
        # type URL -> resource name -> version, for what the sink accepted.
        self._held: dict[str, dict[str, str]] = {t: {} for t in self._types}
        self._awaiting_first: set[str] = set(self._types)

    @property
    def ready(self) -> bool:
        """Every subscribed type has answered at least once (ztunnel's xDS readiness)."""
        return not self._awaiting_first

    @property
    def type_urls(self) -> tuple[str, ...]:
        return tuple(self._types)

    def held(self, type_url: str) -> Mapping[str, str]:
        """Name -> version of what the sink holds from the control plane for this type."""
        return self._held[type_url]

    def start(self) -> list[DeltaDiscoveryRequest]:
        """The first request of each type on a new stream: wildcard (no names, the legacy
        form ztunnel sends), the node, and the versions held from earlier streams."""
        return [
            DeltaDiscoveryRequest(
                node=self._node,
                type_url=type_url,
                initial_resource_versions=self._held[type_url],
            )
            for type_url in self._types
        ]

    def receive(self, response: DeltaDiscoveryResponse) -> Received:
        """Decodes and applies one response; returns the ACK or NACK to send."""
        type_url = response.type_url
        message_type = self._types.get(type_url)
        if message_type is None:
            reason = f"type {type_url!r} was not subscribed"
            return self._answer(response, (), (), {"*": reason})
        rejected: dict[str, str] = {}
        upserts: dict[str, Message] = {}
        versions: dict[str, str] = {}
        for resource in response.resources:
            name = resource.name
            if not name:
                rejected["<unnamed>"] = "resource without a name"
                continue
            if name in upserts or name in rejected:
                rejected[name] = "sent twice in one response"
                upserts.pop(name, None)
                continue
            body = resource.resource
            if not resource.HasField("resource"):
                rejected[name] = "resource without a body"
                continue
            if body.type_url != type_url:
                rejected[name] = f"body is {body.type_url!r}, response is {type_url!r}"
                continue
            try:
                upserts[name] = message_type.FromString(body.value)
            except DecodeError as e:
                rejected[name] = f"undecodable {message_type.DESCRIPTOR.full_name}: {e}"
                continue
            versions[name] = resource.version
        removals = []
        for name in response.removed_resources:
            if name in upserts or name in rejected:
                rejected[name] = "both updated and removed in one response"
                upserts.pop(name, None)
            else:
                removals.append(name)
        outcome = self._sink.apply(type_url, upserts, removals)
        rejected.update(outcome.rejected)
        held = self._held[type_url]
        applied = tuple(name for name in upserts if name not in rejected)
        for name in applied:
            held[name] = versions[name]
        for name in removals:
            held.pop(name, None)
        return self._answer(response, applied, tuple(removals), rejected)

    def _answer(
        self,
        response: DeltaDiscoveryResponse,
        applied: tuple[str, ...],
        removed: tuple[str, ...],
        rejected: Mapping[str, str],
    ) -> Received:
        reply = DeltaDiscoveryRequest(type_url=response.type_url, response_nonce=response.nonce)
        if rejected:
            reply.error_detail.CopyFrom(
                Status(code=INVALID_ARGUMENT, message=describe_rejections(rejected))
            )
        became_ready = False
        if response.type_url in self._awaiting_first:
            # A NACK counts too: what was valid is applied, and the control plane will not
            # resend the rejected versions, so waiting for an ACK could wait forever.
            self._awaiting_first.discard(response.type_url)
            became_ready = not self._awaiting_first
        return Received(reply, response.type_url, applied, removed, rejected, became_ready)


class Backoff:
    """Reconnect delays: `initial`, doubling up to `maximum`; `reset()` after a good stream."""

    def __init__(self, initial: float = INITIAL_BACKOFF, maximum: float = MAX_BACKOFF) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"backoff: need 0 < initial ({initial}) <= maximum ({maximum})")
        self._initial = initial
        self._maximum = maximum
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self._maximum, delay * 2)
        return delay

    def reset(self) -> None:
        self._next = self._initial

"""ZDS, the node proxy's side, sans-IO: the CNI node agent hands pods to the proxy (in-pod mode).

One protobuf message per SOCK_SEQPACKET packet (reference 02, istio/ztunnel src/inpod). The
proxy connects and says `ZdsHello{V1}`; the agent sends `WorkloadRequest`s, each answered by one
`WorkloadResponse{Ack{error}}` (empty error = done):

- add{uid, workload_info} with exactly one netns fd (SCM_RIGHTS): start that pod's proxy. The same
  uid and netns again is a no-op; the same uid with a new netns replaces the proxy.
- keep{uid}, before the snapshot only: the pod survives the reconciliation.
- snapshot_sent: every pod not added or kept since this connection began is stopped.
- del{uid}: stop the pod's proxy (before the snapshot: just forget the earlier add/keep).

`ZdsSession` is that state machine (istio/ztunnel statemanager.rs): packets in, `Step`s out
(pods to stop, a pod to start, the ack). An add's ack waits until the caller reports the start
with `started` or `start_failed`. Every fd that arrives with a refused message is closed here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from ambient_fast.xds.proto import zds_pb2
from ambient_fast.ztunnel.config import WorkloadInfo

log = logging.getLogger(__name__)

# What identifies a network namespace: its nsfs inode (device, inode), as ztunnel's NetnsID.
NetnsId = tuple[int, int]


class ZdsError(ValueError):
    """A request the proxy refuses; the message is the ack's error."""


@dataclass(frozen=True, slots=True)
class Packet:
    """One received SEQPACKET: bytes, the fds that came with it, and whether the kernel cut
    the payload or the control data (MSG_TRUNC / MSG_CTRUNC)."""

    data: bytes
    fds: tuple[int, ...] = ()
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class AddPod:
    uid: str
    info: WorkloadInfo
    netns: int  # the fd that came with it (SCM_RIGHTS), -1 until attached; the holder owns it


@dataclass(frozen=True, slots=True)
class KeepPod:
    uid: str


@dataclass(frozen=True, slots=True)
class DelPod:
    uid: str


@dataclass(frozen=True, slots=True)
class SnapshotSent:
    pass


Request = AddPod | KeepPod | DelPod | SnapshotSent


def encode_hello() -> bytes:
    return zds_pb2.ZdsHello(version=zds_pb2.V1).SerializeToString()


def encode_ack(error: str = "") -> bytes:
    return zds_pb2.WorkloadResponse(ack=zds_pb2.Ack(error=error)).SerializeToString()


def encode_request(request: Request) -> bytes:
    """The agent's side of the wire (an add's fd travels beside it, as SCM_RIGHTS)."""
    message = zds_pb2.WorkloadRequest()
    if isinstance(request, AddPod):
        info = request.info
        message.add.uid = request.uid
        message.add.workload_info.name = info.name
        message.add.workload_info.namespace = info.namespace
        message.add.workload_info.service_account = info.service_account
    elif isinstance(request, KeepPod):
        message.keep.uid = request.uid
    elif isinstance(request, DelPod):
        getattr(message, "del").uid = request.uid  # `del`: reachable by name only
    else:
        message.snapshot_sent.SetInParent()
    return message.SerializeToString()


def _close_fds(fds: tuple[int, ...]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError as e:
            log.warning("zds: closing received fd %d: %s", fd, e)


def _decode(packet: Packet) -> Request:
    if packet.truncated:
        raise ZdsError("truncated message (payload or fds cut by the kernel)")
    try:
        message = zds_pb2.WorkloadRequest.FromString(packet.data)
    except DecodeError as e:
        raise ZdsError(f"malformed WorkloadRequest ({len(packet.data)} bytes): {e}") from None
    kind = message.WhichOneof("payload")
    if kind is None:
        raise ZdsError("WorkloadRequest without a known payload (add, keep, del, snapshot_sent)")
    if kind == "snapshot_sent":
        request: Request = SnapshotSent()
    elif kind == "keep":
        request = KeepPod(message.keep.uid)
    elif kind == "del":
        request = DelPod(getattr(message, "del").uid)  # a keyword: reachable by name only
    else:
        add = message.add
        if not add.HasField("workload_info"):
            raise ZdsError(f"add {add.uid!r}: workload_info is required")
        info = add.workload_info
        request = AddPod(add.uid, WorkloadInfo(info.namespace, info.name, info.service_account), -1)
    if not isinstance(request, SnapshotSent) and not request.uid:
        raise ZdsError(f"{kind} without a uid")
    return request


def parse_request(packet: Packet) -> Request:
    """The request in `packet`; an add takes over its one fd. Raises ZdsError naming the uid
    when known, after closing every fd of the packet."""
    try:
        request = _decode(packet)
        if isinstance(request, AddPod):
            if len(packet.fds) != 1:
                got = "none" if not packet.fds else f"{len(packet.fds)}"
                raise ZdsError(f"add {request.uid}: expected exactly 1 netns fd, got {got}")
            return AddPod(request.uid, request.info, packet.fds[0])
        if packet.fds:
            what = "snapshot_sent" if isinstance(request, SnapshotSent) else _describe(request)
            raise ZdsError(f"{what}: {len(packet.fds)} unexpected fds (only add carries one)")
        return request
    except ZdsError:
        _close_fds(packet.fds)
        raise


def _describe(request: KeepPod | DelPod) -> str:
    return f"{'keep' if isinstance(request, KeepPod) else 'del'} {request.uid}"


def _refusal(error: str) -> bytes:
    log.warning("zds: refused: %s", error)
    return encode_ack(error)


def netns_id(fd: int) -> NetnsId:
    stat = os.fstat(fd)
    return stat.st_dev, stat.st_ino


@dataclass(frozen=True, slots=True)
class Pod:
    uid: str
    info: WorkloadInfo
    netns: NetnsId


@dataclass(frozen=True, slots=True)
class PodStart:
    """Start this pod's proxy in the namespace open at `netns` (the caller owns the fd now and
    closes it when the pod stops or the start fails)."""

    uid: str
    info: WorkloadInfo
    netns: int
    netns_id: NetnsId


@dataclass(frozen=True, slots=True)
class Step:
    """What one request asks for, in order: stop these pods, start that one, then send `ack`
    (None while a start is pending: `started` / `start_failed` give it)."""

    stop: tuple[str, ...] = ()
    start: PodStart | None = None
    ack: bytes | None = None


class ZdsSession:
    """The proxy's pods and the reconciliation of one agent connection."""

    def __init__(self) -> None:
        self._pods: dict[str, Pod] = {}
        self._pending: dict[str, PodStart] = {}
        self._snapshot_received = False
        self._mentioned: set[str] = set()

    @property
    def pods(self) -> Mapping[str, Pod]:
        return self._pods

    @property
    def snapshot_received(self) -> bool:
        """The agent's snapshot on this connection is in (ztunnel is ready from then on)."""
        return self._snapshot_received

    def connected(self) -> bytes:
        """A new agent connection: the reconciliation starts over. Returns the hello."""
        self._snapshot_received = False
        self._mentioned.clear()
        return encode_hello()

    def receive(self, packet: Packet) -> Step:
        try:
            request = parse_request(packet)
        except ZdsError as e:
            return self._refuse(str(e))
        if isinstance(request, AddPod):
            return self._add(request)
        if isinstance(request, KeepPod):
            if self._snapshot_received:
                return self._refuse(f"keep {request.uid}: only allowed before snapshot_sent")
            self._mentioned.add(request.uid)
            log.info("zds: keep pod %s until the snapshot", request.uid)
            return Step(ack=encode_ack())
        if isinstance(request, DelPod):
            return self._delete(request.uid)
        return self._snapshot()

    def started(self, start: PodStart) -> bytes:
        """The pod's proxy runs: it is one of ours now."""
        self._pending.pop(start.uid, None)
        self._pods[start.uid] = Pod(start.uid, start.info, start.netns_id)
        return encode_ack()

    def start_failed(self, start: PodStart, error: str) -> bytes:
        """Nothing of the pod was installed; the agent learns why."""
        self._pending.pop(start.uid, None)
        info = start.info
        return _refusal(f"add {start.uid} ({info.namespace}/{info.name}): {error}")

    def _refuse(self, error: str) -> Step:
        return Step(ack=_refusal(error))

    def _add(self, request: AddPod) -> Step:
        uid, info = request.uid, request.info
        try:
            ns = netns_id(request.netns)
        except OSError as e:
            _close_fds((request.netns,))
            return self._refuse(f"add {uid}: netns fd: {e}")
        if uid in self._pending:
            _close_fds((request.netns,))
            return self._refuse(f"add {uid}: a start of this pod is already in progress")
        if not self._snapshot_received:
            self._mentioned.add(uid)
        start = PodStart(uid, info, request.netns, ns)
        existing = self._pods.get(uid)
        if existing is not None and existing.netns == ns:
            _close_fds((request.netns,))  # the proxy we run already holds that namespace
            return Step(ack=encode_ack())
        stop: tuple[str, ...] = ()
        if existing is not None:
            # A new sandbox for the same pod (ztunnel: a CNI retry recreated the netns).
            log.info("zds: pod %s has a new netns: replacing its proxy", uid)
            del self._pods[uid]
            stop = (uid,)
        log.info("zds: add pod %s (%s/%s)", uid, info.namespace, info.name)
        self._pending[uid] = start
        return Step(stop=stop, start=start)

    def _delete(self, uid: str) -> Step:
        if not self._snapshot_received:
            # Before the snapshot a del only takes back an add or keep; reconciliation stops it.
            self._mentioned.discard(uid)
            return Step(ack=encode_ack())
        if self._pods.pop(uid, None) is None:
            log.info("zds: del pod %s: not ours (already gone)", uid)
            return Step(ack=encode_ack())
        log.info("zds: del pod %s", uid)
        return Step(stop=(uid,), ack=encode_ack())

    def _snapshot(self) -> Step:
        if self._snapshot_received:
            return self._refuse("snapshot_sent twice on one connection")
        gone = tuple(uid for uid in self._pods if uid not in self._mentioned)
        for uid in gone:
            del self._pods[uid]
        self._snapshot_received = True
        self._mentioned.clear()
        log.info("zds: snapshot received: %d pods, %d removed", len(self._pods), len(gone))
        return Step(stop=gone, ack=encode_ack())

"""The node agent's end of ZDS: hands pods (and their network namespaces) to ztunnel.

As istio-cni's node agent does, the agent listens on the unix SOCK_SEQPACKET socket
(INPOD_UDS, default /var/run/ztunnel/ztunnel.sock) and ztunnel connects. Per connection:
ztunnel says `ZdsHello`; the agent sends `AddWorkload` (netns fd in SCM_RIGHTS) for every pod
it holds and then `SnapshotSent`; afterwards each change is one request. Every request waits
for its `Ack`; an ack with an error is raised to the caller naming the pod. Several ztunnels
may be connected at once (an upgrade: the new one starts before the old one leaves); changes
go to all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from ambient_fast.xds.proto import zds_pb2
from ambient_fast.ztunnel.config import WorkloadInfo
from ambient_fast.ztunnel.zds import AddPod, DelPod, SnapshotSent, encode_request

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/var/run/ztunnel/ztunnel.sock")
# One ZDS message per packet; ours are a few hundred bytes.
MAX_PACKET = 64 * 1024
ACK_TIMEOUT_S = 10.0


class ZdsAckError(RuntimeError):
    """ztunnel refused a request, or did not answer it."""


@dataclass(frozen=True, slots=True)
class PodHandoff:
    uid: str
    name: str
    namespace: str
    service_account: str
    netns_path: str  # opened for each send; the fd travels, the path stays here


def _add_request(pod: PodHandoff) -> bytes:
    info = WorkloadInfo(pod.namespace, pod.name, pod.service_account)
    return encode_request(AddPod(pod.uid, info, netns=-1))  # the fd travels beside it


def parse_ack(packet: bytes) -> str:
    """The ack's error ("" = done); ZdsAckError for anything that is not a WorkloadResponse ack."""
    response = zds_pb2.WorkloadResponse()
    try:
        response.ParseFromString(packet)
    except DecodeError as e:
        raise ZdsAckError(f"undecodable response ({len(packet)} bytes): {e}") from e
    if not response.HasField("ack"):
        raise ZdsAckError(f"response without an ack ({len(packet)} bytes)")
    return str(response.ack.error)


@dataclass(frozen=True, slots=True)
class _Request:
    data: bytes
    netns_path: str | None
    what: str
    done: asyncio.Future[None]


class _Connection:
    """One connected ztunnel. Requests are queued and sent in order, each waiting for its ack,
    so what is queued in one step (a snapshot) cannot interleave with later changes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._outbox: asyncio.Queue[_Request] = asyncio.Queue()
        self._acks: asyncio.Queue[bytes] = asyncio.Queue()

    def send(self, data: bytes, netns_path: str | None, what: str) -> asyncio.Future[None]:
        done = asyncio.get_running_loop().create_future()
        self._outbox.put_nowait(_Request(data, netns_path, what, done))
        return done

    async def run(self) -> None:
        """Sends requests in order until ztunnel leaves or a request fails."""
        reader = asyncio.ensure_future(self._read())
        try:
            while True:
                take = asyncio.ensure_future(self._outbox.get())
                await asyncio.wait([take, reader], return_when=asyncio.FIRST_COMPLETED)
                if not take.done():
                    take.cancel()
                    return  # ztunnel left while nothing was asked of it
                request = take.result()
                try:
                    await self._exchange(request)
                except (OSError, ZdsAckError) as e:
                    request.done.set_exception(e)
                    raise
                request.done.set_result(None)
        finally:
            reader.cancel()
            while not self._outbox.empty():
                left = self._outbox.get_nowait()
                left.done.set_exception(ZdsAckError(f"{left.what}: ztunnel connection gone"))

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while packet := await loop.sock_recv(self.sock, MAX_PACKET):
            self._acks.put_nowait(packet)
        self._acks.put_nowait(b"")  # end of stream

    async def _exchange(self, request: _Request) -> None:
        loop = asyncio.get_running_loop()
        if request.netns_path is None:
            await loop.sock_sendall(self.sock, request.data)
        else:
            fd = os.open(request.netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                socket.send_fds(self.sock, [request.data], [fd])
            finally:
                os.close(fd)  # the message in flight holds its own reference
        try:
            async with asyncio.timeout(ACK_TIMEOUT_S):
                packet = await self._acks.get()
        except TimeoutError:
            raise ZdsAckError(f"{request.what}: no ack within {ACK_TIMEOUT_S:.0f} s") from None
        if not packet:
            raise ZdsAckError(f"{request.what}: ztunnel closed the connection")
        error = parse_ack(packet)
        if error:
            raise ZdsAckError(f"{request.what}: ztunnel refused: {error}")


class ZtunnelServer:
    """Holds the node's captured pods and keeps every connected ztunnel in step with them."""

    def __init__(self, path: Path = DEFAULT_SOCKET) -> None:
        self.path = path
        self.pods: dict[str, PodHandoff] = {}
        self.connected = asyncio.Event()
        self._listener: socket.socket | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a previous agent's socket
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        listener.bind(str(self.path))
        listener.listen(8)
        listener.setblocking(False)
        self._listener = listener
        self._spawn(self._accept_loop(listener))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(listener)
            sock.setblocking(False)
            self._spawn(self._serve(sock))

    async def _serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        connection = _Connection(sock)
        try:
            async with asyncio.timeout(ACK_TIMEOUT_S):
                hello_packet = await loop.sock_recv(sock, MAX_PACKET)
            hello = zds_pb2.ZdsHello()
            hello.ParseFromString(hello_packet)
            if hello.version != zds_pb2.V1:
                raise ZdsAckError(f"ZdsHello: unsupported version {hello.version}")
            # The snapshot is queued and the connection joined in one step: every later
            # change goes behind it.
            for pod in self.pods.values():
                connection.send(_add_request(pod), pod.netns_path, f"add {pod.uid}")
            snapshot = connection.send(encode_request(SnapshotSent()), None, "snapshot")
            self._connections.add(connection)
            runner = asyncio.ensure_future(connection.run())
            await asyncio.wait([snapshot, runner], return_when=asyncio.FIRST_COMPLETED)
            if snapshot.done() and snapshot.exception() is None:
                self.connected.set()
                log.info("ztunnel on %s: snapshot of %d pods taken", self.path, len(self.pods))
            await runner
        except (OSError, DecodeError, ZdsAckError, TimeoutError) as e:
            log.warning("ztunnel connection on %s: %s", self.path, e)
        finally:
            self._connections.discard(connection)
            if not self._connections:
                self.connected.clear()
            sock.close()

    async def add(self, pod: PodHandoff) -> None:
        """Captures `pod`: remembered for future snapshots, sent to every connected ztunnel."""
        self.pods[pod.uid] = pod
        await self._broadcast(_add_request(pod), pod.netns_path, f"add {pod.uid}")

    async def delete(self, uid: str) -> None:
        self.pods.pop(uid, None)
        await self._broadcast(encode_request(DelPod(uid)), None, f"del {uid}")

    async def _broadcast(self, data: bytes, netns_path: str | None, what: str) -> None:
        sent = [c.send(data, netns_path, what) for c in self._connections]
        for outcome in await asyncio.gather(*sent, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

"""The delta ADS gRPC server (grpclib): one `DeltaStream` per client stream over a shared store.

Each stream has a reader (requests -> state machine) and a writer (state machine -> wire); store
changes reach the state machine synchronously and the writer is woken. A bad request ends only
its own stream, with INVALID_ARGUMENT and a log line naming the peer and node id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ssl import SSLContext
from types import TracebackType
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from ambient_fast.xds.delta import DEFAULT_MAX_RESPONSE_BYTES, DeltaProtocolError, DeltaStream
from ambient_fast.xds.proto.discovery_grpc import AggregatedDiscoveryServiceBase
from ambient_fast.xds.proto.discovery_pb2 import DeltaDiscoveryRequest, DeltaDiscoveryResponse
from ambient_fast.xds.resources import Change, ResourceStore

if TYPE_CHECKING:
    from grpclib._typing import IServable
    from grpclib.server import Stream

    AdsStream = Stream[DeltaDiscoveryRequest, DeltaDiscoveryResponse]

log = logging.getLogger(__name__)

# istiod's xDS/CA port (reference 02).
DEFAULT_XDS_PORT = 15012


@dataclass(frozen=True, slots=True)
class ClientView:
    """One connected stream as the admin page (and the tests) see it."""

    peer: str
    node_id: str
    in_flight: int
    pending: int
    queued: int
    # Per type URL: resources the client claimed to hold when it subscribed (a reconnect).
    resumed: Mapping[str, int] = field(default_factory=dict)


def _describe_peer(stream: AdsStream) -> str:
    addr = stream.peer.addr()
    return f"{addr[0]}:{addr[1]}" if addr else "unknown"


class _ClientStream:
    """Glue between one grpclib stream and its `DeltaStream`."""

    def __init__(self, stream: AdsStream, store: ResourceStore, max_response_bytes: int) -> None:
        self.stream = stream
        self.peer = _describe_peer(stream)
        self.delta = DeltaStream(store, max_response_bytes=max_response_bytes)
        # Holds at most one response per type: the state machine never has two in flight.
        self.outbox: deque[DeltaDiscoveryResponse] = deque()
        self._wake = asyncio.Event()

    def view(self) -> ClientView:
        return ClientView(
            self.peer,
            self.delta.node_id,
            self.delta.in_flight(),
            self.delta.pending(),
            len(self.outbox),
            dict(self.delta.resumed),
        )

    def on_change(self, change: Change) -> None:
        self._queue(self.delta.resources_changed(change))

    def _queue(self, responses: list[DeltaDiscoveryResponse]) -> None:
        if responses:
            self.outbox.extend(responses)
            self._wake.set()

    def _refuse(self, message: str) -> GRPCError:
        log.warning("xds: %s: peer=%s node=%s", message, self.peer, self.delta.node_id or "-")
        return GRPCError(Status.INVALID_ARGUMENT, message)

    async def receive(self) -> None:
        while True:
            try:
                request = await self.stream.recv_message()
            except DecodeError as e:
                raise self._refuse(f"malformed DeltaDiscoveryRequest: {e}") from e
            if request is None:
                return  # the client closed its side
            if request.initial_resource_versions and not request.response_nonce:
                log.info(
                    "xds: stream resumed peer=%s node=%s type=%s: %d initial_resource_versions",
                    self.peer,
                    request.node.id or self.delta.node_id or "-",
                    request.type_url,
                    len(request.initial_resource_versions),
                )
            try:
                step = self.delta.receive(request)
            except DeltaProtocolError as e:
                raise self._refuse(str(e)) from e
            if step.rejection is not None:
                nack = step.rejection
                log.warning(
                    "xds: NACK peer=%s node=%s type=%s nonce=%s resources=%s: code=%d %s",
                    self.peer,
                    self.delta.node_id or "-",
                    nack.type_url,
                    nack.nonce,
                    ",".join(nack.names) or "-",
                    nack.code,
                    nack.message,
                )
            self._queue(step.responses)

    async def send(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.outbox:
                await self.stream.send_message(self.outbox.popleft())


class _AggregatedDiscoveryService(AggregatedDiscoveryServiceBase):
    def __init__(self, server: XdsServer) -> None:
        self._server = server

    async def DeltaAggregatedResources(self, stream: AdsStream) -> None:
        await self._server.serve_stream(stream)


class XdsServer:
    """Serves `AggregatedDiscoveryService.DeltaAggregatedResources` from a `ResourceStore`.

    TLS when `ssl` is given (it is told to offer ALPN h2, which gRPC clients require);
    plaintext otherwise, for debugging only. `services` are other grpclib services to serve
    on the same port, as istiod serves its CA next to xDS on 15012.
    """

    def __init__(
        self,
        store: ResourceStore,
        *,
        ssl: SSLContext | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        services: Iterable[IServable] = (),
    ) -> None:
        self._store = store
        self._ssl = ssl
        self._max_response_bytes = max_response_bytes
        self._clients: set[_ClientStream] = set()
        self._grpc = Server([_AggregatedDiscoveryService(self), *services])
        self._port = 0

    @property
    def port(self) -> int:
        return self._port

    def clients(self) -> list[ClientView]:
        return [client.view() for client in self._clients]

    async def start(self, host: str = "127.0.0.1", port: int = DEFAULT_XDS_PORT) -> None:
        # Our own socket, so that port 0 works and the bound port is known.
        sock = socket.create_server((host, port), reuse_port=False)
        self._port = sock.getsockname()[1]
        if self._ssl is not None:
            self._ssl.set_alpn_protocols(["h2"])
        else:
            log.warning("xds: serving PLAINTEXT on %s:%d (debugging only)", host, self._port)
        await self._grpc.start(sock=sock, ssl=self._ssl)
        log.info("xds: delta ADS on %s:%d, types %s", host, self._port, self._store.type_urls)

    async def close(self) -> None:
        self._grpc.close()
        await self._grpc.wait_closed()

    async def __aenter__(self) -> XdsServer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def serve_stream(self, stream: AdsStream) -> None:
        client = _ClientStream(stream, self._store, self._max_response_bytes)
        self._clients.add(client)
        unsubscribe = self._store.subscribe(client.on_change)
        tasks = {asyncio.create_task(client.receive()), asyncio.create_task(client.send())}
        try:
            # The reader ends the stream (client done, or a bad request); the writer only
            # ends by failing (the connection is gone).
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        except asyncio.CancelledError:
            # The server is closing (grpclib cancels every handler): end the stream with
            # UNAVAILABLE, or the client would wait on it until the process exits.
            with contextlib.suppress(Exception):
                await stream.send_trailing_metadata(
                    status=Status.UNAVAILABLE, status_message="control plane shutting down"
                )
            raise
        finally:
            unsubscribe()
            self._clients.discard(client)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            log.info("xds: stream closed peer=%s node=%s", client.peer, client.delta.node_id or "-")

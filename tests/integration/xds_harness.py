"""A real delta-ADS gRPC client (grpclib over a loopback socket) for the xDS server suite."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from grpclib.client import Channel, StreamStreamMethod
from grpclib.exceptions import GRPCError, StreamTerminatedError
from waits import DEADLINE

from ambient_fast.xds.proto.core_pb2 import Node
from ambient_fast.xds.proto.discovery_grpc import AggregatedDiscoveryServiceStub
from ambient_fast.xds.proto.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    Status,
)
from ambient_fast.xds.resources import ADDRESS_TYPE_URL

if TYPE_CHECKING:
    from grpclib.client import Stream

DELTA_ADS_PATH = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
# ztunnel's node id shape (reference 02).
NODE_ID = "ztunnel~10.0.0.1~ztunnel-abc.istio-system~istio-system.svc.cluster.local"


class AdsClient:
    """One DeltaAggregatedResources stream, driven step by step by a test."""

    def __init__(self, stream: Stream[DeltaDiscoveryRequest, DeltaDiscoveryResponse]) -> None:
        self._stream = stream
        self._node_sent = False

    async def request(
        self,
        type_url: str = ADDRESS_TYPE_URL,
        *,
        subscribe: tuple[str, ...] = (),
        unsubscribe: tuple[str, ...] = (),
        initial: dict[str, str] | None = None,
        nonce: str = "",
        error: str | None = None,
    ) -> None:
        request = DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=subscribe,
            resource_names_unsubscribe=unsubscribe,
            initial_resource_versions=initial or {},
            response_nonce=nonce,
        )
        if not self._node_sent:
            # Like Envoy and ztunnel: the node goes with the first request only.
            request.node.CopyFrom(Node(id=NODE_ID))
            self._node_sent = True
        if error is not None:
            request.error_detail.CopyFrom(Status(code=3, message=error))
        await self._stream.send_message(request)

    async def recv(self) -> DeltaDiscoveryResponse:
        response = await asyncio.wait_for(self._stream.recv_message(), DEADLINE)
        assert response is not None, "the server ended the stream"
        return response

    async def ack(self, response: DeltaDiscoveryResponse) -> None:
        await self.request(response.type_url, nonce=response.nonce)

    async def nack(self, response: DeltaDiscoveryResponse, why: str) -> None:
        await self.request(response.type_url, nonce=response.nonce, error=why)


@asynccontextmanager
async def ads_client(
    port: int, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[AdsClient]:
    channel = Channel("127.0.0.1", port, ssl=ssl_context)
    finished = False
    try:
        stub = AggregatedDiscoveryServiceStub(channel)
        async with stub.DeltaAggregatedResources.open() as stream:
            yield AdsClient(stream)
            finished = True
            # Tests leave streams open on purpose (never-ACKing clients): reset, don't wait.
            await stream.cancel()
    except (GRPCError, StreamTerminatedError):
        # Once the test's steps are done the stream may have ended with the status it checked.
        if not finished:
            raise
    finally:
        channel.close()


class RawBytes:
    """A 'message' that serializes to whatever bytes a test wants on the wire."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        return self.data

    @classmethod
    def FromString(cls, data: bytes) -> RawBytes:
        return cls(data)


@asynccontextmanager
async def raw_ads_stream(
    port: int,
) -> AsyncIterator[Stream[RawBytes, DeltaDiscoveryResponse]]:
    """A DeltaAggregatedResources stream that sends raw bytes (for malformed requests)."""
    channel = Channel("127.0.0.1", port)
    try:
        method = StreamStreamMethod(channel, DELTA_ADS_PATH, RawBytes, DeltaDiscoveryResponse)
        async with method.open() as stream:
            yield stream
    finally:
        channel.close()

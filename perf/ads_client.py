"""A node proxy's side of delta ADS for the benchmarks: a real grpclib client on loopback.

It subscribes (wildcard) to the given types like ztunnel, ACKs every response, and can wait
until it holds every resource the server has.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from grpclib.client import Channel
from grpclib.exceptions import GRPCError, StreamTerminatedError

from ambient_fast.xds.proto.core_pb2 import Node
from ambient_fast.xds.proto.discovery_grpc import AggregatedDiscoveryServiceStub
from ambient_fast.xds.proto.discovery_pb2 import DeltaDiscoveryRequest, DeltaDiscoveryResponse
from ambient_fast.xds.resources import ISTIO_TYPE_URLS
from perf.tools import PerfError

if TYPE_CHECKING:
    from grpclib.client import Stream

# ztunnel's node id shape (reference 02).
NODE_ID = "ztunnel~10.244.0.1~ztunnel-perf.istio-system~istio-system.svc.cluster.local"
DEFAULT_RECEIVE_DEADLINE_S = 30.0


class AdsClient:
    """One DeltaAggregatedResources stream; `held` is what the client has, by type."""

    def __init__(self, stream: Stream[DeltaDiscoveryRequest, DeltaDiscoveryResponse]) -> None:
        self._stream = stream
        self._node_sent = False
        self.held: dict[str, set[str]] = {}

    async def subscribe(self, type_urls: Iterable[str] = ISTIO_TYPE_URLS) -> None:
        """A wildcard subscription per type (an empty first request means wildcard)."""
        for type_url in type_urls:
            request = DeltaDiscoveryRequest(type_url=type_url)
            if not self._node_sent:
                request.node.CopyFrom(Node(id=NODE_ID))
                self._node_sent = True
            self.held.setdefault(type_url, set())
            await self._stream.send_message(request)

    async def recv(self, deadline_s: float = DEFAULT_RECEIVE_DEADLINE_S) -> DeltaDiscoveryResponse:
        try:
            response = await asyncio.wait_for(self._stream.recv_message(), deadline_s)
        except TimeoutError:
            raise PerfError(f"xds client: no response within {deadline_s:.0f} s") from None
        if response is None:
            raise PerfError("xds client: the server ended the stream")
        held = self.held.setdefault(response.type_url, set())
        held.update(resource.name for resource in response.resources)
        held.difference_update(response.removed_resources)
        return response

    async def ack(self, response: DeltaDiscoveryResponse) -> None:
        await self._stream.send_message(
            DeltaDiscoveryRequest(type_url=response.type_url, response_nonce=response.nonce)
        )

    async def sync(self, expected: Mapping[str, int]) -> int:
        """Receives and ACKs until every type answered and the client holds `expected`
        resources per type; returns the count of responses (the server cuts large pushes
        into ~1 MiB responses)."""
        answered: set[str] = set()
        responses = 0
        while answered != expected.keys() or any(
            len(self.held.get(t, ())) < n for t, n in expected.items()
        ):
            response = await self.recv()
            await self.ack(response)
            answered.add(response.type_url)
            responses += 1
        return responses


@asynccontextmanager
async def ads_client(port: int) -> AsyncIterator[AdsClient]:
    """A plaintext stream to 127.0.0.1:`port`, reset (not awaited) when the block ends."""
    channel = Channel("127.0.0.1", port)
    try:
        stub = AggregatedDiscoveryServiceStub(channel)
        async with stub.DeltaAggregatedResources.open() as stream:
            yield AdsClient(stream)
            await stream.cancel()
    except (GRPCError, StreamTerminatedError) as exc:
        raise PerfError(f"xds client: stream failed: {exc}") from exc
    finally:
        channel.close()

"""The node proxy's delta ADS client: `DeltaSubscription` (sans-IO) over a grpclib stream.

One stream at a time to the control plane (istiod or ours) on 15012, TLS trusting the mesh root
and checking the name the proxy dials (istiod's DNS name), with `authorization: Bearer <token>`
and `clusterid` headers as ztunnel sends them. Every response is applied to the sink and
(N)ACKed. When the stream fails the sink keeps what it has (the proxy goes on serving its last
known state) and the client reconnects after a backoff of 10 ms doubling to 15 s, resuming with
`initial_resource_versions` so the control plane sends only the difference.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from google.protobuf.message import Message
from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.exceptions import GRPCError

from ambient_fast.xds.proto.discovery_grpc import AggregatedDiscoveryServiceStub
from ambient_fast.xds.subscription import (
    INITIAL_BACKOFF,
    MAX_BACKOFF,
    ZTUNNEL_TYPES,
    Backoff,
    DeltaSubscription,
    NodeIdentity,
    Received,
    ResourceSink,
)

if TYPE_CHECKING:
    from grpclib.client import Stream

    from ambient_fast.xds.proto.discovery_pb2 import DeltaDiscoveryRequest, DeltaDiscoveryResponse

    AdsStream = Stream[DeltaDiscoveryRequest, DeltaDiscoveryResponse]

log = logging.getLogger(__name__)

# istiod's xDS port (reference 02) and the name node proxies dial it by.
DEFAULT_XDS_PORT = 15012
DEFAULT_XDS_HOST = "istiod.istio-system.svc"
# Time to open TCP + TLS + the HTTP/2 stream before the attempt counts as failed.
DEFAULT_CONNECT_TIMEOUT = 10.0
# HTTP/2 PING after this long without reads, connection dropped if unanswered: a control plane
# that vanished without closing is noticed. istiod refuses pings more often than every 15 s.
KEEPALIVE_INTERVAL = 30.0
KEEPALIVE_TIMEOUT = 10.0

TokenSource = Callable[[], str]
Sleep = Callable[[float], Awaitable[object]]


def token_file(path: str | Path) -> TokenSource:
    """Reads the token at each connection attempt: projected tokens are rotated in place."""
    token_path = Path(path)

    def read() -> str:
        token = token_path.read_text().strip()
        if not token:
            raise ValueError(f"token file {token_path} is empty")
        return token

    return read


def control_plane_tls(roots_pem: bytes | str) -> ssl.SSLContext:
    """TLS for the control-plane connection: trust only the mesh root, check the host name."""
    context = ssl.create_default_context(
        cadata=roots_pem.decode() if isinstance(roots_pem, bytes) else roots_pem
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])  # gRPC
    return context


def server_name_for(host: str, override: str | None) -> str:
    """The name the control plane's certificate must carry: the override (ztunnel's
    ALT_XDS_HOSTNAME / ALT_CA_HOSTNAME), else the host dialled, else for an IP address
    istiod's service name (istiod's certificate has no IP SANs)."""
    if override:
        return override
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return DEFAULT_XDS_HOST


def parse_address(address: str) -> tuple[str, int]:
    """XDS_ADDRESS as ztunnel takes it ("https://istiod.istio-system.svc:15012") or host:port."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    if not parts.hostname:
        raise ValueError(f"xds address {address!r}: no host")
    try:
        port = parts.port or DEFAULT_XDS_PORT
    except ValueError:
        raise ValueError(f"xds address {address!r}: bad port") from None
    return parts.hostname, port


@dataclass(frozen=True, slots=True)
class XdsClientConfig:
    """How to reach the control plane and who to say we are."""

    address: str  # "https://host:port" or "host:port" (port defaults to 15012)
    node: NodeIdentity
    # None: plaintext (debugging only, as the control plane's --plaintext).
    tls: ssl.SSLContext | None
    # The name the server certificate must carry; default: `server_name_for` the host.
    server_name: str | None = None
    token: TokenSource | None = None
    types: Mapping[str, type[Message]] = field(default_factory=lambda: dict(ZTUNNEL_TYPES))
    initial_backoff: float = INITIAL_BACKOFF
    max_backoff: float = MAX_BACKOFF
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT


@dataclass(slots=True)
class ClientStats:
    """Counters for the admin page and tests."""

    attempts: int = 0  # connection attempts
    streams: int = 0  # attempts that opened the stream
    responses: int = 0
    nacks: int = 0
    last_error: str = ""


def _describe(error: BaseException) -> str:
    if isinstance(error, GRPCError):
        return f"gRPC {error.status.name}: {error.message or '-'}"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class XdsClient:
    """Keeps one delta ADS stream to the control plane, applying what it sends to `sink`.

    `ready` is set once every subscribed type has answered (ztunnel's readiness) and stays set
    across reconnects. Use as `async with XdsClient(...) as client:` or `start()` / `close()`.
    """

    def __init__(
        self, config: XdsClientConfig, sink: ResourceSink, *, sleep: Sleep = asyncio.sleep
    ) -> None:
        self._config = config
        self._host, self._port = parse_address(config.address)
        self._subscription = DeltaSubscription(sink, config.node.node(), config.types)
        self._backoff = Backoff(config.initial_backoff, config.max_backoff)
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self._responses_on_stream = 0
        self.ready = asyncio.Event()
        self.connected = False
        self.stats = ClientStats()

    @property
    def subscription(self) -> DeltaSubscription:
        return self._subscription

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="xds-client")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def __aenter__(self) -> XdsClient:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def run(self) -> None:
        """Connect, stream, and reconnect with backoff, until cancelled."""
        while True:
            self._responses_on_stream = 0
            try:
                await self._stream_once()
                reason = "the control plane ended the stream"
            except asyncio.CancelledError:
                raise
            except Exception as e:  # any failure of one attempt: log, back off, retry
                reason = _describe(e)
            finally:
                self.connected = False
            self.stats.last_error = reason
            if self._responses_on_stream:
                self._backoff.reset()  # the stream worked: the next failure starts over
            delay = self._backoff.next()
            held = sum(len(self._subscription.held(t)) for t in self._subscription.type_urls)
            log.warning(
                "xds: %s:%d: %s; serving the last known state (%d resources), retrying in %.3fs",
                self._host,
                self._port,
                reason,
                held,
                delay,
            )
            await self._sleep(delay)

    def _metadata(self) -> list[tuple[str, str]]:
        metadata = [("clusterid", self._config.node.cluster_id)]
        if self._config.token is not None:
            metadata.append(("authorization", f"Bearer {self._config.token()}"))
        return metadata

    def _channel(self) -> Channel:
        config = Configuration(
            _keepalive_time=KEEPALIVE_INTERVAL,
            _keepalive_timeout=KEEPALIVE_TIMEOUT,
            _http2_max_pings_without_data=0,
            _http2_min_sent_ping_interval_without_data=KEEPALIVE_INTERVAL,
            ssl_target_name_override=server_name_for(self._host, self._config.server_name),
        )
        return Channel(self._host, self._port, ssl=self._config.tls, config=config)

    async def _stream_once(self) -> None:
        self.stats.attempts += 1
        metadata = self._metadata()  # before connecting: a missing token fails the attempt
        channel = self._channel()
        try:
            stub = AggregatedDiscoveryServiceStub(channel)
            async with stub.DeltaAggregatedResources.open(metadata=metadata) as stream:
                async with asyncio.timeout(self._config.connect_timeout):
                    await stream.send_request()  # TCP, TLS, HTTP/2, headers
                self.stats.streams += 1
                for request in self._subscription.start():
                    await stream.send_message(request)
                self.connected = True
                log.info(
                    "xds: connected to %s:%d as %s, resuming with %s",
                    self._host,
                    self._port,
                    self._config.node.node_id,
                    ", ".join(
                        f"{len(self._subscription.held(t))} {t.rpartition('.')[2]}"
                        for t in self._subscription.type_urls
                    ),
                )
                await self._receive(stream)
        finally:
            channel.close()

    async def _receive(self, stream: AdsStream) -> None:
        while (response := await stream.recv_message()) is not None:
            self._responses_on_stream += 1
            self.stats.responses += 1
            received = self._subscription.receive(response)
            self._log(received)
            await stream.send_message(received.reply)
            if received.became_ready:
                log.info("xds: every subscribed type received: ready")
                self.ready.set()

    def _log(self, received: Received) -> None:
        if received.nack:
            self.stats.nacks += 1
            log.warning(
                "xds: NACK type=%s nonce=%s applied=%d removed=%d rejected=%d: %s",
                received.type_url,
                received.reply.response_nonce,
                len(received.applied),
                len(received.removed),
                len(received.rejected),
                received.reply.error_detail.message,
            )
        else:
            log.debug(
                "xds: ACK type=%s nonce=%s applied=%d removed=%d",
                received.type_url,
                received.reply.response_nonce,
                len(received.applied),
                len(received.removed),
            )

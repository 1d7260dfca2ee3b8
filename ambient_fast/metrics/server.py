"""The stats endpoint on :15020: `/metrics` and `/stats/prometheus`, as ztunnel's
src/metrics/server.rs (any other path: 404 with an empty body).

`StatsEndpoint` is sans-IO (a parsed request in, a `Response` out); `MetricsServer` is a small
asyncio HTTP/1.1 server around it with keep-alive, as Prometheus reuses its scrape connections.
Like ztunnel (tower-http CompressionLayer) it gzips the body when the scraper accepts gzip.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
from dataclasses import dataclass, field

from ambient_fast.metrics.registry import Metrics

log = logging.getLogger(__name__)

# ztunnel's stats port (Istio's STATS_PORT); the config's `stats_port` overrides it.
DEFAULT_STATS_PORT = 15020
STATS_PATHS = frozenset({"/metrics", "/stats/prometheus"})
# Largest request head we read; a scrape request is a few hundred bytes.
MAX_HEAD_BYTES = 16 * 1024
# A kept-alive connection with no new request for this long is closed (Prometheus scrapes every
# 15 s by default and reconnects freely).
IDLE_TIMEOUT = 120.0
# A client that stalls in the middle of its request head.
HEAD_TIMEOUT = 10.0

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 431: "Request Header Fields Too Large"}


class BadRequest(ValueError):
    """A request head we cannot parse; the message names what is wrong."""


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    version: str  # "HTTP/1.1"
    headers: tuple[tuple[str, str], ...]  # names lower-cased, in order

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str:
        """All values of `name`, comma-joined ("" when absent), as HTTP allows."""
        return ", ".join(v for k, v in self.headers if k == name)

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.header("connection").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    @property
    def has_body(self) -> bool:
        length = self.header("content-length").strip()
        return bool(self.header("transfer-encoding")) or (length not in ("", "0"))


def parse_request_head(head: bytes) -> Request:
    """Parses the request line and headers (everything before the blank line)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as e:  # pragma: no cover - latin-1 decodes every byte
        raise BadRequest(str(e)) from e
    lines = text.rstrip("\r\n").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"request line {lines[0][:80]!r}: expected METHOD TARGET HTTP/1.x")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"header line {line[:80]!r}: expected Name: value")
        headers.append((name.lower(), value.strip()))
    return Request(parts[0], parts[1], parts[2], tuple(headers))


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    keep_alive: bool = True

    def encode(self) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {_REASONS.get(self.status, '')}"]
        lines.extend(f"{name}: {value}" for name, value in self.headers)
        lines.append(f"content-length: {len(self.body)}")
        if not self.keep_alive:
            lines.append("connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


def _accepts_gzip(accept_encoding: str) -> bool:
    """Whether Accept-Encoding allows gzip (by name or `*`) with a non-zero q."""
    for entry in accept_encoding.split(","):
        coding, *params = (p.strip() for p in entry.split(";"))
        if coding.lower() not in ("gzip", "*"):
            continue
        q = next((p[2:] for p in params if p.lower().startswith("q=")), "1")
        try:
            return float(q) > 0
        except ValueError:
            return False
    return False


@dataclass(slots=True)
class StatsEndpoint:
    """Answers one request from the metrics registry (sans-IO)."""

    metrics: Metrics
    gzip_level: int = 6
    scrapes: int = field(default=0, init=False)

    def respond(self, request: Request) -> Response:
        keep_alive = request.keep_alive and not request.has_body
        if request.path not in STATS_PATHS:
            return Response(404, keep_alive=keep_alive)
        self.scrapes += 1
        body, content_type = self.metrics.exposition(request.header("accept"))
        headers = [("content-type", content_type)]
        if _accepts_gzip(request.header("accept-encoding")):
            body = gzip.compress(body, self.gzip_level)
            headers.append(("content-encoding", "gzip"))
        return Response(200, tuple(headers), b"" if request.method == "HEAD" else body, keep_alive)


class ConnectionServer:
    """An asyncio TCP listener that tracks its connections; subclasses answer one connection
    in `_serve`. `start()` binds (port 0 picks a free port); `close()` stops listening and
    cancels open connections (not the one calling it: a handler may close its own server)."""

    def __init__(self, host: str | None, port: int, name: str) -> None:
        self._host = host  # None: every interface
        self._port = port
        self._name = name
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self._host, self._port, limit=MAX_HEAD_BYTES
        )

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError(f"{self._name} server is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        current = asyncio.current_task()
        others = [t for t in self._connections if t is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (
            ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError
        ) as e:  # fmt: skip
            log.debug("%s: connection dropped: %r", self._name, e)  # went away or stalled
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class MetricsServer(ConnectionServer):
    """Serves a `StatsEndpoint` with keep-alive."""

    def __init__(
        self, metrics: Metrics, host: str | None = None, port: int = DEFAULT_STATS_PORT
    ) -> None:
        super().__init__(host, port, "metrics")  # None: every interface, as ztunnel's [::]:15020
        self.endpoint = StatsEndpoint(metrics)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                # Wait for the first byte of the next request (idle), then for the whole head.
                first = await asyncio.wait_for(reader.read(1), IDLE_TIMEOUT)
                if not first:
                    return
                head = first + await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            except asyncio.LimitOverrunError:
                writer.write(Response(431, keep_alive=False).encode())
                await writer.drain()
                return
            try:
                request = parse_request_head(head)
            except BadRequest as e:
                log.debug("metrics: bad request from %s: %s", writer.get_extra_info("peername"), e)
                writer.write(Response(400, keep_alive=False).encode())
                await writer.drain()
                return
            response = self.endpoint.respond(request)
            writer.write(response.encode())
            await writer.drain()
            if not response.keep_alive:
                return

"""The node proxy's admin (localhost:15000) and readiness (:15021) endpoints.

`AdminEndpoint` answers `/config_dump` (`config_dump.config_dump`: ztunnel's JSON, which
`istioctl ztunnel-config ... -f dump.json` reads), `/logging` (GET shows levels, POST
`?level=debug` or `?level=scope:debug,...` changes them) and `/quitquitquit` (POST: drain and
exit). `readiness` answers `/healthz/ready`. `HttpServer` is a one-request-per-connection
asyncio HTTP/1.1 server around such a handler (no keep-alive: these are debugging endpoints).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from ambient_fast.identity.manager import CertificateManager
from ambient_fast.metrics.server import (
    HEAD_TIMEOUT,
    BadRequest,
    ConnectionServer,
    Request,
    parse_request_head,
)
from ambient_fast.state import StateStore
from ambient_fast.ztunnel.config import ZtunnelConfig
from ambient_fast.ztunnel.config_dump import config_dump

log = logging.getLogger(__name__)

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}
_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "off": logging.CRITICAL + 10,
}
_SCOPE_PREFIX = "ambient_fast."


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"

    def encode(self) -> bytes:
        head = (
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, '')}\r\n"
            f"content-type: {self.content_type}\r\ncontent-length: {len(self.body)}\r\n"
            "connection: close\r\n\r\n"
        )
        return head.encode("latin-1") + self.body


Handler = Callable[[Request], Reply]


class HttpServer(ConnectionServer):
    """Serves `handler` on host:port (port 0 picks one); one request per connection."""

    def __init__(self, handler: Handler, host: str | None, port: int, name: str) -> None:
        super().__init__(host, port, name)
        self._handler = handler

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            reply = self._handler(parse_request_head(head))
        except BadRequest as e:
            reply = Reply(400, f"{e}\n".encode())
        writer.write(reply.encode())
        await writer.drain()


def readiness(is_ready: Callable[[], bool]) -> Handler:
    """`/healthz/ready`: 200 when `is_ready()`, else 503 (Istio's readiness probe path)."""

    def handle(request: Request) -> Reply:
        if request.path != "/healthz/ready":
            return Reply(404)
        return Reply(200, b"ready\n") if is_ready() else Reply(503, b"not ready\n")

    return handle


# -- /logging --------------------------------------------------------------------------------


def _level_name(level: int) -> str:
    return logging.getLevelName(level).lower()


def logging_levels() -> str:
    """`current log level is info` plus each scope with its own level."""
    root = logging.getLogger()
    lines = [f"current log level is {_level_name(root.level)}"]
    for name in sorted(logging.root.manager.loggerDict):
        logger = logging.root.manager.loggerDict[name]
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            lines.append(f"{name.removeprefix(_SCOPE_PREFIX)}: {_level_name(logger.level)}")
    return "\n".join(lines) + "\n"


def set_logging_levels(spec: str) -> None:
    """`debug` (everything) or `scope:level,...` (scope: a logger under ambient_fast, or a full
    logger name). Raises ValueError naming the bad item."""
    changes: list[tuple[logging.Logger, int]] = []
    for item in (i.strip() for i in spec.split(",")):
        scope, _, level = item.rpartition(":")
        if level.lower() not in _LEVELS:
            raise ValueError(f"level {item!r}: expected one of {', '.join(_LEVELS)}")
        name = (
            "" if not scope else scope if scope.startswith(_SCOPE_PREFIX) else _SCOPE_PREFIX + scope
        )
        changes.append((logging.getLogger(name or None), _LEVELS[level.lower()]))
    for logger, value in changes:
        logger.setLevel(value)


class AdminEndpoint:
    """The admin paths over the store, the certificates, the settings, a `quit` callback and, in
    in-pod mode, the pods' state (sans-IO)."""

    def __init__(
        self,
        store: StateStore,
        manager: CertificateManager,
        config: ZtunnelConfig,
        quit: Callable[[], None],
        workload_state: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._store = store
        self._manager = manager
        self._config = config
        self._quit = quit
        self._workload_state = workload_state

    def __call__(self, request: Request) -> Reply:
        path = request.path
        if path == "/config_dump":
            pods = self._workload_state() if self._workload_state is not None else None
            dump = config_dump(self._store, self._manager, self._config, pods)
            body = orjson.dumps(dump, option=orjson.OPT_INDENT_2)
            return Reply(200, body, "application/json")
        if path == "/logging":
            if request.method == "POST":
                query = parse_qs(urlsplit(request.target).query)
                spec = query.get("level", [""])[0]
                if spec:
                    try:
                        set_logging_levels(spec)
                    except ValueError as e:
                        return Reply(400, f"{e}\n".encode())
            elif request.method != "GET":
                return Reply(405)
            return Reply(200, logging_levels().encode())
        if path == "/quitquitquit":
            if request.method != "POST":
                return Reply(405, b"use POST\n")
            self._quit()
            return Reply(200, b"draining\n")
        return Reply(404)

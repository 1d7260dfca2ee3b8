"""Access log lines as ztunnel writes them, and the log format of the node proxy.

One line per connection at completion (ztunnel src/proxy/metrics.rs `ConnectionResult::record`):
message `connection complete`, scope `access`, level info (error, with `error=`, on failure),
fields in this order, each left out when unknown:
  src.addr src.workload src.namespace src.identity dst.addr dst.hbone_addr dst.service
  dst.workload dst.namespace dst.identity direction bytes_sent bytes_recv duration [error]

Text (src/telemetry.rs `IstioFormat`), tab-separated head then space-separated key=value:
  2025-01-23T05:07:25.806642Z<TAB>info<TAB>access<TAB>connection complete<TAB>
  src.addr=10.0.0.1:4000 src.workload="a-1" ... bytes_sent=283 bytes_recv=358 duration="2ms"
(one line; wrapped here).
Addresses are written with Display (bare); strings with Rust's Debug (quoted, escaped); byte
counts as numbers. JSON (LOG_FORMAT=json, `IstioJsonFormat`): one object per line, keys level,
time, scope, message, then the same fields; counts are numbers.

The formatting functions are pure (the time comes in as an argument); `IstioFormatter` and
`AccessLog` are the thin layer over `logging`.
"""

from __future__ import annotations

import datetime
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

import orjson

from ambient_fast.metrics.labels import UNKNOWN, ConnectionLabels, Reporter
from ambient_fast.state.model import IpAddress, Workload
from ambient_fast.ztunnel.config import LogFormat

ACCESS_SCOPE = "access"
ACCESS_LOGGER = "ambient_fast.access"
# ztunnel strips its crate name from targets ("ztunnel::proxy" -> "proxy"); we strip ours.
_SCOPE_PREFIX = "ambient_fast."


class Displayed(str):
    """A value ztunnel records with Display (`%addr`): written bare in text, a string in JSON."""

    __slots__ = ()


FieldValue = str | int
Fields = tuple[tuple[str, FieldValue], ...]


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One log line before formatting: a `logging` level, a scope, a message and fields."""

    level: int
    scope: str
    message: str
    fields: Fields = ()


def socket_address(ip: IpAddress | str, port: int) -> str:
    """`ip:port` as Rust's SocketAddr displays it (IPv6 in brackets)."""
    text = str(ip)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def format_duration(seconds: float) -> str:
    """ztunnel's `format!("{}ms", elapsed.as_millis())`: whole milliseconds, rounded down."""
    micros = round(seconds * 1_000_000)
    return f"{max(micros, 0) // 1000}ms"


def _known(value: str) -> str | None:
    return None if value == UNKNOWN else value


@dataclass(frozen=True, slots=True)
class ConnectionLog:
    """What the access log says about one connection, fixed when it opens."""

    labels: ConnectionLabels
    src_addr: str
    dst_addr: str  # the L4 destination (a pod's :15008 for HBONE)
    hbone_addr: str | None  # the CONNECT target, for HBONE
    src_workload: str | None
    dst_workload: str | None

    @classmethod
    def of(
        cls,
        labels: ConnectionLabels,
        *,
        src_addr: str,
        dst_addr: str,
        hbone_addr: str | None = None,
        source: Workload | None = None,
        destination: Workload | None = None,
    ) -> ConnectionLog:
        """src.workload / dst.workload: the pod name, else the canonical service (ztunnel)."""
        src = source.name if source is not None else _known(labels.source_canonical_service)
        dst = (
            destination.name
            if destination is not None
            else _known(labels.destination_canonical_service)
        )
        return cls(labels, src_addr, dst_addr, hbone_addr, src or None, dst or None)

    @property
    def reporter(self) -> Reporter:
        return Reporter(self.labels.reporter)

    def _peers(self) -> list[tuple[str, FieldValue | None]]:
        labels = self.labels
        mtls = labels.mtls
        return [
            ("src.addr", Displayed(self.src_addr)),
            ("src.workload", self.src_workload),
            ("src.namespace", _known(labels.source_workload_namespace)),
            ("src.identity", _known(labels.source_principal) if mtls else None),
            ("dst.addr", Displayed(self.dst_addr)),
            ("dst.hbone_addr", None if self.hbone_addr is None else Displayed(self.hbone_addr)),
            ("dst.service", _known(labels.destination_service)),
            ("dst.workload", self.dst_workload),
            ("dst.namespace", _known(labels.destination_workload_namespace)),
            ("dst.identity", _known(labels.destination_principal) if mtls else None),
            ("direction", self.reporter.direction),
        ]

    def opened(self) -> LogEvent:
        """ztunnel's debug line when a connection opens."""
        return LogEvent(logging.DEBUG, ACCESS_SCOPE, "connection opened", _present(self._peers()))

    def complete(
        self, *, to_upstream: int, to_downstream: int, duration: float, error: str | None = None
    ) -> LogEvent:
        """The line at completion. `to_upstream`/`to_downstream` as for the metrics; the log
        reports them from the local workload's side: outbound, bytes_sent is what the client
        sent (to_upstream); inbound, what the server sent (to_downstream)."""
        outbound = self.reporter is Reporter.SOURCE
        fields = self._peers()
        fields += [
            ("bytes_sent", to_upstream if outbound else to_downstream),
            ("bytes_recv", to_downstream if outbound else to_upstream),
            ("duration", format_duration(duration)),
            ("error", error),
        ]
        level = logging.INFO if error is None else logging.ERROR
        return LogEvent(level, ACCESS_SCOPE, "connection complete", _present(fields))


def connection_failed(src_addr: str, dst_addr: str, reporter: Reporter, error: str) -> LogEvent:
    """ztunnel's `log_early_deny`: refused before enough is known for a full line."""
    fields: Fields = (
        ("src.addr", Displayed(src_addr)),
        ("dst.addr", Displayed(dst_addr)),
        ("direction", reporter.direction),
        ("error", error),
    )
    return LogEvent(logging.WARNING, ACCESS_SCOPE, "connection failed", fields)


def _present(fields: list[tuple[str, FieldValue | None]]) -> Fields:
    return tuple((k, v) for k, v in fields if v is not None)


# --- formatting (pure) ---------------------------------------------------------------------


def level_name(level: int) -> str:
    """tracing's level names, lower-cased as Istio prints them."""
    if level >= logging.ERROR:
        return "error"
    if level >= logging.WARNING:
        return "warn"
    if level >= logging.INFO:
        return "info"
    if level >= logging.DEBUG:
        return "debug"
    return "trace"


def istio_timestamp(at: float) -> str:
    """tracing-subscriber's SystemTime: RFC 3339, UTC, microseconds, `Z`."""
    moment = datetime.datetime.fromtimestamp(at, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}


def rust_debug(text: str) -> str:
    """A string as Rust's `{:?}` writes it: quoted, with quotes, backslashes and control
    characters escaped (other unprintable characters as \\u{hex})."""
    out = ['"']
    for ch in text:
        escaped = _ESCAPES.get(ch)
        if escaped is not None:
            out.append(escaped)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\u{{{ord(ch):x}}}")
    out.append('"')
    return "".join(out)


def _text_value(value: FieldValue) -> str:
    if isinstance(value, int | Displayed):
        return str(value)
    return rust_debug(value)


def format_text(event: LogEvent, at: float) -> str:
    """One line (no newline) in ztunnel's text format."""
    head = f"{istio_timestamp(at)}\t{level_name(event.level)}\t{event.scope}\t{event.message}\t"
    return head + " ".join(f"{key}={_text_value(value)}" for key, value in event.fields)


def format_json(event: LogEvent, at: float) -> str:
    """One line (no newline) in ztunnel's JSON format."""
    document: dict[str, object] = {
        "level": level_name(event.level),
        "time": istio_timestamp(at),
        "scope": event.scope,
        "message": event.message,
    }
    for key, value in event.fields:
        document[key] = value if isinstance(value, int) else str(value)
    return orjson.dumps(document).decode()


# --- the logging layer ------------------------------------------------------------------------


class IstioFormatter(logging.Formatter):
    """Formats every record in Istio's text or JSON form. Records from `AccessLog` carry their
    `LogEvent`; others become one (scope = logger name without `ambient_fast.`). `clock`
    replaces the record's creation time (tests)."""

    def __init__(self, log_format: LogFormat, clock: Callable[[], float] | None = None) -> None:
        super().__init__()
        self._format = format_json if log_format is LogFormat.JSON else format_text
        self._json = log_format is LogFormat.JSON
        self._clock = clock

    def format(self, record: logging.LogRecord) -> str:
        event = event_of(record)
        if event is None:
            scope = record.name.removeprefix(_SCOPE_PREFIX)
            fields: Fields = ()
            if record.exc_info and self._json:
                fields = (("exception", self.formatException(record.exc_info)),)
            event = LogEvent(record.levelno, scope, record.getMessage(), fields)
        at = self._clock() if self._clock is not None else record.created
        line = self._format(event, at)
        if record.exc_info and not self._json:
            line += "\n" + self.formatException(record.exc_info)
        return line


# The LogRecord attribute an access-log line carries its LogEvent in.
_EVENT_ATTRIBUTE = "istio_event"


def event_of(record: logging.LogRecord) -> LogEvent | None:
    """The access-log event a record carries (None: an ordinary log line)."""
    event = getattr(record, _EVENT_ATTRIBUTE, None)
    return event if isinstance(event, LogEvent) else None


def istio_handler(log_format: LogFormat, stream: IO[str] | None = None) -> logging.Handler:
    """A stream handler (stdout by default, as ztunnel) writing Istio-formatted lines."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(IstioFormatter(log_format))
    return handler


class AccessLog:
    """Sends access-log events through `logging` (logger `ambient_fast.access`)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger if logger is not None else logging.getLogger(ACCESS_LOGGER)

    def emit(self, event: LogEvent) -> None:
        if self._logger.isEnabledFor(event.level):
            self._logger.log(event.level, event.message, extra={_EVENT_ATTRIBUTE: event})

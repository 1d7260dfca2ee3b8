"""istio_tcp_* counters, fed by the proxy at connection open and close.

Bytes are counted at close. ztunnel adds to istio_tcp_sent/received_bytes_total on every copy
(src/copy.rs), so a scrape sees a long connection's bytes as they flow. Our data path is native:
it pumps until both directions end and reports two totals, with no Python per chunk. So a
connection's bytes appear in one step when it closes: sums over time agree with ztunnel, but a
rate() over a window shorter than a connection sees a burst at its end instead of a slope.
`progress` takes running totals for the day the pump reports them periodically; `close` then adds
only what was not reported yet.

Direction (ztunnel copy.rs + metrics.rs): `to_upstream` is downstream -> upstream, the request
direction (ztunnel's `recv`), counted in istio_tcp_received_bytes_total; `to_downstream` is the
response direction (ztunnel's `sent`), counted in istio_tcp_sent_bytes_total. The same for both
reporters. Outbound, downstream is the local client; inbound, it is the HBONE peer.
"""

from __future__ import annotations

from ambient_fast.metrics.families import Cell, Family, Kind
from ambient_fast.metrics.labels import LABEL_NAMES, ConnectionLabels, ResponseFlag


class OpenConnection:
    """One open connection's place in the counters; kept by the proxy until `close`."""

    __slots__ = ("_received", "_reported_down", "_reported_up", "_sent", "closed", "labels")

    def __init__(self, labels: ConnectionLabels, received: Cell, sent: Cell) -> None:
        self.labels = labels
        self._received = received
        self._sent = sent
        self._reported_up = 0
        self._reported_down = 0
        self.closed = False

    def _report(self, to_upstream: int, to_downstream: int) -> None:
        if to_upstream < self._reported_up or to_downstream < self._reported_down:
            raise ValueError(
                f"byte totals went back: {to_upstream}/{to_downstream} after "
                f"{self._reported_up}/{self._reported_down} (to upstream/to downstream)"
            )
        self._received.value += to_upstream - self._reported_up
        self._sent.value += to_downstream - self._reported_down
        self._reported_up = to_upstream
        self._reported_down = to_downstream


class ConnectionMetrics:
    """The four istio_tcp_* families (names and help texts from ztunnel src/proxy/metrics.rs)."""

    def __init__(self) -> None:
        self.opened = Family(
            "istio_tcp_connections_opened",
            "The total number of TCP connections opened",
            Kind.COUNTER,
            LABEL_NAMES,
        )
        self.closed = Family(
            "istio_tcp_connections_closed",
            "The total number of TCP connections closed",
            Kind.COUNTER,
            LABEL_NAMES,
        )
        self.received_bytes = Family(
            "istio_tcp_received_bytes",
            "The size of total bytes received during request in case of a TCP connection",
            Kind.COUNTER,
            LABEL_NAMES,
        )
        self.sent_bytes = Family(
            "istio_tcp_sent_bytes",
            "The size of total bytes sent during response in case of a TCP connection",
            Kind.COUNTER,
            LABEL_NAMES,
        )

    @property
    def families(self) -> tuple[Family, ...]:
        return (self.opened, self.closed, self.received_bytes, self.sent_bytes)

    def open(self, labels: ConnectionLabels) -> OpenConnection:
        """Counts an opened connection. Its byte series exist from now on (at 0), as ztunnel
        creates them when the connection opens."""
        self.opened.inc(labels)
        return OpenConnection(
            labels, self.received_bytes.series(labels), self.sent_bytes.series(labels)
        )

    def progress(self, conn: OpenConnection, *, to_upstream: int, to_downstream: int) -> None:
        """Running byte totals of a connection still open (both only grow)."""
        if not conn.closed:
            conn._report(to_upstream, to_downstream)

    def close(
        self,
        conn: OpenConnection,
        *,
        to_upstream: int,
        to_downstream: int,
        flag: ResponseFlag = ResponseFlag.NONE,
    ) -> bool:
        """Counts the close and the final byte totals; False (and nothing counted) when the
        connection was already closed. `flag` labels only the close, as in ztunnel: opened and
        byte series keep response_flags="-"."""
        if conn.closed:
            return False
        conn._report(to_upstream, to_downstream)
        conn.closed = True
        labels = conn.labels if flag is ResponseFlag.NONE else conn.labels.with_flag(flag)
        self.closed.inc(labels)
        return True

"""Metric families as ztunnel's Rust prometheus-client exports them, served by prometheus-client.

Why not prometheus_client's own Counter and Gauge: they add a `_created` series per label set
(ztunnel has none), cost a keyword-argument lookup per `labels()` call, and fix one label set per
family at import time. Here a family is a dict from label values to a `Cell`; the proxy keeps the
cells it needs for a connection, so counting is an integer addition.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector


class Kind(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"


class Cell:
    """One series' value."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class Family:
    """One metric name with its series. Counters are named without `_total` (it is added on
    exposition), as in prometheus-client; `unit` is appended to the name (OpenMetrics UNIT)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        kind: Kind,
        labelnames: Sequence[str] = (),
        unit: str = "",
    ) -> None:
        self.name = name
        # Rust prometheus-client's Descriptor appends "." to every help text.
        self.documentation = documentation + "."
        self.kind = kind
        self.labelnames = tuple(labelnames)
        self.unit = unit
        self._series: dict[tuple[str, ...], Cell] = {}
        if not self.labelnames:
            # A metric without labels is registered bare in ztunnel: it is exported from the
            # start, at 0. A labelled family shows only the label sets used so far.
            self._series[()] = Cell()

    def series(self, labelvalues: tuple[str, ...] = ()) -> Cell:
        """The cell for one label set, created at 0 the first time."""
        cell = self._series.get(labelvalues)
        if cell is None:
            if len(labelvalues) != len(self.labelnames):
                raise ValueError(
                    f"{self.name}: {len(labelvalues)} label values for labels {self.labelnames}"
                )
            cell = self._series[labelvalues] = Cell()
        return cell

    def inc(self, labelvalues: tuple[str, ...] = (), amount: int = 1) -> None:
        self.series(labelvalues).value += amount

    def set(self, value: int, labelvalues: tuple[str, ...] = ()) -> None:
        if self.kind is not Kind.GAUGE:
            raise TypeError(f"{self.name} is a {self.kind.value}, not a gauge")
        self.series(labelvalues).value = value

    def value(self, labelvalues: tuple[str, ...] = ()) -> int:
        """The current value of one label set (0 when never used)."""
        cell = self._series.get(labelvalues)
        return 0 if cell is None else cell.value

    def to_metric(self) -> Metric:
        metric: CounterMetricFamily | GaugeMetricFamily
        if self.kind is Kind.COUNTER:
            metric = CounterMetricFamily(
                self.name, self.documentation, labels=self.labelnames, unit=self.unit
            )
        else:
            metric = GaugeMetricFamily(
                self.name, self.documentation, labels=self.labelnames, unit=self.unit
            )
        # A snapshot: the loop may add series while a scrape is being encoded.
        for labelvalues, cell in list(self._series.items()):
            metric.add_metric(labelvalues, cell.value)
        return metric


class HistogramSeries:
    """One histogram series: a count per bucket (not cumulative), the sum and the count."""

    __slots__ = ("counts", "sum")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)  # the last one is +Inf's own
        self.sum = 0.0


class HistogramFamily:
    """A histogram per label set, with fixed upper bounds (`le`); `unit` as in `Family`."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        unit: str = "",
    ) -> None:
        self.name = name
        self.documentation = documentation + "."
        self.labelnames = tuple(labelnames)
        self.buckets = tuple(sorted(buckets))
        self.unit = unit
        self._series: dict[tuple[str, ...], HistogramSeries] = {}

    def observe(self, labelvalues: tuple[str, ...], value: float) -> None:
        series = self._series.get(labelvalues)
        if series is None:
            if len(labelvalues) != len(self.labelnames):
                raise ValueError(
                    f"{self.name}: {len(labelvalues)} label values for labels {self.labelnames}"
                )
            series = self._series[labelvalues] = HistogramSeries(len(self.buckets))
        series.counts[bisect.bisect_left(self.buckets, value)] += 1
        series.sum += value

    def count(self, labelvalues: tuple[str, ...]) -> int:
        series = self._series.get(labelvalues)
        return 0 if series is None else sum(series.counts)

    def to_metric(self) -> Metric:
        metric = HistogramMetricFamily(
            self.name, self.documentation, labels=self.labelnames, unit=self.unit
        )
        bounds = [*(_bound(b) for b in self.buckets), "+Inf"]
        for labelvalues, series in list(self._series.items()):
            cumulative, total = [], 0
            for bound, count in zip(bounds, list(series.counts), strict=True):
                total += count
                cumulative.append((bound, float(total)))
            metric.add_metric(labelvalues, cumulative, series.sum)
        return metric


def _bound(value: float) -> str:
    return repr(float(value))


class Exported(Protocol):
    def to_metric(self) -> Metric: ...


class FamilyCollector(Collector):
    """Exposes a fixed list of families through a prometheus_client CollectorRegistry."""

    def __init__(self, families: Iterable[Exported]) -> None:
        self._families = tuple(families)

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.to_metric()

"""Prometheus metrics, one registry per server (tests run many in one process).

Labelled by transport (or op kind), never by flow, user or client: label
values stay few, and metrics leak nothing about who talks to whom.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from rt.service.loop_stalls import STALL_BUCKETS, TallyHistogram
from rt.transports import ALL_TRANSPORTS  # noqa: E402

# `*_created` samples double the output and say nothing an operator needs.
disable_created_metrics()


class _Tally:
    """One label's count: a plain integer, for counters bumped on every delivery."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class TallyCounter(Collector):
    """A counter by one label, as cheap to bump as an integer addition.

    `prometheus_client.Counter.inc` takes a lock and checks its arguments
    (about a microsecond); this one is bumped once per event per connection
    in the fan-out's inner loop. Only for counts made in the Trio thread
    (no lock). Same use as a Counter: `labels(value).inc(n)`; rendered as
    `<name>_total` with the label.
    """

    def __init__(
        self, name: str, documentation: str, label: str, registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self._tallies: dict[str, _Tally] = {}
        registry.register(self)

    def labels(self, value: str) -> _Tally:
        tally = self._tallies.get(value)
        if tally is None:
            tally = self._tallies[value] = _Tally()
        return tally

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, tally in sorted(self._tallies.items()):
            family.add_metric([value], tally.value)
        yield family

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, labels=[self.label])


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.streams_open = Gauge("rt_streams_open", "Streams open now", ["transport"], registry=r)
        self.streams_opened = Counter(
            "rt_streams_opened", "Streams opened", ["transport"], registry=r
        )
        self.events_stored = Counter("rt_events_stored", "Stored events committed", registry=r)
        self.events_delivered = TallyCounter(
            "rt_events_delivered",
            "Events (stored and ephemeral) written to streams",
            "transport",
            registry=r,
        )
        self.resumes = Counter(
            "rt_resumes", "Streams opened with a valid cursor", ["transport"], registry=r
        )
        self.resets = Counter(
            "rt_resets",
            "Streams whose cursor or epoch was invalid (reset)",
            ["transport"],
            registry=r,
        )
        self.takeovers = Counter(
            "rt_takeovers",
            "Streams superseded by a newer one with the same client id",
            ["transport"],
            registry=r,
        )
        self.lagging = Counter(
            "rt_lagging",
            "Streams ended because the client could not keep up",
            ["transport"],
            registry=r,
        )
        self.write_timeouts = Counter(
            "rt_write_timeouts",
            "Streams dropped because a write was blocked for write-timeout",
            ["transport"],
            registry=r,
        )
        self.op_latency = Histogram(
            "rt_op_latency_seconds",
            "Time from receiving an op to its answer",
            ["op"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.writer_batch = TallyHistogram(
            "rt_writer_batch_ops",
            "Ops the writer applied in one batch (one commit)",
            [1 << k for k in range(10)],
            registry=r,
        )
        self.store_hold = TallyHistogram(
            "rt_store_hold_seconds",
            "How long one batch applied on the event loop's thread held it (the store's part "
            "of the loop stalls)",
            STALL_BUCKETS,
            registry=r,
            max_name="rt_store_hold_max_seconds",
        )
        self.loop_stalls = TallyHistogram(
            "rt_loop_stall_seconds",
            "How long the event loop ran between two looks at the network",
            STALL_BUCKETS,
            registry=r,
            max_name="rt_loop_stall_max_seconds",
        )
        for transport in ALL_TRANSPORTS:
            self.streams_open.labels(transport)
            self.events_delivered.labels(transport)

    def render(self) -> bytes:
        return generate_latest(self.registry)

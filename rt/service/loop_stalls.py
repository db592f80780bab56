"""How long the event loop runs between two looks at the network: its stalls.

Trio's run loop alternates between waiting for I/O and running every task
that is ready. `LoopStalls` is a Trio instrument that times the second half:
from `after_io_wait` to the next `before_io_wait`. That is the longest a
byte that has just arrived waits before the loop even sees it, whatever
kept the loop busy (a long task step, a synchronous store call, a burst of
ready tasks). It is what the speed benches report as the longest loop stall
(docs/decisions.md, Speed round two), and `/metrics` exposes it as
`rt_loop_stall_seconds` with `rt_loop_stall_max_seconds`.

Two hook calls per loop turn, not per task step: under load one turn runs
many steps, so this stays on in production.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence

import trio
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

#: Bucket upper bounds, in seconds: fine around the 2 ms that matters (issue 14).
STALL_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)


class TallyHistogram(Collector):
    """A histogram without labels, as cheap to observe as a bisect and an addition.

    Only for observations made in the Trio thread (no lock). Rendered as a
    Prometheus histogram `<name>` and, when `max_name` is given, a gauge of
    the largest value observed since the server started.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry,
        max_name: str | None = None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(float(b) for b in buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0
        self.max = 0.0
        self.max_name = max_name
        registry.register(self)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        if value > self.max:
            self.max = value

    def collect(self) -> Iterator[HistogramMetricFamily | GaugeMetricFamily]:
        cumulative, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            cumulative.append((_bound(bound), running))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], cumulative, self.total)
        yield family
        if self.max_name:
            yield GaugeMetricFamily(
                self.max_name, f"The largest {self.name} observed", value=self.max
            )

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation)


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class LoopStalls(trio.abc.Instrument):
    """Observes, into `histogram`, every run of the loop between two I/O waits."""

    def __init__(self, histogram: TallyHistogram) -> None:
        self.histogram = histogram
        self._since: float | None = None

    def after_io_wait(self, timeout: float) -> None:
        self._since = time.perf_counter()

    def before_io_wait(self, timeout: float) -> None:
        if self._since is not None:
            self.histogram.observe(time.perf_counter() - self._since)

"""What a worker counts as it runs, in plain ints: the figures :mod:`.metrics` exports.

Counting must cost nothing a benchmark can see, so nothing here is touched per item. The worker
adds a batch's length where it already holds the batch (an input's read, a stateful step's
batch, a part sent to another worker) and an epoch's figures once per epoch; the per-step
counts of the stateless steps are kept by the generated loops themselves (see :mod:`.chain`),
and only when metrics are on. Every counter has one writer, the worker's thread; a scrape
reads them from another thread, which under the GIL sees each int whole.

>>> stats = WorkerStats(inputs=1, steps=1, workers=2, now=100.0)
>>> stats.read[0] += 3
>>> stats.epoch_completed(at=102.5)
>>> stats.seconds_since_epoch(now=104.0)
1.5
>>> stats.snapshots.observe(0.02)
>>> stats.snapshots.cumulative()[:3]
[(0.005, 0), (0.01, 0), (0.025, 1)]
"""

from __future__ import annotations

#: Upper bounds of the snapshot duration histogram, in seconds: a snapshot of a small state
#: takes milliseconds, one of millions of keys to a broker tens of seconds.
SNAPSHOT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    """Observations counted per bucket (:data:`SNAPSHOT_BUCKETS` by default), as Prometheus
    histograms are; one writer."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = SNAPSHOT_BUCKETS) -> None:
        self.bounds = bounds
        # One count per bound, and a last one for what exceeds them all (+Inf).
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        index = 0
        for bound in self.bounds:
            if value <= bound:
                break
            index += 1
        self.counts[index] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations at or below it)`` per bucket, the last one ``inf``; the
        last count is the number of observations."""
        total = 0
        out = []
        for bound, count in zip((*self.bounds, float("inf")), list(self.counts), strict=True):
            total += count
            out.append((bound, total))
        return out


class WorkerStats:
    """One worker's counters: items read per input (``inputs`` of them), items into and out of
    each stateful step outside the generated loops (``steps``), items sent to each worker of
    the cluster (``workers``), time spent held back by full queues, and its epochs and
    snapshots. ``now``: the (monotonic) time the worker started."""

    __slots__ = (
        "read",
        "keyed_in",
        "keyed_out",
        "sent",
        "backpressure_seconds",
        "epochs_completed",
        "completed_at",
        "started_at",
        "snapshots",
        "snapshot_bytes",
    )

    def __init__(self, inputs: int, steps: int, workers: int, now: float) -> None:
        self.read = [0] * inputs
        self.keyed_in = [0] * steps
        self.keyed_out = [0] * steps
        #: Items sent to each worker (itself never: what stays on a worker is not exchanged).
        self.sent = [0] * workers
        self.backpressure_seconds = 0.0
        self.epochs_completed = 0
        self.completed_at: float | None = None
        self.started_at = now
        self.snapshots = Histogram()
        #: The size of the last snapshot's state, in bytes (``None``: none written yet).
        self.snapshot_bytes: int | None = None

    def epoch_completed(self, at: float) -> None:
        self.completed_at = at
        self.epochs_completed += 1

    def seconds_since_epoch(self, now: float) -> float:
        """Since the last epoch completed, or since the worker started if none has."""
        since = self.completed_at if self.completed_at is not None else self.started_at
        return max(0.0, now - since)

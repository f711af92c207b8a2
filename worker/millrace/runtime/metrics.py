"""A process's metrics in Prometheus' terms, read from the engine's own counters at scrape time.

The workers count in plain ints (:mod:`.stats`, the counted loops of :mod:`.chain`, the
exchange's and the link's counters); :class:`ProcessMetrics` is a Prometheus collector that
turns what they hold now into metric families when ``/metrics`` is scraped
(:mod:`.metrics_server` serves it). Nothing is done per item for Prometheus, and nothing at
all while nobody scrapes.

The families, each with its help text (the README's "Metrics" lists them): :data:`FAMILIES`.
Worker and step figures carry the labels ``step_id`` and ``worker`` (the worker's index), the
exchange's ``peer`` (the other process's id; items a worker hands to another worker of its own
process count under its own process's id). A stateless step, which has no id, is named by its
kind and position in the flow: ``map#1``, ``capture#3``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .. import plan
from ..common.clock import SYSTEM_CLOCK
from .system_windows import SystemClockWindowLogic
from .windowing import WindowLogic

if TYPE_CHECKING:
    from ..transport.counters import LinkCounters
    from .exchange import Exchange
    from .worker import Worker

__all__ = ["FAMILIES", "ProcessMetrics"]

#: Every family a process exports (besides the standard ``process_`` and ``python_`` ones):
#: name (counters without their ``_total``), type, labels, help.
FAMILIES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "millrace_step_items_in": ("counter", ("step_id", "worker"), "Items that went into a step on a worker."),
    "millrace_step_items_out": ("counter", ("step_id", "worker"), "Items that came out of a step on a worker."),
    "millrace_step_keys_held": ("gauge", ("step_id", "worker"), "Keys a stateful step holds state for on a worker."),
    "millrace_window_late_items_dropped": (
        "counter",
        ("step_id", "worker"),
        "Items a window step dropped because their window had closed.",
    ),
    "millrace_worker_epoch": ("gauge", ("worker",), "The epoch a worker is in."),
    "millrace_worker_epochs_completed": ("counter", ("worker",), "Epochs a worker has completed."),
    "millrace_worker_seconds_since_epoch_completed": (
        "gauge",
        ("worker",),
        "Seconds since a worker last completed an epoch (since it started, before the first).",
    ),
    "millrace_snapshot_duration_seconds": ("histogram", ("worker",), "How long a worker's snapshots took."),
    "millrace_snapshot_size_bytes": ("gauge", ("worker",), "The size of the state a worker's last snapshot wrote."),
    "millrace_exchange_items_sent": ("counter", ("worker", "peer"), "Items a worker sent to workers of a process."),
    "millrace_exchange_items_received": (
        "counter",
        ("worker", "peer"),
        "Items a worker received from workers of a process.",
    ),
    "millrace_exchange_bytes_sent": ("counter", ("peer",), "Bytes of frames this process sent to a process."),
    "millrace_exchange_bytes_received": ("counter", ("peer",), "Bytes of frames this process took from a process."),
    "millrace_exchange_backpressure_seconds": (
        "counter",
        ("worker",),
        "Seconds a worker read no input because a queue it feeds was full.",
    ),
    "millrace_exchange_send_blocked_seconds": (
        "counter",
        ("peer",),
        "Seconds this process's sender waited for a process to take its frames.",
    ),
    "millrace_transport_frames_refused": (
        "counter",
        ("reason",),
        "Frames this process refused (unauthenticated, replayed, of another run or cluster...), by reason.",
    ),
}


class _Run:
    """One run of the flow in this process: its workers, its exchange and link."""

    def __init__(self, proc_id: int, exchange: Exchange, link: LinkCounters | None) -> None:
        self.proc_id = proc_id
        self.exchange = exchange
        self.link = link
        self.workers: list[Worker] = []


class ProcessMetrics(Collector):
    """The collector of one process: what its current run's workers, exchange and link have
    counted. A pod forms its cluster again after losing a peer: the new run's counters start
    from zero, which Prometheus' ``rate()`` takes as a reset."""

    def __init__(self) -> None:
        self._run: _Run | None = None
        self._lock = threading.Lock()

    def start_run(self, proc_id: int, exchange: Exchange, link: LinkCounters | None = None) -> None:
        """A run of process ``proc_id`` begins; its workers will :meth:`add_worker` themselves."""
        with self._lock:
            self._run = _Run(proc_id, exchange, link)

    def add_worker(self, worker: Worker) -> None:
        with self._lock:
            if self._run is None:
                raise RuntimeError("a worker joined the metrics before its run started")
            self._run.workers.append(worker)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            run = self._run
            workers = sorted(run.workers, key=lambda worker: worker.index) if run is not None else []
        families = {name: _family(name) for name in FAMILIES}
        if run is None:
            yield from families.values()
            return
        now = SYSTEM_CLOCK.monotonic()
        for worker in workers:
            _worker_figures(families, worker, now)
        _exchange_figures(families, run, workers)
        yield from families.values()


def _family(name: str) -> Any:
    kind, labels, text = FAMILIES[name]
    if kind == "counter":
        return CounterMetricFamily(name, text, labels=labels)
    if kind == "gauge":
        return GaugeMetricFamily(name, text, labels=labels)
    return HistogramMetricFamily(name, text, labels=labels)


def _step_items(worker: Worker) -> dict[str, list[int]]:
    """Per step label, ``[in, out]`` on ``worker``, in the flow's order."""
    counts: dict[str, list[int]] = {}

    def add(label: str, taken: int, given: int) -> None:
        figures = counts.setdefault(label, [0, 0])
        figures[0] += taken
        figures[1] += given

    stats = worker.stats
    for position, (step, _) in enumerate(worker.input_steps):
        read = stats.read[position]
        add(step.step_id, read, read)
    pumps = list(worker.pumps)  # filled once the inputs are open
    for position, (_, segment) in enumerate(worker.input_steps):
        pump = pumps[position] if position < len(pumps) else None
        if pump is not None:  # the segment runs as one fused loop, which counts for it
            for item_step, (taken, given) in zip(segment.steps, pump.items(), strict=True):
                add(plan.step_label(item_step), taken, given)
    pumped = {id(segment) for (_, segment), pump in zip(worker.input_steps, pumps, strict=False) if pump is not None}
    for segment in [segment for _, segment in worker.input_steps] + worker.after:
        if id(segment) in pumped:
            continue
        chain = segment.chain
        if chain is None:
            continue
        labels = [plan.step_label(step) for step in segment.steps]
        if segment.fused and segment.target is not None:
            labels.append(worker.logics[segment.target].step_id)
        for label, (taken, given) in zip(labels, chain.items(), strict=False):
            add(label, taken, given)
    for target, logic in enumerate(worker.logics):
        add(logic.step_id, stats.keyed_in[target], stats.keyed_out[target])
    return counts


def _worker_figures(families: dict[str, Any], worker: Worker, now: float) -> None:
    index = str(worker.index)
    stats = worker.stats
    for label, (taken, given) in _step_items(worker).items():
        families["millrace_step_items_in"].add_metric([label, index], taken)
        families["millrace_step_items_out"].add_metric([label, index], given)
    for logic in worker.logics:
        families["millrace_step_keys_held"].add_metric([logic.step_id, index], logic.held_keys())
        if isinstance(logic, WindowLogic):
            families["millrace_window_late_items_dropped"].add_metric([logic.step_id, index], logic.late_dropped)
        elif isinstance(logic, SystemClockWindowLogic):  # on the system clock no item is late
            families["millrace_window_late_items_dropped"].add_metric([logic.step_id, index], 0)
    families["millrace_worker_epoch"].add_metric([index], worker.epoch)
    families["millrace_worker_epochs_completed"].add_metric([index], stats.epochs_completed)
    families["millrace_worker_seconds_since_epoch_completed"].add_metric([index], stats.seconds_since_epoch(now))
    histogram = stats.snapshots
    buckets = histogram.cumulative()
    families["millrace_snapshot_duration_seconds"].add_metric(
        [index], [(_bound(bound), count) for bound, count in buckets], histogram.sum
    )
    if stats.snapshot_bytes is not None:
        families["millrace_snapshot_size_bytes"].add_metric([index], stats.snapshot_bytes)
    families["millrace_exchange_backpressure_seconds"].add_metric([index], stats.backpressure_seconds)


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _exchange_figures(families: dict[str, Any], run: _Run, workers: list[Worker]) -> None:
    exchange = run.exchange
    per_proc = exchange.local_count
    procs = exchange.worker_count // per_proc
    for worker in workers:
        sent = list(worker.stats.sent)
        for peer in range(procs):
            items = sum(sent[peer * per_proc : (peer + 1) * per_proc])
            families["millrace_exchange_items_sent"].add_metric([str(worker.index), str(peer)], items)
    for local in range(per_proc):
        dest = exchange.first + local
        received = list(exchange.received[local])
        for peer in range(procs):
            if peer == run.proc_id:  # handed over by this process's own workers
                items = sum(worker.stats.sent[dest] for worker in workers)
            else:
                items = received[peer]
            families["millrace_exchange_items_received"].add_metric([str(dest), str(peer)], items)
    link = run.link
    if link is None:
        return
    for peer in range(procs):
        if peer == run.proc_id:
            continue
        families["millrace_exchange_bytes_sent"].add_metric([str(peer)], link.bytes_sent[peer])
        families["millrace_exchange_bytes_received"].add_metric([str(peer)], link.bytes_received[peer])
        families["millrace_exchange_send_blocked_seconds"].add_metric([str(peer)], link.send_blocked_seconds[peer])
    for reason, count in dict(link.refused).items():
        families["millrace_transport_frames_refused"].add_metric([reason], count)

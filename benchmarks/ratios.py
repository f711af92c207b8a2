"""Millrace's speed, as ratios measured side by side in one run.

    python benchmarks/ratios.py                 # everything, full size (a few minutes)
    python benchmarks/ratios.py --scale 0.2     # a quick look
    python benchmarks/ratios.py --only stateless wordcount

Every measurement runs in a fresh interpreter, ``--repeat`` times; the table shows medians.
Within one interpreter, the two sides of each ratio (baseline and engine, 1 and 2 processes,
engine and hand-written program) take turns three times, each keeping its best. Each figure
is checked for correctness before it counts. Targets come from the issues:

- stateless: map(x+1) -> filter(even) over 2,000,000 ints, against a plain loop calling the
  same functions: >= 0.60;
- wordcount: reduce over 1,000,000 words of 10,000 keys, against a plain dict count: >= 0.25;
- 2 processes against 1 (steady state, partitioned input): stateless >= 1.6x, wordcount >= 1.3x;
- combine: issue 24's word count, final counts of 2,000,000 words of 10,000 over a system-clock
  window longer than the run, on 2 processes against 1, the reducer's values combined before
  they cross (``reduce_window(..., combine=True)``): >= 1.3x (also shown: the same without
  ``combine``, every value that another process owns crossing on its own; and ``*_cpu_x``,
  words per CPU second of the busiest process, 2 against 1, which the machine's other load
  leaves alone);
- exchange: (str, int) items crossing between two processes: >= 3,000,000 items/s;
- memory: peak RSS of a 5,000,000-item run where a fast input feeds a slow step on the other
  process stays bounded (compared with a 500,000-item run);
- backpressure: a fast keyed step on process 0 (four items out for each in) feeds a slow
  stateful step on process 1; each process's own peak RSS, for 1,600,000 items received and
  for a tenth of that, with the credit window (``MILLRACE_CREDIT_WINDOW``, 64) and with an
  unbounded one (what no flow control gives): the receiver's growth with the window <= 50 MB;
- recovery: wordcount with 1-second epochs and snapshots costs <= 15% against no recovery
  (also shown, without a target: the same over four times the words, several epochs);
- tracing (no target): wordcount with ``setup_tracing`` on, spans made and dropped, against
  off. What tracing costs when it is off shows in the other figures, measured against main;
- encryption (no target, what it costs): the exchange flow (every item crosses) and the
  2-process wordcount with ZeroMQ CURVE on (``MILLRACE_CLUSTER_ENCRYPT=1``) against off;
- metrics: the stateless and wordcount flows with ``metrics_port`` on (``/metrics`` served and
  scraped every second) against off, run in pairs, the median of the pairs' ratios: >= 0.95
  each; also shown, without a target, the 2-process wordcount, whose items cross between
  processes.

Beside the multi-process figures, what this machine gave in the same run: ``machine_x``, two
processes that share nothing against one, and ``by_hand_*``, the same flow's work written by
hand with no engine (see ``exchange_by_hand.py``).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from itertools import repeat
from pathlib import Path
from typing import Any

import by_hand  # hand-written programs doing the multi-process flows' work
from millrace.dataflow import Dataflow
from millrace.execution import PeriodicEpochConfig, run_main, spawn_cluster
from millrace.inputs import ManualInputConfig, TestingBuilderInputConfig, TestingInputConfig
from millrace.outputs import ManualOutputConfig
from millrace.recovery import SqliteRecoveryConfig
from millrace.runtime.credits import WINDOW
from millrace.tracing import TracingConfig, setup_tracing
from millrace.transport.addresses import free_ports
from millrace.window import SystemClockConfig, TumblingWindowConfig
from workloads_data import add, inc, is_even, to_pair  # the user functions vs_bytewax.py calls too

# -- the user functions every variant calls ----------------------------------------------------


def never(acc: int) -> bool:
    return False


def words(n: int, vocabulary: int = 10_000, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    vocab = [f"word{i}" for i in range(vocabulary)]
    return [rng.choice(vocab) for _ in range(n)]


# -- sinks that report from whichever process they run in --------------------------------------


def counting_output(report_dir: str) -> ManualOutputConfig:
    """Counts items per worker; at exit each process writes count and first/last item times."""

    def build(worker_index: int, worker_count: int) -> Callable[[Any], None]:
        # Clock reads are kept off the per-item path: the end time is taken every 4096 items,
        # together with the count it belongs to.
        stats = {"count": 0, "first": 0.0, "last": 0.0, "timed": 0}

        def sink(item: Any) -> None:
            count = stats["count"] = stats["count"] + 1
            if count & 4095 == 1:
                now = time.perf_counter()
                if count == 1:
                    stats["first"] = now
                stats["last"] = now
                stats["timed"] = count

        def report() -> None:
            Path(report_dir, f"worker-{worker_index}.json").write_text(json.dumps(stats))

        atexit.register(report)
        return sink

    return ManualOutputConfig(build)


def read_reports(report_dir: str) -> list[dict[str, float]]:
    return [json.loads(p.read_text()) for p in Path(report_dir).glob("worker-*.json")]


# -- measurements (each runs in its own interpreter) -----------------------------------------


# Within one process, baseline and engine take turns this many times and each keeps its best
# time: this machine's speed drifts by tens of percent from one second to the next, and a slow
# spell then hits both sides instead of deciding the ratio.
ROUNDS = by_hand.ROUNDS


def _best_seconds(*runs: Callable[[], None], rounds: int = ROUNDS) -> list[float]:
    """Best time of each of ``runs``, run in turn ``rounds`` times."""
    best = [float("inf")] * len(runs)
    for _ in range(rounds):
        for index, run in enumerate(runs):
            start = time.perf_counter()
            run()
            best[index] = min(best[index], time.perf_counter() - start)
    return best


def _stateless_flow(n: int, sink: Callable[[int], None]) -> Dataflow:
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(range(n)))
    flow.map(inc)
    flow.filter(is_even)
    flow.capture(ManualOutputConfig(lambda i, c: sink))
    return flow


def m_stateless(scale: float) -> dict[str, float]:
    n = int(2_000_000 * scale)
    count = [0]

    def sink(x: int) -> None:
        count[0] += 1

    def loop() -> None:
        for x in range(n):
            y = inc(x)
            if is_even(y):
                sink(y)

    def engine() -> None:
        run_main(_stateless_flow(n, sink))

    loop_s, engine_s = _best_seconds(loop, engine)
    assert count[0] == 2 * ROUNDS * (n // 2), count
    return {"engine": n / engine_s, "baseline": n / loop_s, "ratio": loop_s / engine_s}


def _wordcount_flow(data: list[str], out: list) -> Dataflow:
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(data))
    flow.map(to_pair)
    flow.reduce("count", add, never)
    flow.capture(ManualOutputConfig(lambda i, c: out.append))
    return flow


def m_wordcount(scale: float) -> dict[str, float]:
    data = words(int(1_000_000 * scale))
    counts: dict[str, int] = {}

    def plain() -> None:
        counts.clear()
        for w in data:
            counts[w] = counts.get(w, 0) + 1

    def same_functions() -> None:
        same: dict[str, int] = {}
        for w in data:
            k, v = to_pair(w)
            acc = add(same[k], v) if k in same else v
            if not never(acc):
                same[k] = acc

    silent: list = []
    plain_s, same_s, engine_s = _best_seconds(plain, same_functions, lambda: run_main(_wordcount_flow(data, silent)))
    # Correctness: reduce with is_complete False emits nothing, and the same keyed pipeline
    # with running counts ends at the plain dict count for every word.
    assert silent == []
    running: dict[str, int] = {}
    stateful = Dataflow()
    stateful.input("inp", TestingInputConfig(data))
    stateful.map(to_pair)
    stateful.stateful_map("count", lambda: 0, lambda s, v: (s + v, s + v))
    stateful.capture(ManualOutputConfig(lambda i, c: lambda kv: running.__setitem__(*kv)))
    run_main(stateful)
    assert running == counts
    n = len(data)
    return {
        "engine": n / engine_s,
        "baseline": n / plain_s,
        "ratio": plain_s / engine_s,
        "vs_same_functions": same_s / engine_s,
    }


def _cluster_rate(flow_for: Callable[[str], Dataflow], procs: int, expected: int, **kwargs: Any) -> float:
    with tempfile.TemporaryDirectory() as report_dir:
        spawn_cluster(flow_for(report_dir), proc_count=procs, **kwargs)
        reports = read_reports(report_dir)
    total = sum(r["count"] for r in reports)
    assert total == expected, (total, expected)
    active = [r for r in reports if r["timed"] > 1]
    # Steady state: processes start a little apart, so the work is set against the longest
    # single worker's span rather than the union of all spans.
    span = max(r["last"] - r["first"] for r in active)
    return sum(r["timed"] - 1 for r in active) / span


def _shared_wordcount(m: int) -> Callable[[str], Dataflow]:
    """A word count over ``m`` words, each worker making its own share, that reports how many
    running counts came out."""

    def word_input(worker_index: int, worker_count: int, resume_state: Any):
        # Each worker makes only its own share: no work is repeated per process.
        return zip(repeat(None), by_hand.word_share(worker_index, worker_count, m))

    def wordcount(report_dir: str) -> Dataflow:
        # Running counts per word come out of a keyed step, so every item is counted.
        flow = Dataflow()
        flow.input("inp", ManualInputConfig(word_input))
        flow.map(to_pair)
        flow.stateful_map("count", by_hand.zero, by_hand.running_total)
        flow.capture(counting_output(report_dir))
        return flow

    return wordcount


def _crossing(n: int) -> Callable[[str], Dataflow]:
    """``n`` items, each keyed to the other process's worker, so every item crosses."""

    def flow_for(report_dir: str) -> Dataflow:
        flow = Dataflow()
        flow.input("inp", TestingBuilderInputConfig(lambda: by_hand.crossing_items(n)))
        flow.stateful_map("seen", by_hand.no_state, by_hand.pass_on)
        flow.capture(counting_output(report_dir))
        return flow

    return flow_for


def m_scaling(scale: float) -> dict[str, float]:
    n = int(4_000_000 * scale)

    def share(worker_index: int, worker_count: int, resume_state: Any):
        # A contiguous slice per worker: round-robin would give one worker all the odd
        # numbers, and filter(even) would leave it nothing to count.
        lo, hi = n * worker_index // worker_count, n * (worker_index + 1) // worker_count
        return zip(range(lo + 1, hi + 1), range(lo, hi), strict=True)

    def stateless(report_dir: str) -> Dataflow:
        flow = Dataflow()
        flow.input("inp", ManualInputConfig(share))
        flow.map(inc)
        flow.filter(is_even)
        flow.capture(counting_output(report_dir))
        return flow

    m = int(2_000_000 * scale)
    wordcount = _shared_wordcount(m)
    one, two = by_hand.best_rates(
        lambda: _cluster_rate(stateless, 1, n // 2), lambda: _cluster_rate(stateless, 2, n // 2)
    )
    wc_one, wc_two = by_hand.best_rates(lambda: _cluster_rate(wordcount, 1, m), lambda: _cluster_rate(wordcount, 2, m))
    # In the same run, what the machine gives: a second process that shares nothing, and the
    # same word count written by hand (see exchange_by_hand.py).
    return {
        "stateless_1p": one,
        "stateless_2p": two,
        "stateless_x": two / one,
        "wordcount_1p": wc_one,
        "wordcount_2p": wc_two,
        "wordcount_x": wc_two / wc_one,
        "machine_x": by_hand.parallel(),
        "by_hand_wordcount_x": by_hand.wordcount_scaling(m)["scaling"],
    }


def _final_counts(m: int, combine: bool) -> Callable[[str], Dataflow]:
    """The issue's word count: ``m`` words of 10,000, each worker making its own share,
    counted by ``reduce_window`` over a system-clock window longer than the run (each word's
    final count comes out at the end of input), its values combined before they cross or not.
    Each worker reports when its input began, when its last count came out, and the counts."""

    def flow_for(report_dir: str) -> Dataflow:
        def word_input(worker_index: int, worker_count: int, resume_state: Any):
            def timed():
                start = {"at": time.perf_counter(), "cpu": time.process_time()}
                Path(report_dir, f"start-{worker_index}.json").write_text(json.dumps(start))
                yield from by_hand.word_share(worker_index, worker_count, m)

            return zip(repeat(None), timed())

        def output(worker_index: int, worker_count: int) -> Callable[[Any], None]:
            counts: list[int] = []

            def report() -> None:
                stats = {
                    "end": time.perf_counter(),
                    "cpu": time.process_time(),
                    "keys": len(counts),
                    "words": sum(counts),
                }
                Path(report_dir, f"worker-{worker_index}.json").write_text(json.dumps(stats))

            atexit.register(report)  # the end of the run: every count is out
            return lambda kv: counts.append(kv[1])

        flow = Dataflow()
        flow.input("inp", ManualInputConfig(word_input))
        flow.map(to_pair)
        day = TumblingWindowConfig(timedelta(days=1))
        flow.reduce_window("count", SystemClockConfig(), day, add, combine=combine)
        flow.capture(ManualOutputConfig(output))
        return flow

    return flow_for


def _final_counts_rate(m: int, procs: int, combine: bool) -> tuple[float, float]:
    """Words/s of :func:`_final_counts`: from the first worker's first word to the last worker's
    last count (perf_counter is the machine's monotonic clock, the same in every process);
    and words per CPU second of the busiest process over the same span (each process's CPU
    time, all its threads), which other load on the machine does not change."""
    with tempfile.TemporaryDirectory() as report_dir:
        spawn_cluster(_final_counts(m, combine)(report_dir), proc_count=procs)
        starts = {p.name: json.loads(p.read_text()) for p in Path(report_dir).glob("start-*.json")}
        reports = {p.name: json.loads(p.read_text()) for p in Path(report_dir).glob("worker-*.json")}
    assert sum(r["words"] for r in reports.values()) == m, reports
    assert sum(r["keys"] for r in reports.values()) == min(m, by_hand.VOCABULARY), reports
    span = max(r["end"] for r in reports.values()) - min(s["at"] for s in starts.values())
    busiest = max(r["cpu"] - starts[name.replace("worker", "start")]["cpu"] for name, r in reports.items())
    return m / span, m / busiest


def m_combine(scale: float) -> dict[str, float]:
    """The word count of issue 24 (final counts over a system-clock window) on 1 and 2
    processes, with ``combine=True`` and without, taking turns."""
    m = int(2_000_000 * scale)
    cpu: dict[tuple[int, bool], float] = {}

    def rate(procs: int, combine: bool) -> Callable[[], float]:
        def measured() -> float:
            words_per_s, words_per_cpu_s = _final_counts_rate(m, procs, combine)
            cpu[procs, combine] = max(cpu.get((procs, combine), 0.0), words_per_cpu_s)
            return words_per_s

        return measured

    one, two, plain_one, plain_two = by_hand.best_rates(rate(1, True), rate(2, True), rate(1, False), rate(2, False))
    return {
        "combined_1p": one,
        "combined_2p": two,
        "combined_x": two / one,
        "uncombined_1p": plain_one,
        "uncombined_2p": plain_two,
        "uncombined_x": plain_two / plain_one,
        # Words per CPU second of the busiest process, 2 processes against 1: what the
        # scaling would be with a free core for each process.
        "combined_cpu_x": cpu[2, True] / cpu[1, True],
        "uncombined_cpu_x": cpu[2, False] / cpu[1, False],
        "machine_x": by_hand.parallel(),
    }


def m_exchange(scale: float) -> dict[str, float]:
    """Every item is keyed to the other process's worker, so every item crosses."""
    n = int(3_000_000 * scale)
    flow_for = _crossing(n)
    rate, hand = by_hand.best_rates(lambda: _cluster_rate(flow_for, 2, n), lambda: by_hand.crossing_rate(n))
    return {"items_per_s": rate, "by_hand_items_per_s": hand}


def _encrypted(rate: Callable[[], float], on: bool) -> Callable[[], float]:
    """``rate`` with encryption on or off: spawn_cluster reads the setting from the environment."""

    def measured() -> float:
        previous = os.environ.get("MILLRACE_CLUSTER_ENCRYPT")
        os.environ["MILLRACE_CLUSTER_ENCRYPT"] = "1" if on else "0"
        try:
            return rate()
        finally:
            if previous is None:
                del os.environ["MILLRACE_CLUSTER_ENCRYPT"]
            else:
                os.environ["MILLRACE_CLUSTER_ENCRYPT"] = previous

    return measured


def m_encryption(scale: float) -> dict[str, float]:
    """Two processes, the traffic encrypted (CURVE) or not, taking turns."""
    n, m = int(3_000_000 * scale), int(2_000_000 * scale)
    crossing, wordcount = _crossing(n), _shared_wordcount(m)
    x_off, x_on, wc_off, wc_on = by_hand.best_rates(
        _encrypted(lambda: _cluster_rate(crossing, 2, n), on=False),
        _encrypted(lambda: _cluster_rate(crossing, 2, n), on=True),
        _encrypted(lambda: _cluster_rate(wordcount, 2, m), on=False),
        _encrypted(lambda: _cluster_rate(wordcount, 2, m), on=True),
    )
    return {
        "exchange_off": x_off,
        "exchange_on": x_on,
        "exchange_cost": 1 - x_on / x_off,
        "wordcount_2p_off": wc_off,
        "wordcount_2p_on": wc_on,
        "wordcount_cost": 1 - wc_on / wc_off,
    }


def _peak_rss_run(n: int) -> float:
    def fast(worker_index: int, worker_count: int, resume_state: Any):
        if worker_index != 0:
            return
        for _ in range(n):
            yield None, (1, "x" * 50)  # key 1 lives on worker 1, the other process

    def slow(state: int, value: str) -> tuple[int, int]:
        for _ in range(3):
            value = value[::-1]
        return state + 1, state + 1

    with tempfile.TemporaryDirectory() as report_dir:
        flow = Dataflow()
        flow.input("inp", ManualInputConfig(fast))
        flow.stateful_map("slow", lambda: 0, slow)
        flow.capture(counting_output(report_dir))
        spawn_cluster(flow, proc_count=2)
        assert sum(r["count"] for r in read_reports(report_dir)) == n
    # RUSAGE_CHILDREN: the largest peak of any waited-for child, in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def m_memory(scale: float) -> dict[str, float]:
    big = int(5_000_000 * scale)
    small = big // 10
    small_rss = float(
        subprocess.run(
            [sys.executable, __file__, "--peak-rss", str(small)], capture_output=True, text=True, check=True
        ).stdout
    )
    big_rss = float(
        subprocess.run(
            [sys.executable, __file__, "--peak-rss", str(big)], capture_output=True, text=True, check=True
        ).stdout
    )
    return {"peak_rss_mb_small": small_rss, "peak_rss_mb_big": big_rss, "growth_mb": big_rss - small_rss}


def _rss_output(report_dir: str) -> ManualOutputConfig:
    """Counts items per worker; at exit each process writes the count and its own peak RSS."""

    def build(worker_index: int, worker_count: int) -> Callable[[Any], None]:
        seen = [0]

        def sink(item: Any) -> None:
            seen[0] += 1

        def report() -> None:
            # RUSAGE_SELF: this process's own peak, in KiB on Linux.
            rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            Path(report_dir, f"worker-{worker_index}.json").write_text(json.dumps({"count": seen[0], "rss_mb": rss_mb}))

        atexit.register(report)
        return sink

    return ManualOutputConfig(build)


def _backpressure_run(n: int, window: int) -> tuple[float, float]:
    """Peak RSS (MB) of the sending and the receiving process when a fast keyed step on
    process 0 feeds a slow stateful step on process 1, with a credit window of ``window``."""

    def fast_input(worker_index: int, worker_count: int, resume_state: Any):
        if worker_index == 0:
            yield from zip(repeat(None), zip(repeat(0), range(n)))  # key 0 lives on worker 0

    def fan(state: None, i: int) -> tuple[None, list[tuple[int, str]]]:
        # A keyed step that emits four items for each it gets, all keyed to worker 1.
        return None, [(1, f"{i:>12}" * 8)] * 4

    def slow(state: int, value: str) -> tuple[int, int]:
        for _ in range(20):
            value = value[::-1]
        return state + 1, state + 1

    flow = Dataflow()
    flow.input("inp", ManualInputConfig(fast_input))
    flow.stateful_map("fast", lambda: None, fan)
    flow.flat_map(lambda kv: kv[1])
    flow.stateful_map("slow", lambda: 0, slow)
    with tempfile.TemporaryDirectory() as report_dir:
        flow.capture(_rss_output(report_dir))
        os.environ["MILLRACE_CREDIT_WINDOW"] = str(window)  # the processes inherit it
        try:
            spawn_cluster(flow, proc_count=2)
        finally:
            del os.environ["MILLRACE_CREDIT_WINDOW"]
        reports = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in Path(report_dir).glob("worker-*.json")}
    assert reports[1]["count"] == 4 * n and reports[0]["count"] == 0, reports
    return reports[0]["rss_mb"], reports[1]["rss_mb"]


# What no flow control would give: a window no sender ever uses up.
UNBOUNDED = 1_000_000_000


def m_backpressure(scale: float) -> dict[str, float]:
    """Both processes' peak RSS with the default window and with an unbounded one, for a run
    and a run ten times as long, taking turns."""
    big = int(400_000 * scale)
    small = big // 10
    figures: dict[str, float] = {}
    for n, size in ((small, "small"), (big, "big")):
        for window, name in ((WINDOW, "window"), (UNBOUNDED, "unbounded")):
            sender, receiver = _backpressure_run(n, window)
            figures[f"send_mb_{name}_{size}"] = sender
            figures[f"recv_mb_{name}_{size}"] = receiver
    figures["growth_mb"] = figures["recv_mb_window_big"] - figures["recv_mb_window_small"]
    figures["growth_mb_unbounded"] = figures["recv_mb_unbounded_big"] - figures["recv_mb_unbounded_small"]
    return figures


def m_recovery(scale: float) -> dict[str, float]:
    data = words(int(1_000_000 * scale))

    def flow(passes: int) -> Dataflow:
        def paced(worker_index: int, worker_count: int, resume_state: Any):
            start = resume_state or 0
            for i in range(start, passes * len(data)):
                yield i + 1, data[i % len(data)]

        f = Dataflow()
        f.input("inp", ManualInputConfig(paced))
        f.map(to_pair)
        f.reduce("count", add, never)
        f.capture(ManualOutputConfig(lambda i, c: print))
        return f

    epochs = PeriodicEpochConfig(timedelta(seconds=1))

    def rates(passes: int) -> tuple[float, float]:
        def with_recovery() -> None:
            with tempfile.TemporaryDirectory() as db_dir:  # a new store each time
                run_main(flow(passes), epoch_config=epochs, recovery_config=SqliteRecoveryConfig(db_dir))

        # Best of several, alternating, like the other figures.
        plain_s, recovering_s = _best_seconds(lambda: run_main(flow(passes), epoch_config=epochs), with_recovery)
        return passes * len(data) / plain_s, passes * len(data) / recovering_s

    plain, recovering = rates(1)
    # That run is shorter than a second: one epoch, which starts without state, so its
    # snapshot is the whole state and no changed keys are recorded. Four times the words
    # run for several epochs, and every epoch after the first records them, as a long run does.
    long_plain, long_recovering = rates(4)
    return {
        "without": plain,
        "with_snapshots": recovering,
        "cost": 1 - recovering / plain,
        "cost_4x_words": 1 - long_recovering / long_plain,
    }


class _DroppedSpans(TracingConfig):
    """Tracing on, spans made and batched as for a receiver, then dropped: what tracing costs
    the flow itself, without a receiver's speed in the figure."""

    service_name = "benchmark"
    sampling_ratio = 1.0

    def span_exporter(self) -> Any:
        from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

        class Drop(SpanExporter):
            def __init__(self) -> None:
                self.spans = 0

            def export(self, spans: Any) -> SpanExportResult:
                self.spans += len(spans)
                return SpanExportResult.SUCCESS

        self.exporter = Drop()
        return self.exporter


def m_tracing(scale: float) -> dict[str, float]:
    """The wordcount flow with tracing on (a span per batch of each step) against off."""
    data = words(int(1_000_000 * scale))
    silent: list = []
    config = _DroppedSpans()

    def traced() -> None:
        tracer = setup_tracing(config)
        run_main(_wordcount_flow(data, silent))
        tracer.shutdown()  # the spans still buffered are exported (dropped) here

    untraced_s, traced_s = _best_seconds(lambda: run_main(_wordcount_flow(data, silent)), traced)
    assert silent == [] and config.exporter.spans > 0
    n = len(data)
    return {"untraced": n / untraced_s, "traced": n / traced_s, "traced_vs_untraced": untraced_s / traced_s}


_METRICS_ROUNDS = 9

# The scraper of m_metrics, in a process of its own as Prometheus is: every second, each port.
_SCRAPER = """
import sys, time, urllib.request
while True:
    time.sleep(1.0)
    for port in sys.argv[1:]:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        except OSError:
            pass  # between two runs nothing serves
"""


@contextmanager
def _scraped(ports: list[int]) -> Iterator[None]:
    """Scrape ``/metrics`` on ``ports`` every second while the block runs, from another process
    as Prometheus would (more often than its usual 15 s), so that what serving a scrape costs
    is in the figure too."""
    scraper = subprocess.Popen([sys.executable, "-c", _SCRAPER, *map(str, ports)])
    try:
        yield
    finally:
        scraper.kill()
        scraper.wait()


def _paired(off: Callable[[], float], on: Callable[[], float], rounds: int) -> tuple[float, float, float]:
    """``off`` and ``on`` (each returns a rate), one right after the other, ``rounds`` times,
    which of the two goes first alternating: the best rate of each, and the median over the
    rounds of on/off within a round. Two runs a second apart share the machine's mood (other
    programs, its clock), which a few percent are measured against; best rates of the two sides
    may come from different minutes."""
    best_off = best_on = 0.0
    ratios = []
    for turn in range(rounds):
        if turn % 2:
            rate_on, rate_off = on(), off()
        else:
            rate_off, rate_on = off(), on()
        best_off, best_on = max(best_off, rate_off), max(best_on, rate_on)
        ratios.append(rate_on / rate_off)
    return best_off, best_on, statistics.median(ratios)


def _rate_of(run: Callable[[], None], items: int) -> Callable[[], float]:
    def rate() -> float:
        start = time.perf_counter()
        run()
        return items / (time.perf_counter() - start)

    return rate


def m_metrics(scale: float) -> dict[str, float]:
    """The stateless and wordcount flows of m_stateless and m_wordcount with metrics on and
    off, in pairs (see :func:`_paired`); and the 2-process wordcount of m_scaling the same way."""
    n = int(2_000_000 * scale)
    count = [0]

    def sink(x: int) -> None:
        count[0] += 1

    def stateless(port: int | None) -> Callable[[], float]:
        return _rate_of(lambda: run_main(_stateless_flow(n, sink), metrics_port=port), n)

    data = words(int(1_000_000 * scale))
    silent: list = []

    def wordcount(port: int | None) -> Callable[[], float]:
        return _rate_of(lambda: run_main(_wordcount_flow(data, silent), metrics_port=port), len(data))

    m = int(2_000_000 * scale)
    shared = _shared_wordcount(m)
    base = free_ports(1)[0]
    ports = [base, base + 1]
    with _scraped(ports):
        # More turns than the other figures: a difference of a few percent is what is measured.
        off, on, ratio = _paired(stateless(None), stateless(base), _METRICS_ROUNDS)
        wc_off, wc_on, wc_ratio = _paired(wordcount(None), wordcount(base), _METRICS_ROUNDS)
        _, _, wc2_ratio = _paired(
            lambda: _cluster_rate(shared, 2, m), lambda: _cluster_rate(shared, 2, m, metrics_port=base), ROUNDS
        )
    assert count[0] == 2 * _METRICS_ROUNDS * (n // 2) and silent == [], count
    return {
        "stateless_off": off,
        "stateless_on": on,
        "stateless_on_vs_off": ratio,
        "wordcount_off": wc_off,
        "wordcount_on": wc_on,
        "wordcount_on_vs_off": wc_ratio,
        "wordcount_2p_on_vs_off": wc2_ratio,
    }


MEASUREMENTS: dict[str, Callable[[float], dict[str, float]]] = {
    "stateless": m_stateless,
    "wordcount": m_wordcount,
    "scaling": m_scaling,
    "combine": m_combine,
    "exchange": m_exchange,
    "memory": m_memory,
    "backpressure": m_backpressure,
    "recovery": m_recovery,
    "tracing": m_tracing,
    "encryption": m_encryption,
    "metrics": m_metrics,
}

# (measurement, figure, comparison, target, and the figure of the same measurement that shows
# what this machine gave in the same run, if there is one).
TARGETS: list[tuple[str, str, str, float, str | None]] = [
    ("stateless", "ratio", ">=", 0.60, None),
    ("wordcount", "ratio", ">=", 0.25, None),
    ("scaling", "stateless_x", ">=", 1.6, "machine_x"),
    ("scaling", "wordcount_x", ">=", 1.3, "by_hand_wordcount_x"),
    ("combine", "combined_x", ">=", 1.3, "machine_x"),
    ("exchange", "items_per_s", ">=", 3_000_000, "by_hand_items_per_s"),
    ("memory", "growth_mb", "<=", 50, None),
    ("backpressure", "growth_mb", "<=", 50, "growth_mb_unbounded"),
    ("recovery", "cost", "<=", 0.15, None),
    ("metrics", "stateless_on_vs_off", ">=", 0.95, None),
    ("metrics", "wordcount_on_vs_off", ">=", 0.95, None),
]


def measure_in_fresh_process(name: str, scale: float) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--measure", name, "--scale", str(scale)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fmt(v: float) -> str:
    return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"


def _spread(runs: list[dict[str, float]], key: str) -> str:
    """The lowest and highest of the runs' figures, when there are several."""
    if len(runs) < 2:
        return ""
    values = [run[key] for run in runs]
    return f" [{_fmt(min(values))}-{_fmt(max(values))}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="workload size factor (default 1)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median shown)")
    parser.add_argument("--only", nargs="*", choices=sorted(MEASUREMENTS), help="run only these")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--peak-rss", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(MEASUREMENTS[args.measure](args.scale)))
        return
    if args.peak_rss:
        print(_peak_rss_run(args.peak_rss))
        return
    names = args.only or list(MEASUREMENTS)
    medians: dict[str, dict[str, float]] = {}
    print(f"millrace benchmarks: scale {args.scale}, median of {args.repeat}, {os.cpu_count()} cores")
    for name in names:
        runs = [measure_in_fresh_process(name, args.scale) for _ in range(args.repeat)]
        medians[name] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        figures = ", ".join(f"{k} {_fmt(v)}{_spread(runs, k)}" for k, v in medians[name].items())
        print(f"  {name:<10} {figures}", flush=True)
        spreads = [
            f"{key} {min(run[key] for run in runs):.3g}–{max(run[key] for run in runs):.3g}"
            for key in runs[0]
            if len(runs) > 1 and ("_vs_" in key or key == "ratio")
        ]
        if spreads:
            print(f"  {'':<10} spread over the runs: {', '.join(spreads)}", flush=True)
    print("targets:")
    for name, key, op, bound, machine in TARGETS:
        if name not in medians:
            continue
        value = medians[name][key]
        ok = value >= bound if op == ">=" else value <= bound
        beside = f"; {machine} {medians[name][machine]:,.3g}" if machine else ""
        print(f"  {'PASS' if ok else 'MISS'}  {name}.{key} = {value:,.3g} (target {op} {bound:,}{beside})")


if __name__ == "__main__":
    main()

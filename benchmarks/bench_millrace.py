"""The millrace side of ``benchmarks/vs_bytewax.py``: one measurement, printed as a JSON line.

    python benchmarks/bench_millrace.py stateless --scale 0.1

Only the flows and how they run are here; data, user functions, timing and checks are in
``workloads_data.py``, shared with ``bench_bytewax.py``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from itertools import count
from pathlib import Path
from typing import Any

import workloads_data as wd
from millrace.dataflow import Dataflow
from millrace.execution import PeriodicEpochConfig, run_main, spawn_cluster
from millrace.inputs import ManualInputConfig
from millrace.outputs import ManualOutputConfig
from millrace.recovery import SqliteRecoveryConfig
from millrace.window import EventClockConfig, SystemClockConfig, TumblingWindowConfig

NAME = "millrace"


def version() -> str:
    """The git commit of the checkout millrace runs from."""
    root = Path(__file__).resolve().parent
    done = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


# -- inputs and outputs ------------------------------------------------------------------------


class _Input:
    """``ManualInputConfig`` builder: a worker's share, with its item count as resume state
    (``batched``: :func:`workloads_data.batches`, lists of 1,000 with the count after each)."""

    def __init__(self, source: wd.Source, batched: bool = False) -> None:
        self.source = source
        self.batched = batched

    def __call__(self, worker_index: int, worker_count: int, resume_state: Any) -> Iterator[Any]:
        done = resume_state or 0
        data = self.source(worker_index, worker_count)
        for _ in range(done):
            next(data)
        if not self.batched:
            return zip(count(done + 1), data)
        return wd.batches(data, done)


def _input(source: wd.Source) -> ManualInputConfig:
    batched = source.variant == "batch"
    return ManualInputConfig(_Input(source, batched), batched=batched)


def _output(sink: wd.Sink, batched: bool = False) -> ManualOutputConfig:
    """Per item; ``batched``: per list (``ManualOutputConfig(batched=True)``), as Bytewax's
    sinks get batches."""

    def build(worker_index: int, worker_count: int) -> Callable[[Any], None]:
        probe = sink(worker_index)
        return probe.batch if batched else probe.one

    return ManualOutputConfig(build, batched=batched)


# -- the flows ---------------------------------------------------------------------------------


def stateless(source: wd.Source, sink: wd.Sink) -> Dataflow:
    flow = Dataflow()
    flow.input("inp", _input(source))
    flow.map(wd.inc)
    flow.filter(wd.is_even)
    flow.capture(_output(sink, batched=source.variant == "batch"))
    return flow


def wordcount(source: wd.Source, sink: wd.Sink) -> Dataflow:
    # Final counts, once per word when the input ends, as Bytewax's reduce_final gives them:
    # in the 0.14 API that is ``reduce_window`` over a window longer than the run (``reduce``
    # emits only when ``is_complete`` says so, never at the end of input). ``add`` is
    # associative, so the counts are combined per word before they cross between processes.
    flow = Dataflow()
    flow.input("inp", _input(source))
    flow.map(wd.to_pair)
    day = TumblingWindowConfig(timedelta(days=1))
    flow.reduce_window("count", SystemClockConfig(), day, wd.add, combine=True)
    flow.capture(_output(sink))
    return flow


def windowed(source: wd.Source, sink: wd.Sink) -> Dataflow:
    flow = Dataflow()
    flow.input("inp", _input(source))
    flow.fold_window(
        "count",
        EventClockConfig(wd.event_time, wait_for_system_duration=wd.WINDOW_WAIT),
        TumblingWindowConfig(wd.WINDOW, start_at=wd.EVENT_START),
        wd.zero,
        wd.count_one,
    )
    flow.capture(_output(sink))
    return flow


FLOWS: dict[str, Callable[[wd.Source, wd.Sink], Dataflow]] = {
    "stateless": stateless,
    "wordcount": wordcount,
    "windowed": windowed,
}


def build(flow: str, source: wd.Source, sink: wd.Sink) -> Dataflow:
    return FLOWS[flow](source, sink)


# -- running -----------------------------------------------------------------------------------


def run(flow: Dataflow, *, epoch_s: float | None, recovery_dir: str | None) -> None:
    run_main(
        flow,
        epoch_config=PeriodicEpochConfig(timedelta(seconds=epoch_s)) if epoch_s else None,
        recovery_config=SqliteRecoveryConfig(recovery_dir) if recovery_dir else None,
    )


def run_cluster(flow: str, source: wd.Source, sink: wd.Sink, procs: int) -> None:
    spawn_cluster(build(flow, source, sink), proc_count=procs, worker_count_per_proc=1)


if __name__ == "__main__":
    wd.bench_main(sys.modules[__name__])  # type: ignore[arg-type]

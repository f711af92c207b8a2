"""The Bytewax 0.21 side of ``benchmarks/vs_bytewax.py``: one measurement, printed as a JSON line.

    .bench/bytewax/bin/python benchmarks/bench_bytewax.py stateless --scale 0.1

Runs under the interpreter of ``.bench/bytewax`` (made by ``benchmarks/setup-bytewax``). Only
the flows and how they run are here; data, user functions, timing and checks are in
``workloads_data.py``, shared with ``bench_millrace.py``.

Choices made for Bytewax, each the one its own docs and connectors make:

- inputs hand out batches of :data:`BATCH` items (the default batch size of Bytewax's file and
  Kafka sources), or one item per ``next_batch`` for the ``item`` variant of a measure (a
  source that yields item by item); sinks get batches and count them with ``len``;
- one-process runs read a ``FixedPartitionedSource`` of one partition (resumable, so the
  recovery run snapshots its input as millrace does); two-process runs read a
  ``DynamicSource``, so that each worker reads its own share;
- word count is ``map(to_pair)`` + ``reduce_final(add)`` (which ``count_final`` also is);
- the window is ``fold_window(..., ordered=False)``: fold in arrival order, as millrace does
  (events arrive in time order anyway);
- recovery: partitions made with ``init_db_dir(db_dir, 1)`` (what ``python -m bytewax.recovery
  DB_DIR 1`` does), then ``RecoveryConfig(db_dir)``; snapshots are taken at each epoch end,
  and the epoch is 1 s (``epoch_interval``, the CLI's ``--snapshot-interval``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import timedelta
from importlib.metadata import version as _dist_version
from itertools import islice
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import (
    DynamicSource,
    FixedPartitionedSource,
    StatefulSourcePartition,
    StatelessSourcePartition,
)
from bytewax.operators.windowing import EventClock, TumblingWindower, fold_window
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import cluster_main, run_main

import workloads_data as wd

NAME = "bytewax"
BATCH = 1_000


def version() -> str:
    return _dist_version("bytewax")


# -- inputs and outputs ------------------------------------------------------------------------


def _next_batch(data: Iterator[Any], size: int = BATCH) -> list[Any]:
    batch = list(islice(data, size))
    if not batch:
        raise StopIteration
    return batch


class _Partition(StatefulSourcePartition[Any, int]):
    """All of the data; its resume state is how many items were handed out."""

    def __init__(self, data: Iterator[Any], done: int, size: int) -> None:
        self._data = data
        self._done = done
        self._size = size

    def next_batch(self) -> list[Any]:
        batch = _next_batch(self._data, self._size)
        self._done += len(batch)
        return batch

    def snapshot(self) -> int:
        return self._done


class _WholeSource(FixedPartitionedSource[Any, int]):
    def __init__(self, source: wd.Source) -> None:
        self._source = source

    def list_parts(self) -> list[str]:
        return ["all"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Partition:
        done = resume_state or 0
        data = self._source(0, 1)
        for _ in range(done):
            next(data)
        return _Partition(data, done, 1 if self._source.variant == "item" else BATCH)


class _SharePartition(StatelessSourcePartition[Any]):
    def __init__(self, data: Iterator[Any]) -> None:
        self._data = data

    def next_batch(self) -> list[Any]:
        return _next_batch(self._data)


class _ShareSource(DynamicSource[Any]):
    """Each worker reads its own share."""

    def __init__(self, source: wd.Source) -> None:
        self._source = source

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SharePartition:
        return _SharePartition(self._source(worker_index, worker_count))


def _input(flow: Dataflow, source: wd.Source) -> op.Stream[Any]:
    src = _ShareSource(source) if source.sharded else _WholeSource(source)
    return op.input("inp", flow, src)


class _SinkPartition(StatelessSinkPartition[Any]):
    def __init__(self, take: Callable[[list[Any]], None]) -> None:
        self._take = take

    def write_batch(self, items: list[Any]) -> None:
        self._take(items)


class _Sink(DynamicSink[Any]):
    def __init__(self, sink: wd.Sink) -> None:
        self._sink = sink

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SinkPartition:
        return _SinkPartition(self._sink(worker_index).batch)


# -- the flows ---------------------------------------------------------------------------------


def stateless(source: wd.Source, sink: wd.Sink) -> Dataflow:
    flow = Dataflow("stateless")
    s = _input(flow, source)
    s = op.map("inc", s, wd.inc)
    s = op.filter("even", s, wd.is_even)
    op.output("out", s, _Sink(sink))
    return flow


def wordcount(source: wd.Source, sink: wd.Sink) -> Dataflow:
    flow = Dataflow("wordcount")
    s = _input(flow, source)
    pairs = op.map("pair", s, wd.to_pair)
    counts = op.reduce_final("count", pairs, wd.add)  # type: ignore[arg-type]
    op.output("out", counts, _Sink(sink))
    return flow


def windowed(source: wd.Source, sink: wd.Sink) -> Dataflow:
    # Items are already (key, event time): a keyed stream, as fold_window wants. It emits
    # (key, (window_id, count)); the digest keeps the count.
    flow = Dataflow("windowed")
    s = _input(flow, source)
    counts = fold_window(
        "count",
        s,  # type: ignore[arg-type]
        EventClock(wd.event_time, wait_for_system_duration=wd.WINDOW_WAIT),
        TumblingWindower(length=wd.WINDOW, align_to=wd.EVENT_START),
        wd.zero,
        wd.count_one,
        wd.add,
        ordered=False,
    )
    op.output("out", counts.down, _Sink(sink))
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
    recovery = None
    if recovery_dir is not None:
        init_db_dir(Path(recovery_dir), 1)
        recovery = RecoveryConfig(recovery_dir)
    run_main(
        flow,
        epoch_interval=timedelta(seconds=epoch_s) if epoch_s else None,
        recovery_config=recovery,
    )


def run_cluster(flow: str, source: wd.Source, sink: wd.Sink, procs: int) -> None:
    """Start ``procs`` copies of this script, each running ``cluster_main`` as one process of
    the cluster (what ``python -m bytewax.run -i ID -a ADDRS`` does); wait for all."""
    addresses = [f"127.0.0.1:{port}" for port in wd.free_ports(procs)]
    spec = {"flow": flow, "source": asdict(source), "sink": asdict(sink), "addresses": addresses}
    children = [
        subprocess.Popen([sys.executable, __file__, "--cluster-child", json.dumps(spec), str(i)]) for i in range(procs)
    ]
    # A process that fails leaves its peers waiting for it: stop them too.
    while any(child.poll() is None for child in children):
        if any(child.returncode for child in children):
            for child in children:
                if child.poll() is None:
                    child.kill()
        time.sleep(0.05)
    codes = [child.returncode for child in children]
    if any(codes):
        raise RuntimeError(f"Bytewax cluster processes exited with {codes}")


def _cluster_child(spec_json: str, proc_id: str) -> None:
    spec = json.loads(spec_json)
    flow = build(spec["flow"], wd.Source(**spec["source"]), wd.Sink(**spec["sink"]))
    cluster_main(flow, spec["addresses"], int(proc_id), worker_count_per_proc=1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--cluster-child"]:
        _cluster_child(*sys.argv[2:4])
    else:
        wd.bench_main(sys.modules[__name__])  # type: ignore[arg-type]

"""Flows shared by the cluster tests. Each builder takes the output it captures into, so the
same flow runs under run_main (a list) and across processes (a Manager list or a file)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from millrace.dataflow import Dataflow
from millrace.inputs import ManualInputConfig, TestingInputConfig
from millrace.outputs import OutputConfig
from millrace.window import EventClockConfig, SystemClockConfig, TumblingWindowConfig

T0 = datetime(2024, 1, 1, tzinfo=UTC)
KEYS = ["apple", "banana", "cherry", "date", "elder", 1, 2, 3, 17, -4]


_running_lock = threading.Lock()
_running = [False]


def print_running(item: Any) -> None:
    """An inspect step that prints ``running`` at the first item of its process: a spawned
    cluster's sign that it has formed (workers start only once every process has joined) and
    computes, which tests wait for instead of sleeping. Once per process, under a lock: two
    workers printing at once could interleave their lines. One write of the whole line, not
    ``print``: an unbuffered stdout sends print's text and its newline as two writes, and the
    other process's line can land between them (seen in CI as ``runningrunning``)."""
    if not _running[0]:
        with _running_lock:
            if not _running[0]:
                _running[0] = True
                sys.stdout.write("running\n")
                sys.stdout.flush()


def _refuse_to_load() -> None:
    raise ValueError("unloadable on purpose")


class Unloadable:
    """Pickles fine and fails when unpickled: data a peer cannot decode."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _refuse_to_load, ()


def _load_outside(process_name: str) -> LoadsOutside:
    import multiprocessing

    if multiprocessing.current_process().name == process_name:
        raise ValueError(f"cannot load in {process_name} on purpose")
    return LoadsOutside(process_name)


class LoadsOutside:
    """Unpickles everywhere except in the process named ``process_name``: a flow holding one
    fails to start in that process alone."""

    def __init__(self, process_name: str) -> None:
        self.process_name = process_name

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _load_outside, (self.process_name,)


def keyed_items(n: int = 600) -> list[tuple[Any, int]]:
    return [(KEYS[(i * 7) % len(KEYS)], i % 13) for i in range(n)]


def stateless(out: OutputConfig) -> Dataflow:
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(range(500)))
    flow.map(lambda x: x * 3)
    flow.filter(lambda x: x % 2 == 1)
    flow.flat_map(lambda x: [x, -x])
    flow.inspect(lambda x: None)
    flow.capture(out)
    return flow


def reduce_to_three(out: OutputConfig) -> Dataflow:
    # Completes every third value of a key; the result does not depend on arrival order.
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(keyed_items()))
    flow.map(lambda kv: (kv[0], 1))
    flow.reduce("three", lambda acc, one: acc + one, lambda acc: acc == 3)
    flow.capture(out)
    return flow


def running_count(out: OutputConfig) -> Dataflow:
    # Emits 1, 2, 3, 4 per key and forgets the key at 4: the multiset is order-independent.
    def count(seen: int, _value: Any) -> tuple[int | None, int]:
        seen += 1
        return (None if seen == 4 else seen), seen

    flow = Dataflow()
    flow.input("inp", TestingInputConfig(keyed_items()))
    flow.stateful_map("count", lambda: 0, count)
    flow.capture(out)
    return flow


def two_exchanges(out: OutputConfig) -> Dataflow:
    # Keyed twice on different keys, so items cross workers twice.
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(keyed_items()))
    flow.map(lambda kv: (kv[0], 1))
    flow.reduce("fours", lambda acc, v: acc + v, lambda acc: acc == 4)
    flow.map(lambda kv: (len(str(kv[0])) % 3, 1))
    flow.reduce("buckets", lambda acc, v: acc + v, lambda acc: acc == 2)
    flow.capture(out)
    return flow


def _event(i: int) -> tuple[Any, dict[str, Any]]:
    return KEYS[i % len(KEYS)], {"at": T0 + timedelta(seconds=i * 7 % 300, microseconds=i), "v": i}


def _event_clock() -> EventClockConfig:
    # A long wait: windows close only at end of input, so results are deterministic.
    return EventClockConfig(lambda e: e["at"], wait_for_system_duration=timedelta(days=1))


def windows_reduce(out: OutputConfig) -> Dataflow:
    flow = Dataflow()
    flow.input("inp", TestingInputConfig([_event(i) for i in range(400)]))
    flow.reduce_window(
        "sum",
        _event_clock(),
        TumblingWindowConfig(timedelta(seconds=60), start_at=T0),
        lambda acc, e: {"at": acc["at"], "v": acc["v"] + e["v"]},
    )
    flow.map(lambda kv: (kv[0], kv[1]["v"]))
    flow.capture(out)
    return flow


def windows_fold(out: OutputConfig) -> Dataflow:
    flow = Dataflow()
    flow.input("inp", TestingInputConfig([_event(i) for i in range(400)]))
    flow.fold_window(
        "count",
        _event_clock(),
        TumblingWindowConfig(timedelta(seconds=45), start_at=T0),
        lambda: 0,
        lambda n, _e: n + 1,
    )
    flow.capture(out)
    return flow


def windows_collect(out: OutputConfig) -> Dataflow:
    flow = Dataflow()
    flow.input("inp", TestingInputConfig([_event(i) for i in range(400)]))
    flow.collect_window("collect", _event_clock(), TumblingWindowConfig(timedelta(seconds=100), start_at=T0))
    flow.map(lambda kv: (kv[0], tuple(e["v"] for e in kv[1])))
    flow.capture(out)
    return flow


def windows_system_clock(out: OutputConfig) -> Dataflow:
    # One window far longer than the run: it closes at end of input with every value.
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(keyed_items()))
    flow.reduce_window("total", SystemClockConfig(), TumblingWindowConfig(timedelta(hours=1)), lambda a, b: a + b)
    flow.capture(out)
    return flow


DIFFERENTIAL: dict[str, Callable[[OutputConfig], Dataflow]] = {
    "stateless": stateless,
    "reduce": reduce_to_three,
    "stateful_map": running_count,
    "two_exchanges": two_exchanges,
    "reduce_window": windows_reduce,
    "fold_window": windows_fold,
    "collect_window": windows_collect,
    "system_clock_window": windows_system_clock,
}


def slow_numbers(count: int, delay: float) -> ManualInputConfig:
    """Each worker yields ``count`` keyed numbers, pausing ``delay`` s between them."""

    def build(worker_index: int, worker_count: int, resume_state: Any):
        for i in range(count):
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                yield None
            yield i, (i % 5, worker_index * 1_000_000 + i)

    return ManualInputConfig(build)


def keyed_numbers(count: int, keys: int) -> ManualInputConfig:
    """Each worker reads ``count`` numbers, ``(f"k{i % keys}", worker_index * 1_000_000 + i)``,
    a few at a time (a ``None`` every four items ends a batch), so there are many batches."""

    def build(worker_index: int, worker_count: int, resume_state: Any) -> Any:
        for i in range(count):
            if i % 4 == 0:
                yield None  # nothing more right now: ends the batch
            yield i, (f"k{i % keys}", worker_index * 1_000_000 + i)

    return ManualInputConfig(build)

"""The clock a run reads: the system clock by default, a ManualClock a test installs and
moves by hand, so that epochs and windows are exact and no test waits for them."""

from __future__ import annotations

import multiprocessing
import pickle
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import cloudpickle
import pytest

from millrace.common import clock as clocks
from millrace.common.clock import SYSTEM_CLOCK, ManualClock
from millrace.dataflow import Dataflow
from millrace.execution import PeriodicEpochConfig, run_main, spawn_cluster
from millrace.inputs import ManualInputConfig
from millrace.outputs import TestingEpochOutputConfig, TestingOutputConfig
from millrace.runtime.epochs import PeriodicEpochs
from millrace.testing import doctest_ctx, use_clock
from millrace.window import EventClockConfig, SystemClockConfig, TumblingWindowConfig

T0 = datetime(2024, 3, 1, tzinfo=UTC)
Builder = Callable[[int, int, Any], Iterator[Any]]


def test_a_manual_clock_moves_only_when_advanced():
    clock = ManualClock(T0)
    assert clock.now() == T0 and clock.monotonic() == 0.0
    clock.advance(timedelta(seconds=2))
    clock.advance(0.5)
    assert clock.now() == T0 + timedelta(seconds=2.5) and clock.monotonic() == 2.5
    with pytest.raises(ValueError, match="only moves forward"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="aware UTC"):
        ManualClock(datetime(2024, 1, 1))


def test_clocks_pickle_so_they_can_travel_with_a_flow():
    assert pickle.loads(cloudpickle.dumps(SYSTEM_CLOCK)) is SYSTEM_CLOCK
    clock = ManualClock(T0)
    clock.advance(3)
    copy = pickle.loads(pickle.dumps(clock))
    copy.advance(1)  # its own lock, its own time
    assert (copy.monotonic(), clock.monotonic()) == (4.0, 3.0)


def test_the_system_clock_is_aware_utc_and_the_default():
    assert SYSTEM_CLOCK.now().tzinfo is UTC
    assert clocks.current() is SYSTEM_CLOCK
    clock = ManualClock()
    with use_clock(clock):
        assert clocks.current() is clock
        with use_clock(SYSTEM_CLOCK):
            assert clocks.current() is SYSTEM_CLOCK
        assert clocks.current() is clock
    assert clocks.current() is SYSTEM_CLOCK


def test_a_periodic_epoch_ends_when_its_clock_says():
    clock = ManualClock()
    epochs = PeriodicEpochs(timedelta(seconds=10), clock.monotonic)
    epochs.begin()
    clock.advance(9.999)
    assert not epochs.over()
    clock.advance(0.001)
    assert epochs.over()


def _ticking(clock: ManualClock, items: list[Any], every: timedelta, readers: int = 1 << 30) -> Builder:
    """An input of ``items`` (read by workers below ``readers``), after each of which
    ``every`` passes on ``clock``. The advance after an item runs while the item's batch is
    read, and the ``None`` after it ends that batch, so item i reaches the steps exactly
    ``(i + 1) * every`` after the reading started."""

    def build(worker_index: int, worker_count: int, resume_state: Any) -> Iterator[Any]:
        if worker_index >= readers:
            return
        for i, item in enumerate(items):
            yield i, item
            clock.advance(every)
            yield None

    return build


def test_periodic_epochs_follow_the_installed_clock_exactly():
    clock = ManualClock()
    out: list = []
    flow = Dataflow()
    flow.input("inp", ManualInputConfig(_ticking(clock, list(range(6)), timedelta(seconds=5))))
    flow.capture(TestingEpochOutputConfig(out))
    with use_clock(clock):
        run_main(flow, epoch_config=PeriodicEpochConfig(timedelta(seconds=10)))
    # Ten-second epochs, five seconds between items: two items an epoch, whatever the machine.
    assert out == [(0, 0), (0, 1), (1, 2), (1, 3), (2, 4), (2, 5)]
    assert clock.monotonic() == 30.0


def test_system_clock_windows_close_on_the_installed_clock():
    clock = ManualClock(T0)
    out: list = []
    flow = Dataflow()
    items = [("k", 1), ("k", 2), ("k", 4), ("k", 8), ("j", 16)]
    flow.input("inp", ManualInputConfig(_ticking(clock, items, timedelta(seconds=4))))
    flow.reduce_window("sum", SystemClockConfig(), TumblingWindowConfig(timedelta(seconds=10)), lambda a, b: a + b)
    flow.capture(TestingOutputConfig(out))
    with use_clock(clock):
        run_main(flow)
    # Items at 4, 8 | 12, 16 | 20 s after the flow started (the windows' default start).
    assert out == [("k", 3), ("k", 12), ("j", 16)]


def test_the_event_clocks_watermark_moves_on_with_the_installed_clock():
    """With no wait, the watermark is the latest event time moved on by the system time
    since: the 20 s the manual clock moves between two events take it past the end of
    [0, 10), so the second event, though earlier than that end, is late."""
    clock = ManualClock(T0)
    out: list = []

    def build(worker_index: int, worker_count: int, resume_state: Any) -> Iterator[Any]:
        yield 0, ("k", T0 + timedelta(seconds=1))
        clock.advance(1)  # it arrives at T0 + 1 s, on time
        yield None
        yield 1, ("k", T0 + timedelta(seconds=5))
        clock.advance(20)  # it arrives at T0 + 21 s: the watermark is T0 + 21 s
        yield None

    flow = Dataflow()
    flow.input("inp", ManualInputConfig(build))
    flow.collect_window("c", EventClockConfig(lambda at: at), TumblingWindowConfig(timedelta(seconds=10), start_at=T0))
    flow.capture(TestingOutputConfig(out))
    with use_clock(clock):
        run_main(flow)
    assert out == [("k", [T0 + timedelta(seconds=1)])]


def _cluster_flow(clock: ManualClock, out: Any, readers: int) -> Dataflow:
    flow = Dataflow()
    every = timedelta(seconds=5)
    flow.input("inp", ManualInputConfig(_ticking(clock, list(range(4)), every, readers)))
    flow.capture(TestingEpochOutputConfig(out))
    return flow


def test_a_cluster_of_threads_shares_the_installed_clock():
    """Worker 1, a thread of another "process", reads nothing; its epochs end with worker
    0's because both read the one installed clock that worker 0's input moves."""
    clock = ManualClock()
    out: list = []
    with use_clock(clock):
        spawn_cluster(
            _cluster_flow(clock, out, readers=1),
            proc_count=2,
            mp_ctx=doctest_ctx,
            epoch_config=PeriodicEpochConfig(timedelta(seconds=10)),
        )
    assert sorted(out) == [(0, 0), (0, 1), (1, 2), (1, 3)]
    assert clock.monotonic() == 20.0


def test_spawned_processes_each_run_on_a_copy_of_the_installed_clock():
    """A real process gets the clock in the same pickle as the flow, so the flow's input
    advances the very clock its process's epochs read: epochs as exact as in one thread."""
    clock = ManualClock()
    with multiprocessing.Manager() as manager:
        out = manager.list()
        with use_clock(clock):
            spawn_cluster(
                _cluster_flow(clock, out, readers=2),
                proc_count=2,
                epoch_config=PeriodicEpochConfig(timedelta(seconds=10)),
            )
        got = sorted(out)
    # Each process's input moves its own copy by 5 s an item: two items an epoch on both (on
    # one shared clock, the advances of both inputs would make the epochs shorter).
    assert got == [(0, 0), (0, 0), (0, 1), (0, 1), (1, 2), (1, 2), (1, 3), (1, 3)]
    assert clock.monotonic() == 0.0  # the caller's clock was copied, not moved

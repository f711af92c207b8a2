"""Windows on event time and system time: lateness, closing at end of input, ordering, and
state freed with the last window of a key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from millrace import plan
from millrace.common.clock import ManualClock
from millrace.dataflow import Dataflow
from millrace.execution import run_main
from millrace.inputs import TestingInputConfig
from millrace.outputs import TestingOutputConfig
from millrace.runtime.windowing import WindowLogic
from millrace.window import EventClockConfig, SystemClockConfig, TumblingWindowConfig

T0 = datetime(2024, 3, 1, tzinfo=UTC)
LONG_WAIT = timedelta(days=1)  # the watermark never passes a window: only the end of input closes it


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def clock(wait: timedelta = LONG_WAIT) -> EventClockConfig:
    return EventClockConfig(lambda value: value[0], wait_for_system_duration=wait)


def windows(length: float = 10) -> TumblingWindowConfig:
    return TumblingWindowConfig(timedelta(seconds=length), start_at=T0)


def run(items, add_window) -> list:
    out: list = []
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(items))
    add_window(flow)
    flow.capture(TestingOutputConfig(out))
    run_main(flow)
    return out


def test_reduce_window_per_key_and_window():
    items = [("a", (at(1), 1)), ("b", (at(2), 10)), ("a", (at(12), 100)), ("a", (at(3), 1000))]
    out = run(items, lambda f: f.reduce_window("sum", clock(), windows(), lambda x, y: (x[0], x[1] + y[1])))
    assert sorted((k, v[1]) for k, v in out) == [("a", 100), ("a", 1001), ("b", 10)]


def test_fold_window_starts_each_window_from_the_builder():
    items = [("k", (at(s), s)) for s in (0, 1, 2, 15, 16, 31)]
    out = run(items, lambda f: f.fold_window("n", clock(), windows(), lambda: 0, lambda n, v: n + 1))
    assert out == [("k", 3), ("k", 2), ("k", 1)]


def test_collect_window_orders_by_event_time():
    items = [("k", (at(s), s)) for s in (5, 1, 9, 3, 2)]
    out = run(items, lambda f: f.collect_window("c", clock(), windows()))
    assert out == [("k", [(at(s), s) for s in (1, 2, 3, 5, 9)])]


def test_windows_close_in_window_order_and_at_end_of_input():
    items = [("k", (at(s), s)) for s in (25, 5, 15)]
    out = run(items, lambda f: f.collect_window("c", clock(), windows()))
    assert [[s for _, s in values] for _, values in out] == [[5], [15], [25]]


def test_late_items_are_dropped():
    # No wait: the watermark is the latest event time, so items behind it are late.
    items = [("k", (at(s), s)) for s in (1, 12, 3, 14, 25, 11)]
    out = run(items, lambda f: f.collect_window("c", clock(timedelta(0)), windows()))
    assert [[s for _, s in values] for _, values in out] == [[1], [12, 14], [25]]


def test_the_watermark_waits_for_stragglers():
    items = [("k", (at(s), s)) for s in (1, 12, 3)]
    out = run(items, lambda f: f.collect_window("c", clock(timedelta(seconds=5)), windows()))
    # 12 - 5 = 7 has not passed the end of [0, 10): 3 is on time.
    assert [[s for _, s in values] for _, values in out] == [[1, 3], [12]]


def test_window_boundaries_follow_start_at():
    start = at(3)
    items = [("k", (at(s), s)) for s in (3, 12, 13, 22)]
    out = run(
        items,
        lambda f: f.collect_window("c", clock(), TumblingWindowConfig(timedelta(seconds=10), start_at=start)),
    )
    assert [[s for _, s in values] for _, values in out] == [[3, 12], [13, 22]]


def test_system_clock_groups_items_as_they_come():
    out = run(
        [("a", 1), ("b", 2), ("a", 3)],
        lambda f: f.reduce_window(
            "sum", SystemClockConfig(), TumblingWindowConfig(timedelta(hours=1)), lambda x, y: x + y
        ),
    )
    assert sorted(out) == [("a", 4), ("b", 2)]


def _logic(clock_config, window_config) -> WindowLogic:
    step = plan.CollectWindow(step_id="c", clock=clock_config, window=window_config)
    # The system time that moves watermarks on: stands still at T0 unless a test moves it.
    return WindowLogic(step, flow_start=T0, clock=ManualClock(T0).now)


def test_a_key_without_open_windows_keeps_no_state():
    logic = _logic(clock(timedelta(0)), windows())
    logic.on_batch([("a", (at(1), 1)), ("b", (at(1), 1))])
    assert set(logic.state) == {"a", "b"}
    out = logic.on_batch([("a", (at(11), 2))])  # closes a's [0, 10), opens [10, 20)
    assert out == [("a", [(at(1), 1)])]
    assert set(logic.state) == {"a", "b"}
    assert logic.on_eof() == [("a", [(at(11), 2)]), ("b", [(at(1), 1)])]
    assert logic.state == {}


def test_time_alone_closes_windows():
    logic = _logic(clock(timedelta(0)), windows())
    logic.on_batch([("k", (at(1), 1))])
    deadline = logic.next_deadline()
    assert deadline is not None
    assert logic.on_tick(deadline - timedelta(microseconds=1)) == []
    assert logic.on_tick(deadline + timedelta(seconds=1)) == [("k", [(at(1), 1)])]
    assert logic.state == {} and logic.next_deadline() is None


def test_naive_event_times_are_a_clear_error():
    items = [("k", (datetime(2024, 1, 1), 1))]
    with pytest.raises(ValueError, match=r"collect_window 'c'.*naive datetime.*timezone-aware UTC"):
        run(items, lambda f: f.collect_window("c", clock(), windows()))


def test_non_utc_event_times_are_a_clear_error():
    plus_two = timezone(timedelta(hours=2))
    items = [("k", (datetime(2024, 1, 1, tzinfo=plus_two), 1))]
    with pytest.raises(ValueError, match=r"not UTC.*astimezone"):
        run(items, lambda f: f.collect_window("c", clock(), windows()))


def test_an_event_time_that_is_not_a_datetime_is_a_type_error():
    with pytest.raises(TypeError, match=r"dt_getter must return a datetime, got '2024-01-01'"):
        run([("k", ("2024-01-01", 1))], lambda f: f.collect_window("c", clock(), windows()))


def test_window_configs_check_their_arguments():
    with pytest.raises(ValueError, match="positive"):
        TumblingWindowConfig(timedelta(0))
    with pytest.raises(ValueError, match="timezone-aware"):
        TumblingWindowConfig(timedelta(1), start_at=datetime(2024, 1, 1))
    with pytest.raises(TypeError, match="callable dt_getter"):
        EventClockConfig("at")

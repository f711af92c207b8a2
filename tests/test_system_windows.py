"""Windows on the system clock, driven by a clock the test sets: every key's window closes at
once when time passes its end, items never go back into a closed window, and a key's state
survives a snapshot and a restore in either store format."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from millrace import plan
from millrace.dataflow import Dataflow
from millrace.execution import run_main
from millrace.inputs import TestingInputConfig
from millrace.outputs import TestingOutputConfig
from millrace.runtime.keyed import FORGOTTEN
from millrace.runtime.store import dump_state, load_state
from millrace.runtime.system_windows import SystemClockWindowLogic
from millrace.runtime.windowing import KeyWindows, WindowLogic
from millrace.window import EventClockConfig, SystemClockConfig, TumblingWindowConfig

T0 = datetime(2024, 3, 1, tzinfo=UTC)
TEN_S = TumblingWindowConfig(timedelta(seconds=10), start_at=T0)


class Clock:
    """The time the logic under test reads; starts at ``T0``."""

    def __init__(self) -> None:
        self.now = T0

    def at(self, seconds: float) -> Clock:
        self.now = T0 + timedelta(seconds=seconds)
        return self

    def __call__(self) -> datetime:
        return self.now


def logic(kind: str = "reduce", clock: Clock | None = None) -> tuple[SystemClockWindowLogic, Clock]:
    clock = clock or Clock()
    steps = {
        "reduce": plan.ReduceWindow(step_id="w", clock=SystemClockConfig(), window=TEN_S, reducer=lambda a, b: a + b),
        "fold": plan.FoldWindow(
            step_id="w", clock=SystemClockConfig(), window=TEN_S, builder=list, folder=lambda acc, v: [*acc, v]
        ),
        "collect": plan.CollectWindow(step_id="w", clock=SystemClockConfig(), window=TEN_S),
    }
    return SystemClockWindowLogic(steps[kind], flow_start=T0, clock=clock), clock


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("reduce", [("a", 3), ("b", 10)]),
        ("fold", [("a", [1, 2]), ("b", [10])]),
        ("collect", [("a", [1, 2]), ("b", [10])]),
    ],
)
def test_time_closes_the_window_of_every_key_at_once(kind, expected):
    w, clock = logic(kind)
    clock.at(1)
    assert w.on_batch([("a", 1), ("b", 10)]) == []
    clock.at(2)
    assert w.on_batch([("a", 2)]) == []
    deadline = w.next_deadline()
    assert deadline == T0 + timedelta(seconds=10)
    assert w.on_tick(deadline - timedelta(microseconds=1)) == []
    assert w.on_tick(deadline) == expected  # keys in the order they first came
    assert w.is_empty() and w.next_deadline() is None


def test_an_item_in_a_new_window_closes_the_older_one_for_every_key_first():
    w, clock = logic()
    clock.at(1)
    w.on_batch([("a", 1), ("b", 2)])
    clock.at(12)
    assert w.on_batch([("a", 100)]) == [("a", 1), ("b", 2)]
    assert w.next_deadline() == T0 + timedelta(seconds=20)
    assert w.on_eof() == [("a", 100)]


def test_end_of_input_closes_every_window_oldest_first():
    w, clock = logic("collect")
    w.restore({"k": (0, 0, {3: [(0, "later")], 1: [(0, "early")]})})
    clock.at(35)  # in window 3: window 1 is over
    assert w.on_batch([("k", "now")]) == [("k", ["early"])]
    assert w.on_eof() == [("k", ["later", "now"])]
    assert w.is_empty()


def test_a_clock_that_steps_back_never_reopens_a_closed_window():
    w, clock = logic()
    clock.at(15)
    w.on_batch([("a", 1)])
    assert w.on_tick(clock.at(21)()) == [("a", 1)]
    clock.at(5)  # the system clock stepped back by 16 seconds
    assert w.on_batch([("a", 2)]) == []
    assert w.on_eof() == [("a", 2)]
    assert w.next_deadline() is None


def test_touched_keys_are_those_of_batches_and_of_closed_windows():
    w, clock = logic()
    w.touched = set()
    clock.at(1)
    w.on_batch([("a", 1), ("b", 1)])
    w.touched = set()  # as a snapshot leaves it
    clock.at(12)
    w.on_batch([("c", 1)])
    assert w.touched == {"a", "b", "c"}  # a and b lost their window


def test_exports_give_each_key_its_open_windows_or_forgotten():
    w, clock = logic()
    clock.at(1)
    w.on_batch([("a", 1), ("b", 5)])
    clock.at(12)
    w.on_batch([("a", 2)])  # closes window 0
    (key_a, state_a), (key_gone, gone) = w.exports(["a", "gone"])
    assert (key_a, state_a[2], key_gone, gone) == ("a", {1: 2}, "gone", FORGOTTEN)


def test_exports_gather_a_keys_windows_when_several_are_open():
    w, _ = logic()
    w.restore({"a": (0, 0, {3: 30, 1: 10}), "b": (0, 0, {3: 5})})
    exported = {key: state if state is FORGOTTEN else state[2] for key, state in w.exports(["a", "b", "c"])}
    assert exported == {"a": {1: 10, 3: 30}, "b": {3: 5}, "c": FORGOTTEN}


@pytest.mark.parametrize("kind", ["reduce", "fold", "collect"])
def test_a_snapshot_restores_to_the_same_windows(kind):
    w, clock = logic(kind)
    clock.at(1)
    w.on_batch([("a", 1), ("b", 2)])
    clock.at(11)
    w.on_batch([("a", 3)])
    exported = dict(w.exports(["a", "b"]))
    assert exported["b"] is FORGOTTEN  # its only window closed
    stored = {"a": load_state(dump_state(exported["a"]))}
    back, _ = logic(kind, Clock().at(11))
    back.restore(stored)
    assert back.open == w.open
    assert back.on_eof() == w.on_eof()


def test_stores_of_the_event_clock_form_and_of_earlier_builds_restore():
    old = KeyWindows(1_000_000, 2_000_000)
    old.windows = {0: 7}
    w, clock = logic()
    w.restore({"old": load_state(dump_state(old)), "new": (5, 5, {0: 8})})
    assert w.open == {0: {"old": 7, "new": 8}}
    clock.at(30)
    assert w.on_batch([("x", 1)]) == [("old", 7), ("new", 8)]  # long past: closed first


def test_bad_items_are_named_by_the_step():
    w, _ = logic()
    with pytest.raises(TypeError, match=r"reduce_window 'w' needs a \(key, value\) 2-tuple.*got \['k', 1\]"):
        w.on_batch([["k", 1]])
    with pytest.raises(TypeError, match=r"reduce_window 'w': keys must be str or int, got the key 1\.5 of type float"):
        w.on_batch([(1.5, 1)])


def test_a_flow_on_the_system_clock_counts_like_a_counter():
    words = [f"w{i % 37}" for i in range(5000)]
    out: list = []
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(words))
    flow.map(lambda word: (word, 1))
    flow.reduce_window("count", SystemClockConfig(), TumblingWindowConfig(timedelta(days=1)), lambda a, b: a + b)
    flow.capture(TestingOutputConfig(out))
    run_main(flow)
    assert sorted(out) == sorted(Counter(words).items())


def test_the_event_clock_keeps_its_own_logic():
    step = plan.CollectWindow(step_id="c", clock=EventClockConfig(lambda v: v), window=TEN_S)
    from millrace.runtime.worker import build_logic

    assert type(build_logic(step, T0)) is WindowLogic
    system = plan.CollectWindow(step_id="c", clock=SystemClockConfig(), window=TEN_S)
    assert type(build_logic(system, T0)) is SystemClockWindowLogic

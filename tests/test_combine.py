"""``reduce_window(..., combine=True)``: values combined per key before they cross between
workers give exactly what the same flow gives without combining, on any shape of cluster,
through a crash and a resume; and where combining cannot be exact it is refused by name."""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from millrace.dataflow import Dataflow
from millrace.execution import PeriodicEpochConfig, TestingEpochConfig, run_main, spawn_cluster
from millrace.inputs import ManualInputConfig, TestingInputConfig
from millrace.outputs import TestingEpochOutputConfig, TestingOutputConfig
from millrace.recovery import SqliteRecoveryConfig
from millrace.runtime import combine
from millrace.runtime.combine import Combiner
from millrace.runtime.exchange import DATA
from millrace.runtime.routing import Router, owner
from millrace.testing import ManualClock, doctest_ctx, use_clock
from millrace.window import EventClockConfig, SystemClockConfig, TumblingWindowConfig

pytestmark = pytest.mark.timeout(300)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
DAY = TumblingWindowConfig(timedelta(days=1))
KEYS = st.one_of(st.sampled_from(["a", "b", "c", "dé", "e" * 30]), st.integers(-3, 12))


def add(a: int, b: int) -> int:
    return a + b


def word_count(items: list[Any], out: Any, combine: bool, output: Any = TestingOutputConfig) -> Dataflow:
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(items))
    flow.map(lambda key: (key, 1))
    flow.reduce_window("count", SystemClockConfig(), DAY, add, combine=combine)
    flow.capture(output(out))
    return flow


# -- exact outputs ---------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    keys=st.lists(KEYS, max_size=300),
    shape=st.sampled_from([(1, 1), (1, 3), (2, 1), (2, 2)]),
    testing_epochs=st.booleans(),
)
def test_combined_counts_are_the_uncombined_counts_on_every_shape(keys, shape, testing_epochs):
    """Processes as threads (doctest_ctx), each with its own sockets; every item its own epoch
    or one epoch for the whole run."""
    epochs = TestingEpochConfig() if testing_epochs else None
    got = {}
    for combine_on in (False, True):
        out: list = []
        spawn_cluster(
            word_count(keys, out, combine_on),
            proc_count=shape[0],
            worker_count_per_proc=shape[1],
            epoch_config=epochs,
            mp_ctx=doctest_ctx,
        )
        got[combine_on] = Counter(out)
    assert got[True] == got[False] == Counter(Counter(keys).items())


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    words=st.lists(st.sampled_from(["x", "y", 7]), min_size=1, max_size=200), shape=st.sampled_from([(1, 2), (2, 2)])
)
def test_an_associative_reducer_need_not_commute(words, shape):
    """Concatenation is associative, not commutative: each key's result holds every value
    once, and the values one worker read in the order it read them (as without combining)."""

    def tokens(worker_index: int, worker_count: int, resume_state: Any) -> Iterator[Any]:
        for i, word in enumerate(words):
            if i % worker_count == worker_index:
                yield None, (word, f"{worker_index}.{i};")

    out: list = []
    flow = Dataflow()
    flow.input("inp", ManualInputConfig(tokens))
    flow.reduce_window("concat", SystemClockConfig(), DAY, lambda a, b: a + b, combine=True)
    flow.capture(TestingOutputConfig(out))
    spawn_cluster(flow, proc_count=shape[0], worker_count_per_proc=shape[1], mp_ctx=doctest_ctx)
    assert Counter(key for key, _ in out) == dict.fromkeys(set(words), 1)
    for key, text in out:
        seen = [tuple(map(int, token.split("."))) for token in text.split(";")[:-1]]
        assert sorted(i for _, i in seen) == [i for i, word in enumerate(words) if word == key]
        for worker in {w for w, _ in seen}:
            mine = [i for w, i in seen if w == worker]
            assert mine == sorted(mine), f"worker {worker}'s values of {key!r} out of order: {text}"


@pytest.mark.parametrize("epochs", [None, TestingEpochConfig()], ids=["one-epoch", "epoch-per-item"])
def test_two_combining_steps_in_a_row(epochs):
    """Counts of words, then how many words have each count: the first step's results,
    emitted at the end of input, are combined again on their way to the second."""
    words = [f"w{(i * 13) % 17}" for i in range(400)] + ["rare"]
    out: list = []
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(words))
    flow.map(lambda word: (word, 1))
    flow.reduce_window("count", SystemClockConfig(), DAY, add, combine=True)
    flow.map(lambda kv: (kv[1], 1))
    flow.reduce_window("histogram", SystemClockConfig(), DAY, add, combine=True)
    flow.capture(TestingOutputConfig(out))
    spawn_cluster(flow, proc_count=2, worker_count_per_proc=2, epoch_config=epochs, mp_ctx=doctest_ctx)
    assert sorted(out) == sorted(Counter(Counter(words).values()).items())


def _pages(items: list[Any], out: Any, merge: bool) -> Dataflow:
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(items))
    flow.fold_window(
        "pages",
        SystemClockConfig(),
        DAY,
        lambda: (0, frozenset()),
        lambda acc, page: (acc[0] + 1, acc[1] | {page}),
        merger=(lambda acc, more: (acc[0] + more[0], acc[1] | more[1])) if merge else None,
    )
    flow.capture(TestingOutputConfig(out))
    return flow


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    visits=st.lists(st.tuples(KEYS, st.sampled_from(["home", "cart", "faq"])), max_size=200),
    shape=st.sampled_from([(1, 1), (1, 3), (2, 2)]),
)
def test_a_fold_with_a_merger_folds_what_it_folds_without(visits, shape):
    got = {}
    for merge in (False, True):
        out: list = []
        spawn_cluster(
            _pages(visits, out, merge), proc_count=shape[0], worker_count_per_proc=shape[1], mp_ctx=doctest_ctx
        )
        got[merge] = sorted(out, key=repr)
    assert got[True] == got[False]
    assert sum(count for _, (count, _) in got[True]) == len(visits)


def test_two_real_processes_count_exactly():
    words = [f"w{(i * 7919) % 997}" for i in range(20_000)] + list(range(300))
    with multiprocessing.Manager() as manager:
        for combine_on in (True, False):
            out = manager.list()
            spawn_cluster(word_count(words, out, combine_on), proc_count=2, worker_count_per_proc=2)
            assert Counter(list(out)) == Counter(Counter(words).items()), f"combine={combine_on}"


def _ticking(clock: ManualClock, items: list[Any]) -> Any:
    """Worker 0 reads ``items``, the clock moving a second after each (see test_clock.py);
    the other workers read nothing, but own keys."""

    def build(worker_index: int, worker_count: int, resume_state: Any) -> Iterator[Any]:
        if worker_index != 0:
            return
        for i, item in enumerate(items):
            yield i, item
            clock.advance(timedelta(seconds=1))
            yield None

    return build


def _windowed(clock: ManualClock, items: list[Any], out: list, combine_on: bool) -> Dataflow:
    flow = Dataflow()
    flow.input("inp", ManualInputConfig(_ticking(clock, items)))
    three = TumblingWindowConfig(timedelta(seconds=3), start_at=T0)
    flow.reduce_window("sum", SystemClockConfig(), three, add, combine=combine_on)
    flow.capture(TestingEpochOutputConfig(out))
    return flow


@pytest.mark.parametrize("shape", [(1, 1), (1, 3), (2, 2)])
def test_windows_hold_the_same_values_and_close_at_the_end_of_an_epoch(shape):
    """Three-second windows, ten-second epochs, an item a second: with ``combine`` each window
    holds exactly the values it holds without, and comes out at the end of the epoch in which
    it ended (without, as soon as the clock passes its end)."""
    items = [(f"k{i % 2}", 1 << i) for i in range(25)]
    plain: list = []
    clock = ManualClock(T0)
    with use_clock(clock):
        run_main(_windowed(clock, items, plain, False), epoch_config=PeriodicEpochConfig(timedelta(seconds=10)))
    combined: list = []
    clock = ManualClock(T0)
    with use_clock(clock):
        spawn_cluster(
            _windowed(clock, items, combined, True),
            proc_count=shape[0],
            worker_count_per_proc=shape[1],
            epoch_config=PeriodicEpochConfig(timedelta(seconds=10)),
            mp_ctx=doctest_ctx,
        )
    # Sums of distinct powers of two: each says exactly which values its window holds.
    assert sorted(item for _, item in combined) == sorted(item for _, item in plain)
    assert any(total & (total - 1) for _, (_, total) in plain), "no window reduced two values"
    # Without combine a window closes at the first batch or tick after its end, which may
    # fall in the next epoch; with, at the end of the epoch in which it ended.
    closed = {item: epoch for epoch, item in plain}
    for epoch, item in combined:
        assert closed[item] - 1 <= epoch <= closed[item], (epoch, item, closed[item])


# -- recovery --------------------------------------------------------------------------------


class Crash(Exception):
    pass


def _resumable(words: list[Any], out: Any, crash_at: int | None, starts: Any) -> Dataflow:
    def share(worker_index: int, worker_count: int, resume_state: Any) -> Iterator[Any]:
        starts.append(resume_state or 0)
        for i in range(resume_state or 0, len(words)):
            if i % worker_count == worker_index:
                if i == crash_at:
                    raise Crash(f"crash at word {i}")
                yield i + 1, words[i]
            if i % 50 == 0:
                time.sleep(0.002)  # slow enough that epochs of 5 ms end mid-stream
                yield None

    flow = Dataflow()
    flow.input("inp", ManualInputConfig(share))
    flow.map(lambda word: (word, 1))
    flow.reduce_window("count", SystemClockConfig(), DAY, add, combine=True)
    flow.capture(TestingOutputConfig(out))
    return flow


@pytest.mark.parametrize("crash_at", [37, 1_201, 2_999])
def test_a_resume_mid_stream_gives_the_same_counts(tmp_path, crash_at):
    """The first run crashes partway (partials held, epochs snapshotted); the second resumes
    from the store and ends with every word counted once."""
    words = [f"w{(i * 31) % 101}" for i in range(3_000)]
    epochs = PeriodicEpochConfig(timedelta(milliseconds=5))
    recovery = SqliteRecoveryConfig(tmp_path)
    with multiprocessing.Manager() as manager:
        first, starts = manager.list(), manager.list()
        with pytest.raises(Crash):
            spawn_cluster(
                _resumable(words, first, crash_at, manager.list()),
                proc_count=2,
                worker_count_per_proc=2,
                epoch_config=epochs,
                recovery_config=recovery,
            )
        second = manager.list()
        spawn_cluster(
            _resumable(words, second, None, starts),
            proc_count=2,
            worker_count_per_proc=2,
            epoch_config=epochs,
            recovery_config=recovery,
        )
        assert list(first) == []  # the window outlives the run: counts come at the end only
        assert Counter(list(second)) == Counter(Counter(words).items())
        resumed_at = list(starts)
    assert len(resumed_at) == 4
    if crash_at > 1_000:  # by then epochs of 5 ms have ended and been snapshotted
        assert max(resumed_at) > 0, "the second run started over instead of resuming"


def _ticks(out: Any, items: int, crash_at: int | None) -> Dataflow:
    """Worker 0 reads ticks (its resume state: the next one), whatever the worker count."""

    def ticks(worker_index: int, worker_count: int, resume_state: Any) -> Iterator[Any]:
        if worker_index != 0:
            return
        for tick in range(resume_state or 0, items):
            if tick == crash_at:
                raise Crash(f"crash at tick {tick}")
            yield tick + 1, (f"k{tick % 10}", 1)

    flow = Dataflow()
    flow.input("ticks", ManualInputConfig(ticks))
    flow.reduce_window("count", SystemClockConfig(), DAY, add, combine=True)
    flow.capture(TestingOutputConfig(out))
    return flow


def test_a_cluster_grown_on_resume_moves_the_open_windows_and_counts_exactly(tmp_path):
    recovery = SqliteRecoveryConfig(tmp_path)
    first: list = []
    with pytest.raises(Crash):
        run_main(_ticks(first, 60, crash_at=37), epoch_config=TestingEpochConfig(), recovery_config=recovery)
    second: list = []
    spawn_cluster(
        _ticks(second, 60, None),
        proc_count=2,
        worker_count_per_proc=2,
        epoch_config=TestingEpochConfig(),
        recovery_config=recovery,
        mp_ctx=doctest_ctx,
    )
    assert first == []
    assert sorted(second) == [(f"k{i}", 6) for i in range(10)]


# -- errors ----------------------------------------------------------------------------------


def test_combine_on_an_event_clock_is_refused_by_name():
    flow = Dataflow()
    clock = EventClockConfig(lambda v: v, wait_for_system_duration=timedelta(0))
    with pytest.raises(ValueError, match=r"reduce_window 'late': combine=True needs SystemClockConfig, got Event"):
        flow.reduce_window("late", clock, DAY, add, combine=True)
    assert flow.steps == []


def test_a_merger_on_an_event_clock_is_refused_by_name():
    clock = EventClockConfig(lambda v: v, wait_for_system_duration=timedelta(0))
    with pytest.raises(ValueError, match=r"fold_window 'f': merger= needs SystemClockConfig, got EventClockConfig"):
        Dataflow().fold_window("f", clock, DAY, list, lambda a, b: [*a, b], merger=lambda a, b: a + b)


def test_a_merger_must_be_callable():
    with pytest.raises(TypeError, match=r"fold_window 'f': merger must be callable, got 3"):
        Dataflow().fold_window("f", SystemClockConfig(), DAY, list, lambda a, b: [*a, b], merger=3)  # type: ignore[arg-type]


def test_combine_must_be_a_bool():
    with pytest.raises(TypeError, match=r"reduce_window 'c': combine must be True or False, got 'yes'"):
        Dataflow().reduce_window("c", SystemClockConfig(), DAY, add, combine="yes")  # type: ignore[arg-type]


def test_a_failing_reducer_is_named_where_it_combines():
    def picky(a: int, b: int) -> int:
        if a + b > 5:
            raise ArithmeticError("too many")
        return a + b

    flow = Dataflow()
    flow.input("inp", TestingInputConfig(["k"] * 40))
    flow.map(lambda key: (key, 1))
    flow.reduce_window("picky", SystemClockConfig(), DAY, picky, combine=True)
    flow.capture(TestingOutputConfig([]))
    with pytest.raises(ArithmeticError, match="too many") as caught:
        spawn_cluster(flow, proc_count=1, worker_count_per_proc=2, mp_ctx=doctest_ctx)
    assert "reduce_window 'picky'" in "".join(getattr(caught.value, "__notes__", []))


def test_a_partial_that_cannot_travel_is_named():
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(range(20)))
    flow.map(lambda i: ("k", lambda: i))  # a lambda pickles by reference here: it cannot
    flow.reduce_window("fns", SystemClockConfig(), DAY, lambda a, b: b, combine=True)
    flow.capture(TestingOutputConfig([]))
    with pytest.raises(Exception, match=r"reduce_window 'fns'"):
        spawn_cluster(flow, proc_count=2, worker_count_per_proc=1)


# -- the combiner itself ---------------------------------------------------------------------


class _Step:
    name = "reduce_window 'count'"
    loop_code = None
    reducer = staticmethod(add)
    builder = folder = None

    def __init__(self) -> None:
        self.window = 0

    def window_now(self) -> int:
        return self.window


def _combiner(step: _Step, workers: int = 3, me: int = 0) -> Combiner:
    return Combiner(step, target=2, router=Router(workers, me))  # type: ignore[arg-type]


def test_partials_are_routed_window_by_window_when_drained():
    step = _Step()
    combiner = _combiner(step)
    combiner.epoch = 5
    combiner.begin_batch()[1].update({3: 1, 4: 2, 6: 3})  # owners 0, 1, 0
    step.window = 1
    combiner.begin_batch()[1].update({4: 1, 5: 1, "a": 7})
    local, sent = combiner.drain()
    a = owner("a", 3)
    assert local == [(0, [(3, 1), (6, 3)])] + ([(1, [("a", 7)])] if a == 0 else [])
    expected = [
        (1, (DATA, ~2, 5, (0, [(4, 2)]), 0)),
        (1, (DATA, ~2, 5, (1, [(4, 1)] + ([("a", 7)] if a == 1 else [])), 0)),
    ]
    expected += [(2, (DATA, ~2, 5, (1, [(5, 1)] + ([("a", 7)] if a == 2 else [])), 0))]
    assert sorted(sent, key=repr) == sorted(expected, key=repr)
    assert combiner.drain() == ([], [])


def test_partials_holding_too_many_keys_are_full_and_go_in_chunks(monkeypatch):
    monkeypatch.setattr(combine, "LIMIT", 10)
    monkeypatch.setattr(combine, "CHUNK", 4)
    combiner = _combiner(_Step(), workers=2, me=0)
    partials = combiner.begin_batch()[1]
    partials.update({2 * i + 1: 1 for i in range(9)})
    assert not combiner.full()
    partials[19] = 1
    assert combiner.full()
    local, sent = combiner.drain()
    assert local == []
    assert [len(msg[3][1]) for _, msg in sent] == [4, 4, 2]
    assert [key for _, msg in sent for key, _ in msg[3][1]] == [2 * i + 1 for i in range(10)]


def test_a_partial_for_a_window_already_closed_goes_into_the_newest():
    from millrace import plan
    from millrace.runtime.system_windows import SystemClockWindowLogic

    clock = ManualClock(T0)
    step = plan.ReduceWindow(
        step_id="w",
        clock=SystemClockConfig(),
        window=TumblingWindowConfig(timedelta(seconds=10)),
        reducer=add,
        combine=True,
    )
    logic = SystemClockWindowLogic(step, T0, clock.now)
    logic.merge(0, [("a", 1)])
    assert logic.next_deadline() is None  # closed by epochs, not by time
    clock.advance(timedelta(seconds=25))
    assert logic.on_epoch_end() == [("a", 1)]
    logic.merge(1, [("a", 2)])  # the sender's clock was behind: window 1 closed already
    logic.merge(2, [("a", 3)])
    assert logic.on_eof() == [("a", 5)]

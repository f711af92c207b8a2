"""Every operator, input, output and epoch configuration under run_main, and every error a
wrong shape deserves."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from millrace.dataflow import Dataflow
from millrace.execution import PeriodicEpochConfig, TestingEpochConfig, run_main, spawn_cluster
from millrace.inputs import (
    ManualInputConfig,
    TestingBuilderInputConfig,
    TestingInputConfig,
    distribute,
)
from millrace.outputs import (
    ManualEpochOutputConfig,
    ManualOutputConfig,
    StdOutputConfig,
    TestingEpochOutputConfig,
    TestingOutputConfig,
)
from millrace.testing import ManualClock, doctest_ctx, use_clock


def run(steps, items, epoch_config=None) -> list:
    out: list = []
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(items))
    for step in steps:
        step(flow)
    flow.capture(TestingOutputConfig(out))
    run_main(flow, epoch_config=epoch_config)
    return out


# -- stateless steps ---------------------------------------------------------------------------


def test_map_flat_map_filter_inspect():
    seen = []
    out = run(
        [
            lambda f: f.map(lambda x: x * 2),
            lambda f: f.flat_map(lambda x: range(x % 3)),
            lambda f: f.filter(lambda x: x != 0),
            lambda f: f.inspect(seen.append),
        ],
        range(6),
    )
    expected = [y for x in range(6) for y in range((x * 2) % 3) if y != 0]
    assert out == expected
    assert seen == expected


def test_flat_map_of_empty_iterables_and_generators():
    out = run([lambda f: f.flat_map(lambda x: (c for c in x))], ["ab", "", "c"])
    assert out == ["a", "b", "c"]


def test_capture_in_the_middle_passes_items_on():
    middle: list = []
    end: list = []
    flow = Dataflow()
    flow.input("inp", TestingInputConfig([1, 2, 3]))
    flow.capture(TestingOutputConfig(middle))
    flow.map(lambda x: x * 10)
    flow.capture(TestingOutputConfig(end))
    run_main(flow)
    assert middle == [1, 2, 3] and end == [10, 20, 30]


def test_inspect_epoch_sees_each_items_epoch():
    seen = []
    run([lambda f: f.inspect_epoch(lambda e, x: seen.append((e, x)))], "abc", TestingEpochConfig())
    assert seen == [(0, "a"), (1, "b"), (2, "c")]


# -- keyed steps -------------------------------------------------------------------------------


def test_reduce_emits_on_completion_and_forgets_the_key():
    items = [("a", 1), ("a", 2), ("b", 7), ("a", 3), ("a", 1)]
    out = run([lambda f: f.reduce("r", lambda acc, x: acc + x, lambda acc: acc >= 3)], items)
    # a: 1, 1+2=3 -> emit; b: 7 -> emit at once (the first value is checked too); a: 3 -> emit
    assert out == [("a", 3), ("b", 7), ("a", 3)]


def test_reduce_keeps_incomplete_keys_silent():
    out = run([lambda f: f.reduce("r", lambda a, b: a + b, lambda acc: False)], [("k", 1)] * 5)
    assert out == []


def test_stateful_map_builds_per_key_and_none_forgets():
    built = []

    def builder():
        built.append(1)
        return 0

    def mapper(state, value):
        state += value
        return (None if state >= 3 else state), state

    items = [("a", 1), ("b", 1), ("a", 2), ("a", 1)]
    out = run([lambda f: f.stateful_map("s", builder, mapper)], items)
    assert out == [("a", 1), ("b", 1), ("a", 3), ("a", 1)]
    assert len(built) == 3  # a, b, and a again after it was forgotten


def test_int_and_str_keys_are_distinct():
    items = [(1, 1), ("1", 1), (1, 1)]
    out = run([lambda f: f.reduce("r", lambda a, b: a + b, lambda acc: acc == 2)], items)
    assert out == [(1, 2)]


# -- inputs ------------------------------------------------------------------------------------


def test_manual_input_with_nothing_yet():
    def builder(worker_index, worker_count, resume_state):
        assert (worker_index, worker_count, resume_state) == (0, 1, None)
        for i in range(3):
            yield None
            yield None
            yield i, f"item{i}"

    out: list = []
    flow = Dataflow()
    flow.input("inp", ManualInputConfig(builder))
    flow.capture(TestingOutputConfig(out))
    run_main(flow)
    assert out == ["item0", "item1", "item2"]


def test_testing_builder_input_is_built_per_worker():
    calls = []

    def builder():
        calls.append(1)
        return iter("xyz")

    out: list = []
    flow = Dataflow()
    flow.input("inp", TestingBuilderInputConfig(builder))
    flow.capture(TestingOutputConfig(out))
    run_main(flow)
    assert out == ["x", "y", "z"] and calls == [1]


def test_testing_input_accepts_a_one_shot_iterator():
    assert run([], iter([3, 4])) == [3, 4]


def test_distribute_spreads_round_robin():
    assert [list(distribute(range(7), i, 3)) for i in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    with pytest.raises(ValueError, match="index"):
        distribute([], 3, 3)


def test_two_inputs_merge_into_one_stream():
    out: list = []
    flow = Dataflow()
    flow.input("first", TestingInputConfig([1, 2]))
    flow.map(lambda x: x * 10)
    flow.input("second", TestingInputConfig([5]))
    flow.capture(TestingOutputConfig(out))
    run_main(flow)
    assert sorted(out) == [5, 10, 20]


# -- outputs -----------------------------------------------------------------------------------


def test_manual_outputs_get_worker_index_and_epochs():
    got = []
    built = []

    def builder(worker_index, worker_count):
        built.append((worker_index, worker_count))
        return got.append

    flow = Dataflow()
    flow.input("inp", TestingInputConfig("ab"))
    flow.capture(ManualEpochOutputConfig(builder))
    flow.capture(ManualOutputConfig(builder))
    run_main(flow, epoch_config=TestingEpochConfig())
    assert built == [(0, 1), (0, 1)]
    assert got == [(0, "a"), "a", (1, "b"), "b"]


class _Collector:
    def __init__(self) -> None:
        self.got: list = []

    def __call__(self, item) -> None:
        self.got.append(item)

    def take(self, item) -> None:
        self.got.append(item)


@pytest.mark.parametrize("kind", ["function", "method", "builtin", "callable object"])
def test_a_manual_output_of_any_callable_kind_gets_every_item_in_order(kind):
    collector = _Collector()
    sink = {
        "function": lambda item: collector.got.append(item),
        "method": collector.take,
        "builtin": collector.got.append,
        "callable object": collector,
    }[kind]
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(range(2500)))
    flow.capture(ManualOutputConfig(lambda worker_index, worker_count: sink))
    flow.capture(ManualEpochOutputConfig(lambda worker_index, worker_count: sink))
    run_main(flow, epoch_config=TestingEpochConfig())
    assert collector.got == [got for n in range(2500) for got in (n, (n, n))]


def _refuse(item):
    raise ValueError(f"cannot write {item}")


@pytest.mark.parametrize("sink", [_refuse, int], ids=["function", "builtin"])
def test_an_exception_in_a_manual_output_names_the_capture(sink):
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(["x"]))
    flow.capture(ManualOutputConfig(lambda worker_index, worker_count: sink))
    with pytest.raises(ValueError) as info:
        run_main(flow)
    assert "capture #1 (ManualOutputConfig)" in info.value.__notes__[0]


def test_std_output_prints_each_item(capsys):
    flow = Dataflow()
    flow.input("inp", TestingInputConfig([1, "two", ("k", 3)]))
    flow.capture(StdOutputConfig())
    run_main(flow)
    assert capsys.readouterr().out == "1\ntwo\n('k', 3)\n"


def test_testing_outputs_with_a_manager_list():
    with multiprocessing.Manager() as manager:
        plain = manager.list()
        with_epochs = manager.list()
        flow = Dataflow()
        flow.input("inp", TestingInputConfig("xy"))
        flow.capture(TestingOutputConfig(plain))
        flow.capture(TestingEpochOutputConfig(with_epochs))
        run_main(flow, epoch_config=TestingEpochConfig())
        assert list(plain) == ["x", "y"]
        assert list(with_epochs) == [(0, "x"), (1, "y")]


# -- epochs ------------------------------------------------------------------------------------


def test_testing_epochs_follow_input_items_through_every_step():
    out: list = []
    flow = Dataflow()
    flow.input("inp", TestingInputConfig([("a", 1), ("b", 2), ("a", 3)]))
    flow.flat_map(lambda kv: [kv, kv])
    flow.stateful_map("count", lambda: 0, lambda n, v: (n + 1, n + 1))
    flow.capture(TestingEpochOutputConfig(out))
    run_main(flow, epoch_config=TestingEpochConfig())
    assert out == [(0, ("a", 1)), (0, ("a", 2)), (1, ("b", 1)), (1, ("b", 2)), (2, ("a", 3)), (2, ("a", 4))]


def test_periodic_epochs_advance_with_wall_time():
    # Wall time as the run's clock reads it: a manual clock the input moves 0.3 s an item,
    # so the test is exact and takes no time (tests/test_clock.py has more of it).
    clock = ManualClock()

    def builder(worker_index, worker_count, resume_state):
        for i in range(4):
            clock.advance(timedelta(seconds=0.3))
            yield None
            yield i, i

    out: list = []
    flow = Dataflow()
    flow.input("inp", ManualInputConfig(builder))
    flow.capture(TestingEpochOutputConfig(out))
    with use_clock(clock):
        run_main(flow, epoch_config=PeriodicEpochConfig(timedelta(seconds=0.1)))
    # Items 0.3 s apart, epochs 0.1 s long: no two items share an epoch. The first epoch
    # ends, empty, at the first "nothing yet", which comes after 0.3 s.
    assert out == [(1, 0), (2, 1), (3, 2), (4, 3)]


def test_a_source_that_takes_its_time_per_item_does_not_hold_up_epochs_or_output():
    def builder(worker_index, worker_count, resume_state):
        for i in range(12):
            time.sleep(0.1)  # slow, though it never says "nothing yet"
            yield i, i

    out: list = []
    flow = Dataflow()
    flow.input("inp", ManualInputConfig(builder))
    flow.capture(TestingEpochOutputConfig(out))
    run_main(flow, epoch_config=PeriodicEpochConfig(timedelta(seconds=0.25)))
    assert [item for _, item in out] == list(range(12))
    # Over a second of input with quarter-second epochs: the items are not all one batch.
    assert len({epoch for epoch, _ in out}) > 1


def test_the_default_epoch_is_ten_seconds():
    assert PeriodicEpochConfig().epoch_length == timedelta(seconds=10)
    out: list = []
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(range(100)))
    flow.capture(TestingEpochOutputConfig(out))
    run_main(flow)
    assert {epoch for epoch, _ in out} == {0}


def test_the_reference_documents_first_example_runs(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(
        "from millrace.dataflow import Dataflow\n"
        "from millrace.execution import run_main\n"
        "from millrace.inputs import ManualInputConfig\n"
        "from millrace.outputs import ManualOutputConfig\n"
        "\n"
        "def input_builder(worker_index, worker_count, resume_state):\n"
        "    state = None # Ignore recovery\n"
        "    for i in range(3):\n"
        "        yield (state, i)\n"
        "\n"
        "def output_builder(worker_index, worker_count):\n"
        "    return print\n"
        "\n"
        "flow = Dataflow()\n"
        'flow.input("inp", ManualInputConfig(input_builder))\n'
        "flow.map(lambda item: item + 1)\n"
        "flow.capture(ManualOutputConfig(output_builder))\n"
        "\n"
        "run_main(flow)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "1\n2\n3\n"


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [5, ("k",), ("k", 1, 2), (1.5, 1), (None, 1), ((1, 2), 3), (True, 1), ["k", 1]])
@pytest.mark.parametrize("step", ["reduce", "stateful_map", "fold_window", "collect_window_event"])
def test_a_stateful_step_names_the_bad_item(bad, step):
    from millrace.window import EventClockConfig, SystemClockConfig, TumblingWindowConfig

    adders = {
        "reduce": lambda f: f.reduce("the_step", lambda a, b: a, lambda a: False),
        "stateful_map": lambda f: f.stateful_map("the_step", lambda: 0, lambda s, v: (s, v)),
        "fold_window": lambda f: f.fold_window(
            "the_step", SystemClockConfig(), TumblingWindowConfig(timedelta(1)), list, lambda a, v: a
        ),
        "collect_window_event": lambda f: f.collect_window(
            "the_step", EventClockConfig(lambda v: datetime.now(UTC)), TumblingWindowConfig(timedelta(1))
        ),
    }
    for shape in ("run_main", "cluster"):
        with pytest.raises(TypeError) as info:
            if shape == "run_main":
                run([adders[step]], [("ok", 1), bad])
            else:
                # Two processes (threads here) of one worker: the item is routed, or rejected
                # while routed, and named either way.
                flow = Dataflow()
                flow.input("inp", TestingInputConfig([("ok", 1), bad]))
                adders[step](flow)
                flow.capture(TestingOutputConfig([]))
                spawn_cluster(flow, proc_count=2, mp_ctx=doctest_ctx)
        message = str(info.value)
        assert "'the_step'" in message and repr(bad) in message, shape
        if type(bad) is tuple and len(bad) == 2:
            # The shape is right, the key is not: the message says so, and of which type it is.
            key_type = type(bad[0]).__name__
            assert f"keys must be str or int, got the key {bad[0]!r} of type {key_type}" in message, shape
        else:
            assert "needs a (key, value) 2-tuple to route each item to the worker that owns its key" in message, shape


def test_filter_must_return_a_bool():
    with pytest.raises(TypeError, match=r"filter #1 \(.*<lambda>\) must return a bool, got 0 for the item 0"):
        run([lambda f: f.filter(lambda x: x % 2)], [0, 1])


def test_is_complete_must_return_a_bool():
    with pytest.raises(TypeError, match=r"reduce 'r': is_complete must return a bool, got None"):
        run([lambda f: f.reduce("r", lambda a, b: a, lambda a: None)], [("k", 1)])


@pytest.mark.parametrize("result", [5, (1,), (1, 2, 3), [1, 2]])
def test_stateful_map_must_return_a_pair(result):
    with pytest.raises(TypeError, match=r"stateful_map 's': the mapper must return a \(new_state, output\) 2-tuple"):
        run([lambda f: f.stateful_map("s", lambda: 0, lambda s, v: result)], [("k", 1)])


@pytest.mark.parametrize("bad", [5, (1, 2, 3), "xy", [1, 2]])
def test_an_input_builder_must_yield_pairs(bad):
    flow = Dataflow()
    flow.input("src", ManualInputConfig(lambda i, n, s: iter([(None, 1), bad])))
    flow.capture(TestingOutputConfig([]))
    with pytest.raises(TypeError, match=r"input 'src': the input builder must yield \(state, item\) 2-tuples or None"):
        run_main(flow)


def test_flat_map_must_return_iterables():
    with pytest.raises(TypeError, match=r"flat_map #1 .* must return an iterable, got 3"):
        run([lambda f: f.flat_map(lambda x: x)], [[1], 3])


def test_a_user_exception_keeps_its_type_and_names_the_step():
    def explode(x):
        raise KeyError(f"no {x}")

    with pytest.raises(KeyError) as info:
        run([lambda f: f.map(lambda x: x), lambda f: f.map(explode)], [1])
    assert info.value.__notes__ == [
        "millrace: raised in map #2 (test_a_user_exception_keeps_its_type_and_names_the_step.<locals>.explode)"
        " on worker 0"
    ]


def test_exceptions_from_builders_and_outputs_name_their_step():
    def broken_output(worker_index, worker_count):
        raise OSError("disk full")

    flow = Dataflow()
    flow.input("inp", TestingInputConfig([1]))
    flow.capture(ManualOutputConfig(broken_output))
    with pytest.raises(OSError) as info:
        run_main(flow)
    assert "capture #1 (ManualOutputConfig)" in info.value.__notes__[0]


def test_a_flow_without_input_or_capture_is_refused():
    flow = Dataflow()
    with pytest.raises(ValueError, match="no input"):
        run_main(flow)
    flow.input("inp", TestingInputConfig([1]))
    with pytest.raises(ValueError, match="no capture"):
        run_main(flow)
    starts_with_map = Dataflow()
    starts_with_map.map(str)
    starts_with_map.input("inp", TestingInputConfig([1]))
    starts_with_map.capture(TestingOutputConfig([]))
    with pytest.raises(ValueError, match="before any input"):
        run_main(starts_with_map)


def test_building_a_flow_checks_its_arguments():
    flow = Dataflow()
    with pytest.raises(TypeError, match="step_id must be a non-empty str"):
        flow.input(3, TestingInputConfig([]))
    with pytest.raises(TypeError, match="expected an InputConfig"):
        flow.input("inp", [1, 2])
    flow.input("inp", TestingInputConfig([]))
    with pytest.raises(ValueError, match="'inp' is already used"):
        flow.reduce("inp", max, bool)
    with pytest.raises(TypeError, match="map: the function must be callable"):
        flow.map(5)
    with pytest.raises(TypeError, match="expected an OutputConfig"):
        flow.capture(print)
    with pytest.raises(TypeError, match="clock_config must be a ClockConfig"):
        flow.collect_window("w", None, None)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="positive"):
        PeriodicEpochConfig(timedelta(seconds=-1))
    with pytest.raises(TypeError, match="timedelta"):
        PeriodicEpochConfig(5)
    with pytest.raises(TypeError, match="epoch_config"):
        run([], [1], epoch_config="fast")
    with pytest.raises(TypeError, match="callable input_builder"):
        ManualInputConfig(None)

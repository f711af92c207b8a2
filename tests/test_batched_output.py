"""``ManualOutputConfig(batched=True)``: the output function gets lists of items, the same
items in the same order as one by one, each list non-empty and of one epoch, on every path a
worker takes (the fused input loop, a chain with a capture in the middle, after a stateful
step, several workers in one process)."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from millrace.dataflow import Dataflow
from millrace.execution import TestingEpochConfig, cluster_main, run_main
from millrace.inputs import ManualInputConfig, TestingInputConfig
from millrace.outputs import (
    ManualEpochOutputConfig,
    ManualOutputConfig,
    TestingEpochOutputConfig,
    TestingOutputConfig,
)


def _shape(flow: Dataflow, shape: str) -> None:
    flow.map(lambda x: x * 3)
    flow.filter(lambda x: x % 2 == 0)
    if shape == "stateful":
        flow.map(lambda x: (str(x % 5), x))
        flow.stateful_map("running", lambda: 0, lambda total, x: (total + x, (x, total + x)))
        flow.map(lambda pair: pair[1])


def _items_flow(items: list[int], shape: str, batched_input: bool) -> Dataflow:
    flow = Dataflow()
    if batched_input:
        blocks = [items[i : i + 7] for i in range(0, len(items), 7)]
        flow.input("inp", ManualInputConfig(lambda i, n, s: enumerate(blocks, 1), batched=True))
    else:
        flow.input("inp", TestingInputConfig(items))
    _shape(flow, shape)
    return flow


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-1000, 1000), max_size=200),
    st.sampled_from(["stateless", "stateful"]),
    st.booleans(),
    st.booleans(),
)
def test_lists_hold_the_same_items_in_the_same_order_each_of_one_epoch(items, shape, batched_input, epochs):
    expected: list = []
    flow = _items_flow(items, shape, batched_input)
    flow.capture(TestingEpochOutputConfig(expected) if epochs else TestingOutputConfig(expected))
    epoch_config = TestingEpochConfig() if epochs else None
    run_main(flow, epoch_config=epoch_config)

    calls: list = []
    flow = _items_flow(items, shape, batched_input)
    config = ManualEpochOutputConfig if epochs else ManualOutputConfig
    flow.capture(config(lambda worker_index, worker_count: calls.append, batched=True))
    run_main(flow, epoch_config=epoch_config)

    if epochs:
        assert all(type(items) is list and items for _epoch, items in calls)
        assert [(epoch, x) for epoch, items in calls for x in items] == expected
    else:
        assert all(type(items) is list and items for items in calls)
        assert [x for items in calls for x in items] == expected


def test_the_list_is_the_callers_to_keep_even_when_the_capture_is_in_the_middle():
    # The function empties each list it gets: the items still reach the steps after it.
    kept: list = []

    def write(items: list) -> None:
        kept.append(list(items))
        items.clear()

    out: list = []
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(range(50)))
    flow.capture(ManualOutputConfig(lambda worker_index, worker_count: write, batched=True))
    flow.map(lambda x: x + 1)
    flow.capture(TestingOutputConfig(out))
    run_main(flow)
    assert [x for items in kept for x in items] == list(range(50))
    assert out == list(range(1, 51))


def test_several_workers_of_one_process_each_write_whole_lists():
    calls: list = []
    lock = threading.Lock()

    def build(worker_index: int, worker_count: int):
        def write(items: list) -> None:
            with lock:
                calls.append((worker_index, items))

        return write

    def numbers(worker_index: int, worker_count: int, resume_state):
        return ((n, n) for n in range(worker_index, 3000, worker_count))

    flow = Dataflow()
    flow.input("inp", ManualInputConfig(numbers))
    flow.map(lambda x: x * 2)
    flow.capture(ManualOutputConfig(build, batched=True))
    cluster_main(flow, [], 0, worker_count_per_proc=3)
    for worker in range(3):
        mine = [x for index, items in calls if index == worker for x in items]
        assert mine == [n * 2 for n in range(worker, 3000, 3)]


@pytest.mark.parametrize("source", ["items", "batches", "batches then nothing yet"])
def test_an_error_in_the_output_names_the_capture_and_is_raised_once(source):
    calls: list = []

    def write(items: list) -> None:
        calls.append(list(items))
        raise ValueError("disk full")

    def blocks(worker_index, worker_count, resume_state):
        yield 1, [1, 2]
        if source == "batches then nothing yet":
            yield None  # the loop outputs what it has, on the line that stops it
        yield 2, [3]

    flow = Dataflow()
    if source == "items":
        flow.input("inp", TestingInputConfig([1, 2]))
    else:
        flow.input("inp", ManualInputConfig(blocks, batched=True))
    flow.capture(ManualOutputConfig(lambda worker_index, worker_count: write, batched=True))
    with pytest.raises(ValueError, match="disk full") as info:
        run_main(flow)
    assert any("capture" in note for note in info.value.__notes__), info.value.__notes__
    assert len(calls) == 1  # not written again on the way out


@pytest.mark.parametrize("config", [ManualOutputConfig, ManualEpochOutputConfig])
def test_batched_must_be_a_bool(config):
    with pytest.raises(TypeError, match=f"{config.__name__} batched must be True or False, got 1"):
        config(lambda worker_index, worker_count: print, batched=1)  # type: ignore[arg-type]


def test_a_builder_that_returns_no_callable_is_named():
    flow = Dataflow()
    flow.input("inp", TestingInputConfig([1]))
    flow.capture(ManualOutputConfig(lambda worker_index, worker_count: None, batched=True))
    with pytest.raises(TypeError, match="must return a callable that takes each list of items, got None"):
        run_main(flow)

"""Stateless steps fused into one generated loop: same results, and every failure still names
the step it came from."""

from __future__ import annotations

import traceback

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from millrace import plan
from millrace.dataflow import Dataflow
from millrace.execution import run_main
from millrace.inputs import TestingInputConfig
from millrace.outputs import TestingEpochOutputConfig, TestingOutputConfig
from millrace.runtime.chain import compile_chain
from millrace.runtime.sinks import Sink


class ListSink(Sink):
    def __init__(self) -> None:
        self.batches: list[tuple[list, int]] = []

    def write(self, batch: list, epoch: int) -> None:
        self.batches.append((list(batch), epoch))


def double(x):
    return x * 2


def test_every_kind_of_step_in_one_chain():
    seen: list = []
    sink = ListSink()
    steps = [
        plan.Map(1, double),
        plan.FlatMap(2, lambda x: [x, x + 1]),
        plan.Filter(3, lambda x: x % 3 != 0),
        plan.Inspect(4, seen.append),
        plan.InspectEpoch(5, lambda epoch, x: seen.append((epoch, x))),
        plan.Capture(6, TestingOutputConfig([])),
        plan.Map(7, str),
    ]
    chain = compile_chain(steps, [None] * 5 + [sink, None])
    assert chain.run([1, 2, 3], 4) == ["2", "4", "5", "7"]
    assert sink.batches == [([2, 4, 5, 7], 4)]
    assert seen == [2, (4, 2), 4, (4, 4), 5, (4, 5), 7, (4, 7)]


def test_a_batch_that_empties_skips_the_capture_and_what_follows():
    sink = ListSink()
    after: list = []
    chain = compile_chain(
        [plan.Filter(1, lambda x: False), plan.Capture(2, TestingOutputConfig([])), plan.Inspect(3, after.append)],
        [None, sink, None],
    )
    assert chain.run([1, 2], 0) == []
    assert sink.batches == [] and after == []


def test_only_maps_and_only_a_capture():
    assert compile_chain([plan.Map(1, double), plan.Map(2, str)]).run([1, 2], 0) == ["2", "4"]
    sink = ListSink()
    assert compile_chain([plan.Capture(1, TestingOutputConfig([]))], [sink]).run([1], 3) == [1]
    assert sink.batches == [([1], 3)]


def test_a_capture_without_its_sink_is_refused():
    with pytest.raises(ValueError, match=r"capture #1 .* needs its sink"):
        compile_chain([plan.Capture(1, TestingOutputConfig([]))])


def fail_on(bad):
    def fn(x):
        if x == bad:
            raise LookupError(f"no {x}")
        return x

    return fn


@pytest.mark.parametrize(
    "kind",
    ["map", "second map", "third map", "filter", "flat_map", "inspect", "inspect_epoch", "capture"],
)
def test_the_failing_step_is_named_wherever_it_sits(kind):
    """Each kind of step, between others that work, raises on the item 2: the note names it."""
    out: list = []

    def failing_capture(worker_index, worker_count):
        return fail_on(2)

    builders = {
        "map": lambda f: f.map(fail_on(2)),
        "second map": lambda f: (f.map(str), f.map(fail_on("2"))),
        "third map": lambda f: (f.map(str), f.map(int), f.map(fail_on(2))),
        "filter": lambda f: f.filter(lambda x: fail_on(2)(x) is not None),
        "flat_map": lambda f: f.flat_map(lambda x: [fail_on(2)(x)]),
        "inspect": lambda f: f.inspect(fail_on(2)),
        "inspect_epoch": lambda f: f.inspect_epoch(lambda epoch, x: fail_on(2)(x)),
    }
    flow = Dataflow()
    flow.input("inp", TestingInputConfig([1, 2, 3]))
    flow.map(lambda x: x)
    if kind == "capture":
        from millrace.outputs import ManualOutputConfig

        flow.capture(ManualOutputConfig(failing_capture))
        expected = "capture #2 (ManualOutputConfig)"
    else:
        builders[kind](flow)
        flow.map(lambda x: x)
        flow.capture(TestingOutputConfig(out))
        position = {"map": 2, "second map": 3, "third map": 4}.get(kind, 2)
        expected = f"{kind.split()[-1]} #{position}"
    with pytest.raises(LookupError, match="no 2") as info:
        run_main(flow)
    (note,) = info.value.__notes__
    assert note.startswith(f"millrace: raised in {expected}"), note
    assert note.endswith("on worker 0")


def test_a_traceback_shows_the_generated_line():
    chain = compile_chain([plan.Map(1, double), plan.Map(2, fail_on(4))])
    with pytest.raises(LookupError) as info:
        chain.run([1, 2], 0)
    assert chain.step_of(info.value) == "map #2 (fail_on.<locals>.fn)"
    text = "".join(traceback.format_exception(info.value))
    assert "_f1(" in text and "<millrace chain" in text


def test_a_flat_map_result_that_cannot_be_iterated_gets_a_clear_error():
    chain = compile_chain([plan.Map(1, double), plan.FlatMap(2, lambda x: x if x > 2 else [x])])
    with pytest.raises(TypeError) as info:
        chain.run([1, 2], 0)
    error = chain.explain(info.value)
    assert (
        str(error)
        == "flat_map #2 (test_a_flat_map_result_that_cannot_be_iterated_gets_a_clear_error.<locals>.<lambda>)"
        " must return an iterable, got 4 for the item 4"
    )
    assert chain.step_of(error) == chain.names[1]


def test_a_type_error_while_iterating_a_flat_map_result_keeps_its_own_message():
    def bad_generator(x):
        yield x
        raise TypeError("the generator's own mistake")

    chain = compile_chain([plan.FlatMap(1, bad_generator)])
    with pytest.raises(TypeError) as info:
        chain.run([1], 0)
    assert chain.explain(info.value) is info.value
    assert chain.step_of(info.value) == chain.names[0]


def test_epochs_reach_the_capture_of_a_fused_chain():
    out: list = []
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(range(4)))
    flow.flat_map(lambda x: [x] * x)
    flow.filter(lambda x: x != 2)
    flow.capture(TestingEpochOutputConfig(out))
    from millrace.execution import TestingEpochConfig

    run_main(flow, epoch_config=TestingEpochConfig())
    assert out == [(1, 1), (3, 3), (3, 3), (3, 3)]


def test_chains_of_one_shape_share_their_code_and_keep_their_own_names():
    """A process that builds many flows compiles each shape of chain once: the number of
    generated sources (kept in linecache for tracebacks) does not grow with the flows."""
    import linecache

    def above(k):
        return lambda x: x > k

    compile_chain([plan.Map(1, double), plan.Filter(2, above(0))])
    before = len(linecache.cache)
    chains = [compile_chain([plan.Map(1, double), plan.Filter(2 + k, above(k))]) for k in range(50)]
    assert len(linecache.cache) == before
    assert [chain.run([1, 2, 3], 0) for chain in chains[:5]] == [[2, 4, 6], [2, 4, 6], [4, 6], [4, 6], [6]]
    odd = compile_chain([plan.Map(1, double), plan.Filter(7, lambda x: None)])
    with pytest.raises(TypeError, match=r"^filter #7 \(.*<lambda>\) must return a bool, got None for the item 2$"):
        odd.run([1], 0)


# -- a keyed step at the end of the loop ---------------------------------------------------------


def reduce_logic(reducer=lambda a, b: a + b, is_complete=lambda acc: acc >= 10):
    from millrace.runtime.keyed import ReduceLogic

    return ReduceLogic(plan.Reduce("r", reducer, is_complete))


def test_items_go_from_the_last_stateless_step_into_the_keyed_state():
    logic = reduce_logic()
    logic.touched = set()
    chain = compile_chain([plan.Map(1, lambda w: (w, 5)), plan.Filter(2, lambda kv: kv[0] != "x")], keyed=logic)
    assert chain.run(["a", "x", "b", "a"], 0) == [("a", 10)]  # what the reduce emits
    assert logic.state == {"b": 5} and logic.touched == {"a", "b"}
    # The step's own batches run the same code.
    assert logic.on_batch([("b", 5), ("c", 1)]) == [("b", 10)]
    assert logic.state == {"c": 1}


def test_a_batch_emptied_before_the_keyed_step_emits_nothing():
    sink = ListSink()
    logic = reduce_logic()
    chain = compile_chain(
        [plan.Filter(1, lambda x: False), plan.Capture(2, TestingOutputConfig([])), plan.Map(3, lambda x: (x, 1))],
        [None, sink, None],
        keyed=logic,
    )
    assert chain.run([1, 2], 0) == []
    assert sink.batches == [] and logic.state == {}


@pytest.mark.parametrize("bad", [("k",), ("k", 1, 2)])
def test_a_tuple_of_the_wrong_length_from_a_map_is_named_by_the_keyed_step(bad):
    chain = compile_chain([plan.Map(1, lambda x: x)], keyed=reduce_logic())
    with pytest.raises(ValueError) as info:
        chain.run([("ok", 1), bad], 0)
    error = chain.explain(info.value)
    assert isinstance(error, TypeError)
    assert str(error) == (
        f"reduce 'r' needs a (key, value) 2-tuple to route each item to the worker that owns its key, "
        f"got {bad!r} of type tuple"
    )
    assert chain.step_of(error) == "reduce 'r'"


def test_a_value_error_of_the_reducer_stays_its_own_and_names_the_step():
    def reducer(a, b):
        raise ValueError("the reducer's own mistake")

    chain = compile_chain([plan.Map(1, lambda x: x)], keyed=reduce_logic(reducer))
    with pytest.raises(ValueError) as info:
        chain.run([("k", 1), ("k", 2)], 0)
    assert chain.explain(info.value) is info.value
    assert chain.step_of(info.value) == "reduce 'r'"


def test_a_flow_on_one_worker_fuses_and_still_names_every_failure():
    out: list = []
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(["a", "b", "a", "bad"]))
    flow.map(lambda w: (w, 1) if w != "bad" else (w, 1, 2))
    flow.reduce("count", lambda a, b: a + b, lambda acc: False)
    flow.capture(TestingOutputConfig(out))
    with pytest.raises(TypeError, match=r"reduce 'count' needs a \(key, value\) 2-tuple .* \('bad', 1, 2\)") as info:
        run_main(flow)
    assert info.value.__notes__ == ["millrace: raised in reduce 'count' on worker 0"]


def test_a_loop_on_a_cluster_keeps_its_own_keys_and_hands_out_the_rest():
    from millrace.runtime.routing import Router, owner

    words = [f"w{i}" for i in range(40)]
    logic = reduce_logic(is_complete=lambda acc: False)
    chain = compile_chain([plan.Map(1, lambda x: x)], keyed=logic, router=Router(3, me=1))
    items = [(word, 1) for word in words] + [(n, 1) for n in range(-5, 5)]
    emitted, parts = chain.run(items, 0)
    assert emitted == [] and parts[1] == []
    for dest in (0, 2):
        assert parts[dest] == [item for item in items if owner(item[0], 3) == dest]
    assert logic.state == {key: 1 for key, _ in items if owner(key, 3) == 1}
    # A second batch finds the owners it cached, and a bad key is still named by the step.
    assert chain.run(items, 0)[1] == parts
    with pytest.raises(TypeError, match=r"reduce 'r': keys must be str or int, got the key 1\.5 of type float"):
        chain.run([(1.5, 1)], 0)


def test_a_stateful_map_that_forgets_a_key_starts_it_again_from_the_builder():
    from millrace.runtime.keyed import StatefulMapLogic

    built: list = []

    def builder():
        built.append(1)
        return 0

    def mapper(total, value):
        total += value
        return (None if total >= 3 else total), total

    logic = StatefulMapLogic(plan.StatefulMap("s", builder, mapper))
    assert logic.on_batch([("a", 1), ("a", 2), ("a", 1), ("b", 5)]) == [("a", 1), ("a", 3), ("a", 1), ("b", 5)]
    assert logic.state == {"a": 1} and len(built) == 3


# -- counted chains (metrics on) -----------------------------------------------------------------

_STEP_KINDS = {
    "map": lambda position: plan.Map(position, lambda x: x + 1),
    "filter": lambda position: plan.Filter(position, lambda x: x % 3 != 0),
    "flat_map": lambda position: plan.FlatMap(position, lambda x: [x] * (x % 3)),
    "inspect": lambda position: plan.Inspect(position, lambda x: None),
    "capture": lambda position: plan.Capture(position, TestingOutputConfig([])),
}


def _by_hand(kinds: list[str], batch: list[int]) -> list[tuple[int, int]]:
    """Per step, the items in and out, one step at a time over the whole batch."""
    counts = []
    for kind in kinds:
        if kind == "map":
            out = [x + 1 for x in batch]
        elif kind == "filter":
            out = [x for x in batch if x % 3 != 0]
        elif kind == "flat_map":
            out = [y for x in batch for y in [x] * (x % 3)]
        else:
            out = batch
        counts.append((len(batch), len(out)))
        batch = out
    return counts


@settings(max_examples=150, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(sorted(_STEP_KINDS)), max_size=7),
    batches=st.lists(st.lists(st.integers(0, 50), max_size=12), min_size=1, max_size=4),
)
def test_a_counted_chain_counts_each_steps_items_as_running_them_one_by_one_would(kinds, batches):
    steps = [_STEP_KINDS[kind](position) for position, kind in enumerate(kinds, 1)]
    sinks = [ListSink() if kind == "capture" else None for kind in kinds]
    counted = compile_chain(steps, sinks, counted=True)
    plain = compile_chain(steps, [ListSink() if kind == "capture" else None for kind in kinds])
    expected = [(0, 0)] * len(kinds)
    for batch in batches:
        assert counted.run(list(batch), 0) == plain.run(list(batch), 0)
        expected = [(a + c, b + d) for (a, b), (c, d) in zip(expected, _by_hand(kinds, batch), strict=True)]
    assert counted.items() == expected
    assert plain.items() == []


@pytest.mark.parametrize("routed", [False, True])
def test_a_counted_chain_into_a_keyed_step_counts_what_the_step_kept(routed):
    from millrace.runtime.keyed import StatefulMapLogic
    from millrace.runtime.routing import Router

    logic = StatefulMapLogic(plan.StatefulMap("count", lambda: 0, lambda total, one: (total + one, total + one)))
    steps = [plan.FlatMap(1, str.split), plan.Filter(2, lambda word: word != "x"), plan.Map(3, lambda w: (w, 1))]
    router = Router(2, 0) if routed else None
    chain = compile_chain(steps, keyed=logic, router=router, counted=True)
    result = chain.run(["a x b", "c a", "x"], 0)
    emitted, parts = result if routed else (result, [[], []])
    sent = sum(len(part) for part in parts)
    assert len(emitted) == 4 - sent and (sent > 0) == routed
    assert chain.items() == [(3, 6), (6, 4), (4, 4), (4 - sent, 4 - sent)]

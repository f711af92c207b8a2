"""The fused input -> steps -> output loop (runtime/pump.py) and batched inputs
(``ManualInputConfig(batched=True)``): the same output as the item API, the right resume
state, errors that name the input or the step."""

from __future__ import annotations

import operator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from millrace import plan
from millrace.dataflow import Dataflow
from millrace.execution import TestingEpochConfig, run_main
from millrace.inputs import ManualInputConfig
from millrace.outputs import ManualEpochOutputConfig, ManualOutputConfig, TestingOutputConfig
from millrace.recovery import SqliteRecoveryConfig
from millrace.runtime.pump import Pump
from millrace.runtime.sources import BatchReader, ManualReader

batches = st.lists(st.one_of(st.none(), st.lists(st.integers(0, 999), max_size=20)), max_size=60)


def _times10(x: int) -> int:
    return x * 10


def _odd(x: int) -> bool:
    return x % 20 != 0


def _twice(x: int) -> list[int]:
    return [x, x + 1]


STEPS = [plan.Map(1, _times10), plan.Filter(2, _odd), plan.FlatMap(3, _twice)]


def _expected(items: list[int]) -> list[int]:
    return [y for x in items if (x * 10) % 20 != 0 for y in (x * 10, x * 10 + 1)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(0, 999)), max_size=300), st.integers(1, 64), st.booleans())
def test_the_pump_carries_every_pair_in_order_with_its_state(sequence, limit, calls):
    items = [x for x in sequence if x is not None]
    counter = iter(range(1, len(items) + 1))
    yields = [None if x is None else (next(counter), x) for x in sequence]  # state: items so far
    reader = ManualReader("inp", iter(yields), resume_state=0)
    got: list = []
    output = got.append if calls else lambda batch, epoch: got.extend(batch)
    pump = Pump(reader, STEPS, output, calls)
    for _ in range(len(sequence) + 3):
        if reader.exhausted:
            break
        pump.run(limit, 0)
        # The state resumes right after the last item carried, which is out.
        assert got == _expected(items[: reader.state])
    assert reader.exhausted
    assert got == _expected(items)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 40),
    st.sampled_from([7, (1, 2, 3), ("only",), "abc", [1, 2, 3], None]),
    st.integers(1, 64),
    st.booleans(),
)
def test_a_yield_that_does_not_unpack_is_refused_after_the_items_before_it(before, bad, limit, calls):
    # The loop unpacks yields without keeping them: the error still names the input and the
    # state it stopped after, every item before it is out, and a None only pauses.
    yields = [(n, n) for n in range(1, before + 1)] + [bad, (before + 1, before + 1)]
    reader = ManualReader("inp", iter(yields), resume_state=0)
    got: list = []
    output = got.append if calls else lambda batch, epoch: got.extend(batch)
    pump = Pump(reader, [plan.Map(1, _times10)], output, calls)
    if bad is None:
        for _ in range(len(yields) + 3):
            pump.run(limit, 0)
        assert reader.exhausted and got == [n * 10 for n in range(1, before + 2)]
        return
    with pytest.raises(TypeError, match=r"inp: the input builder must yield \(state, item\) 2-tuples or None, got"):
        for _ in range(len(yields) + 3):
            pump.run(limit, 0)
    assert got == [n * 10 for n in range(1, before + 1)]
    assert reader.state == before


def test_a_source_that_raises_a_type_error_is_not_taken_for_a_bad_yield():
    # zip and map are C: the TypeError of ``"x" + 1`` surfaces on the loop's own line, where a
    # yield that does not unpack fails too. It must stay the source's error.
    source = zip(range(1, 4), map(operator.add, [1, 2, "x"], [1, 1, 1]), strict=False)
    reader = ManualReader("inp", source, resume_state=0)
    got: list = []
    pump = Pump(reader, [plan.Map(1, _times10)], got.append)
    with pytest.raises(TypeError, match="can only concatenate str") as info:
        for _ in range(5):
            pump.run(100, 0)
    assert "must yield" not in str(info.value)
    assert got == [20, 30] and reader.state == 2


def _batched_flow(batch_list: list, out: list, batched: bool) -> Dataflow:
    def build(worker_index, worker_count, resume_state):
        for n, batch in enumerate(batch_list):
            if batch is None:
                yield None
            elif batched:
                yield n + 1, batch
            else:
                for x in batch:
                    yield n + 1, x

    flow = Dataflow()
    flow.input("inp", ManualInputConfig(build, batched=batched))
    flow.map(_times10)
    flow.filter(_odd)
    flow.flat_map(_twice)
    flow.capture(TestingOutputConfig(out))
    return flow


@settings(max_examples=100, deadline=None)
@given(batches, st.sampled_from([None, TestingEpochConfig()]))
def test_batches_give_the_same_output_as_the_same_items_one_by_one(batch_list, epochs):
    by_batch: list = []
    by_item: list = []
    run_main(_batched_flow(batch_list, by_batch, batched=True), epoch_config=epochs)
    run_main(_batched_flow(batch_list, by_item, batched=False), epoch_config=epochs)
    assert by_batch == by_item == _expected([x for b in batch_list if b for x in b])


@settings(max_examples=100, deadline=None)
@given(batches, st.integers(1, 64))
def test_the_batch_reader_and_the_batched_pump_agree(batch_list, limit):
    """The reader (a batched input before a stateful step) and the pump hand out the same
    items, and end with the same state."""
    real = [(n + 1, b) for n, b in enumerate(batch_list)]
    yields = [None if b is None else (n, b) for n, b in real]
    reader = BatchReader("inp", iter(yields), None)
    read: list = []
    while not reader.exhausted:
        read += reader.read(limit)
    pumped: list = []
    pump_reader = BatchReader("inp", iter(yields), None)
    pump = Pump(pump_reader, [], pumped.append)
    while not pump_reader.exhausted:
        pump.run(limit, 0)
    assert read == pumped == [x for _, b in real if b for x in b]
    assert reader.state == pump_reader.state


@pytest.mark.parametrize("stateful", [False, True], ids=["pump", "reader"])
@pytest.mark.parametrize("bad", [7, (1, 2, 3), ("s", (1, 2)), ("s", "ab"), [1, [2]]])
def test_a_batched_builder_that_yields_no_list_is_refused_naming_the_input(bad, stateful):
    def build(worker_index, worker_count, resume_state):
        yield 1, [1, 2]
        yield bad

    flow = Dataflow()
    flow.input("inp", ManualInputConfig(build, batched=True))
    if stateful:
        flow.map(lambda x: ("k", x))
        flow.reduce("sum", lambda a, b: a + b, lambda acc: False)
    out: list = []
    flow.capture(TestingOutputConfig(out))
    with pytest.raises(TypeError, match=r"input 'inp': the batched input builder must yield \(state, list of items\)"):
        run_main(flow)
    if not stateful:
        assert out == [1, 2]  # the batch before the bad yield went through


def test_batched_must_be_a_bool():
    with pytest.raises(TypeError, match="ManualInputConfig batched must be True or False, got 'yes'"):
        ManualInputConfig(lambda i, n, s: [], batched="yes")  # type: ignore[arg-type]


class SourceFailed(Exception):
    pass


def _failing_batches(fail_after: int | None, count: int = 6):
    """Batches ``[3n, 3n+1, 3n+2]`` from the resume state (a batch number) on, raising
    after ``fail_after`` batches."""

    def build(worker_index, worker_count, resume_state):
        for n in range(resume_state or 0, count):
            if n == fail_after:
                raise SourceFailed(f"failed before batch {n}")
            yield n + 1, [3 * n, 3 * n + 1, 3 * n + 2]

    return build


@pytest.mark.parametrize("stateful", [False, True], ids=["pump", "reader"])
def test_every_batch_before_a_source_error_reaches_the_output(stateful):
    flow = Dataflow()
    flow.input("inp", ManualInputConfig(_failing_batches(3), batched=True))
    if stateful:
        flow.map(lambda x: ("k", x))
        flow.stateful_map("id", lambda: None, lambda s, x: (s, x))
    out: list = []
    flow.capture(TestingOutputConfig(out))
    with pytest.raises(SourceFailed) as info:
        run_main(flow)
    assert [x[1] if stateful else x for x in out] == list(range(9))
    assert info.value.__notes__ == ["millrace: raised in input 'inp' on worker 0"]


@pytest.mark.parametrize("epochs", ["periodic", "testing"])
def test_a_batched_input_resumes_after_the_last_complete_epoch(tmp_path, epochs):
    """With one epoch per batch, the resumed run starts at the batch that failed; with one
    epoch for everything, it starts over."""

    def flow_failing_at(fail_after, out):
        flow = Dataflow()
        flow.input("inp", ManualInputConfig(_failing_batches(fail_after), batched=True))
        flow.capture(ManualEpochOutputConfig(lambda worker_index, worker_count: out.append))
        return flow

    epoch_config = TestingEpochConfig() if epochs == "testing" else None
    recovery = SqliteRecoveryConfig(tmp_path)
    first: list = []
    with pytest.raises(SourceFailed):
        run_main(flow_failing_at(4, first), epoch_config=epoch_config, recovery_config=recovery)
    assert [x for _, x in first] == list(range(12))
    resumed: list = []
    run_main(flow_failing_at(None, resumed), epoch_config=epoch_config, recovery_config=recovery)
    if epochs == "testing":  # epochs 0-3 (batches 0-3) finished: resumed at batch 4
        assert first == [(x // 3, x) for x in range(12)]
        assert resumed == [(x // 3, x) for x in range(12, 18)]
    else:  # everything in epoch 0, which failed
        assert resumed == [(0, x) for x in range(18)]


def test_a_step_error_in_the_pump_names_the_step():
    def explode(x):
        raise KeyError(x)

    flow = Dataflow()
    flow.input("inp", ManualInputConfig(lambda i, n, s: iter([(1, 1), (2, 2)])))
    flow.map(explode)
    flow.capture(ManualOutputConfig(lambda i, n: print))
    with pytest.raises(KeyError) as info:
        run_main(flow)
    assert info.value.__notes__[0].startswith("millrace: raised in map #1 (")


@pytest.mark.parametrize("batched_input", [False, True])
@pytest.mark.parametrize("output", ["per item", "per list", "testing"])
def test_every_item_before_a_step_error_reaches_the_output(batched_input, output):
    # As when items go one at a time (Bytewax 0.15): the run fails on item 1500 (in the middle
    # of a call of the fused loop, whose calls have grown to 1,024 items), after 0..1499.
    def check(x):
        if x == 1500:
            raise ValueError("1500")
        return x

    def build(worker_index, worker_count, resume_state):
        if batched_input:
            return ((end, list(range(end - 100, end))) for end in range(100, 3001, 100))
        return ((x + 1, x) for x in range(3000))

    got: list = []
    flow = Dataflow()
    flow.input("inp", ManualInputConfig(build, batched=batched_input))
    flow.map(check)
    if output == "testing":
        flow.capture(TestingOutputConfig(got))
    else:
        per_list = output == "per list"
        flow.capture(ManualOutputConfig(lambda i, n: got.extend if per_list else got.append, batched=per_list))
    with pytest.raises(ValueError, match="1500"):
        run_main(flow)
    assert got == list(range(1500))


@pytest.mark.parametrize("batched", [False, True])
def test_the_pump_checks_what_the_steps_return(batched):
    def build(worker_index, worker_count, resume_state):
        yield (1, [1, 2]) if batched else (1, 1)

    flow = Dataflow()
    flow.input("inp", ManualInputConfig(build, batched=batched))
    flow.flat_map(lambda x: 3)
    flow.capture(TestingOutputConfig([]))
    with pytest.raises(TypeError, match=r"flat_map #1 .* must return an iterable, got 3"):
        run_main(flow)
    flow = Dataflow()
    flow.input("inp", ManualInputConfig(build, batched=batched))
    flow.filter(lambda x: None)
    flow.capture(TestingOutputConfig([]))
    with pytest.raises(TypeError, match=r"filter #1 .* must return a bool, got None"):
        run_main(flow)


def test_an_epoch_output_gets_each_item_with_its_epoch_from_the_pump():
    out: list = []
    flow = Dataflow()
    flow.input("inp", ManualInputConfig(lambda i, n, s: iter([(1, 1), (2, 2), (3, 3)])))
    flow.capture(ManualEpochOutputConfig(lambda worker_index, worker_count: out.append))
    run_main(flow, epoch_config=TestingEpochConfig())
    assert out == [(0, 1), (1, 2), (2, 3)]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 999), max_size=300), st.integers(1, 64), st.booleans(), st.booleans())
def test_the_pump_counts_bare_items_as_the_testing_reader_does(items, limit, calls, fail):
    """TestingInputConfig's reader: the resume state is how many items were carried, also
    when the source fails (the items before the failure are out, the error comes next)."""
    from millrace.runtime.sources import TestingReader

    def source():
        yield from items
        if fail:
            raise SourceFailed("the source failed")

    reader = TestingReader("inp", iter(source()), 0)
    got: list = []
    pump = Pump(reader, STEPS, got.append if calls else lambda batch, epoch: got.extend(batch), calls)
    raised = False
    for _ in range(len(items) + 3):
        if reader.exhausted:
            break
        try:
            pump.run(limit, 0)
        except SourceFailed:
            raised = True
            break
        assert got == _expected(items[: reader.state])
    assert raised == fail
    assert reader.state == len(items)
    assert got == _expected(items)


def test_a_step_may_run_a_flow_of_its_own_that_writes_to_stdout(capsys):
    """The fused loop holds the output lock while it calls the steps: a step that runs a
    nested flow printing to stdout takes it again in the same thread."""
    from millrace.inputs import TestingInputConfig
    from millrace.outputs import StdOutputConfig

    def nested(x):
        inner = Dataflow()
        inner.input("inner", TestingInputConfig([x]))
        inner.capture(StdOutputConfig())
        run_main(inner)
        return x

    out: list = []
    flow = Dataflow()
    flow.input("inp", ManualInputConfig(lambda i, n, s: iter([(1, "a"), (2, "b")])))
    flow.map(nested)
    flow.capture(ManualOutputConfig(lambda i, n: out.append))
    run_main(flow)
    assert out == ["a", "b"]
    assert capsys.readouterr().out == "a\nb\n"

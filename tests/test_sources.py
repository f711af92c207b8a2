"""The input reader: every pair in order, the right resume state, and pauses at ``None``."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from millrace.runtime.sources import ManualReader

yields = st.lists(st.one_of(st.none(), st.integers(0, 999).map(lambda i: (f"s{i}", i))), max_size=300)


@settings(max_examples=300, deadline=None)
@given(yields, st.integers(1, 64))
def test_every_pair_comes_out_once_in_order_with_its_state(sequence, limit):
    reader = ManualReader("inp", iter(sequence), resume_state="start")
    pairs = [x for x in sequence if x is not None]
    got: list = []
    reads = 0
    while not reader.exhausted:
        batch = reader.read(limit)
        assert len(batch) <= limit
        got += batch
        # The state resumes right after the last item handed out.
        assert reader.state == (pairs[len(got) - 1][0] if got else "start")
        reads += 1
        assert reads <= len(sequence) + 2, "the reader does not make progress"
    assert got == [item for _, item in pairs]


def test_a_none_pauses_the_batch():
    reader = ManualReader("inp", iter([("a", 1), ("b", 2), None, ("c", 3)]), None)
    assert reader.read(100) == [1, 2]
    assert reader.read(100) == [3]
    assert reader.exhausted


@pytest.mark.parametrize("bad", [("only one",), ["s", 1], 7, ("a", "b", "c")])
def test_a_malformed_yield_names_the_input_and_the_value(bad):
    reader = ManualReader("inp", iter([("a", 1), ("b", 2), bad]), None)
    with pytest.raises(TypeError, match=r"inp: the input builder must yield \(state, item\) 2-tuples or None, got"):
        while not reader.exhausted:
            reader.read(100)


class Boom(Exception):
    pass


def _then_raise(sequence):
    yield from sequence
    raise Boom("the source failed")


def _read_until_error(reader, limit):
    """Every batch until the reader raises; the error must come, and only once."""
    got: list = []
    states: list = []
    for _ in range(10_000):
        try:
            batch = reader.read(limit)
        except Boom:
            assert reader.exhausted and reader.read(limit) == [], "a failed source gives nothing more"
            return got, states
        got += batch
        states.append((len(got), reader.state))
    raise AssertionError("the reader never raised the source's error")


@settings(max_examples=300, deadline=None)
@given(yields, st.integers(1, 64))
def test_a_manual_source_that_raises_gives_every_item_before_the_error(sequence, limit):
    """Bytewax pulls one item at a time: every item before the error flows on."""
    reader = ManualReader("inp", _then_raise(sequence), resume_state="start")
    pairs = [x for x in sequence if x is not None]
    got, states = _read_until_error(reader, limit)
    assert got == [item for _, item in pairs]
    # After each batch, the state resumes right after the last item handed out.
    assert all(state == (pairs[n - 1][0] if n else "start") for n, state in states)
    assert reader.state == (pairs[-1][0] if pairs else "start")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(), max_size=300), st.integers(1, 64))
def test_a_testing_source_that_raises_gives_every_item_before_the_error(items, limit):
    from millrace.runtime.sources import TestingReader

    reader = TestingReader("inp", _then_raise(items), resume_state=0)
    got, _ = _read_until_error(reader, limit)
    assert got == items
    assert reader.state == len(items)  # the resume state counts exactly the items handed out


def test_a_malformed_yield_comes_after_the_items_before_it():
    reader = ManualReader("inp", iter([("a", 1), ("b", 2), 7, ("c", 3)]), None)
    assert reader.read(100) == [1, 2]
    assert reader.state == "b"
    with pytest.raises(TypeError, match=r"got 7"):
        reader.read(100)

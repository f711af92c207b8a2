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

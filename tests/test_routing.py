"""Routing keyed items to their owners: the batch path and the item-by-item path agree."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from millrace.runtime.routing import Router, owner

keys = st.one_of(st.text(max_size=6), st.integers(-(10**12), 10**12))
batches = st.lists(st.tuples(keys, st.integers()), max_size=200)


@settings(max_examples=300, deadline=None)
@given(batches, st.integers(1, 12))
def test_each_item_goes_to_its_owner_in_order(batch, workers):
    router = Router(workers)
    parts = router.split(batch, "reduce 'r'")
    assert parts == router._split_each(batch, "reduce 'r'")
    assert parts == [[item for item in batch if owner(item[0], workers) == w] for w in range(workers)]
    # A second time, from the owner cache.
    assert router.split(batch, "reduce 'r'") == parts


@pytest.mark.parametrize("bad", [(1.5, 1), (True, 1), ((1, 2), 3), (None, 1), (), 5, None])
def test_an_item_that_cannot_be_routed_is_named_with_its_step(bad):
    with pytest.raises(TypeError, match="reduce 'r'"):
        Router(2).split([("a", 1), bad, ("b", 2)], "reduce 'r'")


@pytest.mark.parametrize("bad", [("k",), ("k", 1, 2), ["k", 1], "k1"])
def test_an_item_with_a_routable_first_element_goes_to_its_owner(bad):
    # The receiving step rejects it (tests/test_api.py::test_a_stateful_step_names_the_bad_item).
    parts = Router(2).split([("a", 1), bad], "reduce 'r'")
    assert bad in parts[owner("k", 2)]

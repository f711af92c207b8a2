"""Property-based differential test: random pipelines against a plain-Python model of each
operator's semantics.

Every step emits in the order of its input, item by item, so on one worker the engine's
batch-at-a-time output must equal the model's item-at-a-time output exactly, list for list.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from millrace.dataflow import Dataflow
from millrace.execution import TestingEpochConfig, run_main
from millrace.inputs import TestingInputConfig
from millrace.outputs import TestingOutputConfig

# (name, add the step to a flow, model: item, state dict -> list of outputs)
MAPS = {
    "double": lambda kv: (kv[0], kv[1] * 2),
    "swap_key": lambda kv: (kv[1] % 3, kv[1]),
    "str_key": lambda kv: (f"k{kv[0]}", kv[1]),
}
FILTERS = {"even": lambda kv: kv[1] % 2 == 0, "positive": lambda kv: kv[1] > 0}
FLAT_MAPS = {"twice": lambda kv: [kv, (kv[0], kv[1] + 1)], "none_if_big": lambda kv: [] if kv[1] > 5 else [kv]}


def reduce_model(state: dict, key: Any, value: Any, limit: int) -> list:
    acc = state[key] + value if key in state else value
    if acc >= limit:
        state.pop(key, None)
        return [(key, acc)]
    state[key] = acc
    return []


def stateful_map_model(state: dict, key: Any, value: Any) -> list:
    count = state.get(key, 0) + 1
    if count == 3:
        state.pop(key, None)
    else:
        state[key] = count
    return [(key, value * 10 + count)]


step_strategy = st.one_of(
    st.tuples(st.just("map"), st.sampled_from(sorted(MAPS))),
    st.tuples(st.just("filter"), st.sampled_from(sorted(FILTERS))),
    st.tuples(st.just("flat_map"), st.sampled_from(sorted(FLAT_MAPS))),
    st.tuples(st.just("reduce"), st.integers(min_value=1, max_value=12)),
    st.tuples(st.just("stateful_map"), st.just(None)),
)
items_strategy = st.lists(
    st.tuples(st.one_of(st.integers(-3, 3), st.sampled_from(["a", "b", "c"])), st.integers(-5, 9)),
    max_size=40,
)


def build(steps: list, items: list, out: list) -> Dataflow:
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(items))
    for index, (kind, arg) in enumerate(steps):
        if kind == "map":
            flow.map(MAPS[arg])
        elif kind == "filter":
            flow.filter(FILTERS[arg])
        elif kind == "flat_map":
            flow.flat_map(FLAT_MAPS[arg])
        elif kind == "reduce":
            flow.reduce(f"r{index}", lambda acc, v: acc + v, lambda acc, limit=arg: acc >= limit)
        else:
            flow.stateful_map(
                f"s{index}",
                lambda: 0,
                lambda n, v: (None if n + 1 == 3 else n + 1, v * 10 + n + 1),
            )
    flow.capture(TestingOutputConfig(out))
    return flow


def model(steps: list, items: list) -> list:
    states: list[dict] = [{} for _ in steps]
    out = []
    for item in items:
        stream = [item]
        for index, (kind, arg) in enumerate(steps):
            nxt: list = []
            for kv in stream:
                if kind == "map":
                    nxt.append(MAPS[arg](kv))
                elif kind == "filter":
                    nxt += [kv] if FILTERS[arg](kv) else []
                elif kind == "flat_map":
                    nxt += FLAT_MAPS[arg](kv)
                elif kind == "reduce":
                    nxt += reduce_model(states[index], kv[0], kv[1], arg)
                else:
                    nxt += stateful_map_model(states[index], kv[0], kv[1])
            stream = nxt
        out += stream
    return out


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(step_strategy, max_size=6), items=items_strategy, per_item=st.booleans())
def test_engine_matches_the_model(steps, items, per_item):
    out: list = []
    run_main(build(steps, items, out), epoch_config=TestingEpochConfig() if per_item else None)
    assert out == model(steps, items)

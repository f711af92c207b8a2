"""The keyed steps' per-item code: every template keeps to the names the generated loop gives
it and compiles in every shape of loop, and an error raised in a user function called from the
generated loop still names that function and the step."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import traceback
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import millrace.runtime
from millrace import plan
from millrace.dataflow import Dataflow
from millrace.execution import cluster_main, run_main
from millrace.inputs import TestingInputConfig
from millrace.outputs import TestingOutputConfig
from millrace.runtime import chain
from millrace.runtime.errors import where
from millrace.runtime.keyed import ReduceLogic, StatefulMapLogic
from millrace.runtime.loop_code import LOOP_NAMES, LoopCode, check_loop_code, is_loop_own
from millrace.runtime.system_windows import SystemClockWindowLogic
from millrace.window import SystemClockConfig, TumblingWindowConfig

HOUR = TumblingWindowConfig(timedelta(hours=1))
HOUR_START = datetime(2024, 1, 1, tzinfo=timezone.utc)


def every_template() -> dict[str, LoopCode]:
    """Every LoopCode in the runtime's modules, as a module or class attribute or in a dict,
    by kind: a new keyed step's template is found without being listed here."""
    found: dict[str, LoopCode] = {}

    def collect(value: Any) -> None:
        if isinstance(value, LoopCode):
            found[value.kind] = value
        elif isinstance(value, dict):
            for item in value.values():
                collect(item)

    for info in pkgutil.iter_modules(millrace.runtime.__path__):
        module = importlib.import_module(f"millrace.runtime.{info.name}")
        for value in vars(module).values():
            collect(value)
            if isinstance(value, type):
                for attribute in vars(value).values():
                    collect(attribute)
    return found


TEMPLATES = every_template()


def test_every_keyed_step_has_a_template_found_here() -> None:
    assert set(TEMPLATES) >= {"reduce", "stateful_map", "reduce_window", "fold_window", "collect_window"}


def logic_of(kind: str) -> Any:
    """A logic object of ``kind``: what the template sees as ``_k``."""
    add = lambda a, b: a + b  # noqa: E731
    window = {"clock": SystemClockConfig(), "window": HOUR}
    return {
        "reduce": lambda: ReduceLogic(plan.Reduce("r", add, bool)),
        "stateful_map": lambda: StatefulMapLogic(plan.StatefulMap("s", list, add)),
        "reduce_window": lambda: SystemClockWindowLogic(plan.ReduceWindow("w", reducer=add, **window), HOUR_START),
        "fold_window": lambda: SystemClockWindowLogic(
            plan.FoldWindow("w", builder=list, folder=add, **window), HOUR_START
        ),
        "collect_window": lambda: SystemClockWindowLogic(plan.CollectWindow("w", **window), HOUR_START),
    }[kind]()


SHAPES = [
    (),
    ("map",),
    ("map", "map"),
    ("filter",),
    ("flat_map", "inspect"),
    ("map", "capture", "inspect_epoch"),
    ("capture",),
]


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_every_template_compiles_in_every_shape_of_loop(kind: str) -> None:
    code = TEMPLATES[kind]
    attributes = check_loop_code(code)
    logic = logic_of(kind)
    assert logic.loop_code is code
    missing = [name for name in attributes if not hasattr(logic, name)]
    assert not missing, f"{kind} uses _k.{missing}, which {type(logic).__name__} lacks"
    for shape in SHAPES:
        for routed in (False, True):
            template = chain._template(shape, code, routed)
            assert template.factory is not None
            # Only what the generated module and the builtins give is read as a global.
            assert chain._globals_read(compile("\n".join(template.lines), "<t>", "exec")) <= {
                "MISSING",
                "type",
                "tuple",
                "str",
                "int",
                "range",
                "len",
                "KeyError",
            }


def test_the_table_names_every_name_the_loop_binds_for_itself() -> None:
    """LOOP_OWN_NAMES keeps up with chain.py: a name the loop binds that keyed code could
    also bind would let a template corrupt the loop unnoticed."""
    code = LoopCode("probe", ("_emit = []",), ("_emit.append(_key)",))
    every_kind = ("map", "filter", "flat_map", "inspect", "inspect_epoch", "capture", "map", "flat_map")
    for routed in (False, True):
        tree = ast.parse("".join(line + "\n" for line in chain._template(every_kind, code, routed).lines))
        bound = {
            node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load)
        }
        bound |= {node.arg for node in ast.walk(tree) if isinstance(node, ast.arg)}
        bound |= {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        unlisted = {name for name in bound - {"_emit"} if not is_loop_own(name) and name not in LOOP_NAMES}
        assert not unlisted


@pytest.mark.parametrize(
    "setup, per_key, problem",
    [
        (("_emit = []",), ("_total += _valeu",), r"per_key line 1 \('_total \+= _valeu'\): reads '_valeu'"),
        (("_emit = []",), ("_key = str(_key)",), r"binds '_key', which the loop gives it"),
        (("_emit = []",), ("_touched = None",), r"binds '_touched', which the loop uses for itself"),
        (("_emit = []",), ("_f0 = _value",), r"binds '_f0', which the loop uses for itself"),
        (
            ("_emit = []",),
            ("if _value is None:", "    continue"),
            r"per_key line 2 .* does not compile: 'continue' not properly in loop",
        ),
        (("_emit = []",), ("return _emit",), r"a Return statement has no place in the loop"),
        (("_emit = []",), ("import os",), r"a Import statement"),
        (("_emit = []",), ("total = _value",), r"binds 'total': the code's own names start with '_'"),
        (("_emit = []", "_first = _key"), ("pass",), r"setup line 2 .* reads '_key' in setup"),
        (("_state = _k.state",), ("_state[_key] = _value",), r"setup must bind _emit"),
        (("_emit = [",), ("pass",), r"setup line 1 .* does not compile"),
    ],
)
def test_a_template_that_breaks_the_rules_is_refused_when_made(
    setup: tuple[str, ...], per_key: tuple[str, ...], problem: str
) -> None:
    with pytest.raises(ValueError, match=rf"^loop code of bad(, | |:).*{problem}"):
        LoopCode("bad", setup, per_key)


# -- an error in a user function called from the generated loop ---------------------------------


class Angry(Exception):
    pass


def angry_reducer(acc: int, value: int) -> int:
    if value == 3:
        raise Angry("the reducer's own")
    return acc + value


def angry_is_complete(acc: int) -> bool:
    if acc == 4:
        raise Angry("is_complete's own")
    return False


def angry_builder() -> Any:
    raise Angry("the builder's own")


def angry_mapper(state: Any, value: int) -> tuple[Any, Any]:
    if value == 3:
        raise Angry("the mapper's own")
    return state, value


def add(a: int, b: int) -> int:
    return a + b


def never(acc: Any) -> bool:
    return False


# (step name, the user function that raises, the name the loop calls it by, how to add the step)
CASES: dict[str, tuple[str, Callable[..., Any], str, Callable[[Dataflow], None]]] = {
    "reduce/reducer": ("reduce 'r'", angry_reducer, "_reducer", lambda f: f.reduce("r", angry_reducer, never)),
    "reduce/is_complete": (
        "reduce 'r'",
        angry_is_complete,
        "_is_complete",
        lambda f: f.reduce("r", add, angry_is_complete),
    ),
    "stateful_map/builder": (
        "stateful_map 's'",
        angry_builder,
        "_builder",
        lambda f: f.stateful_map("s", angry_builder, angry_mapper),
    ),
    "stateful_map/mapper": (
        "stateful_map 's'",
        angry_mapper,
        "_mapper",
        lambda f: f.stateful_map("s", lambda: 0, angry_mapper),
    ),
    "reduce_window/reducer": (
        "reduce_window 'w'",
        angry_reducer,
        "_reducer",
        lambda f: f.reduce_window("w", SystemClockConfig(), HOUR, angry_reducer),
    ),
    "fold_window/builder": (
        "fold_window 'w'",
        angry_builder,
        "_builder",
        lambda f: f.fold_window("w", SystemClockConfig(), HOUR, angry_builder, add),
    ),
    "fold_window/folder": (
        "fold_window 'w'",
        angry_reducer,
        "_folder",
        lambda f: f.fold_window("w", SystemClockConfig(), HOUR, lambda: 0, angry_reducer),
    ),
}


def flow_of(add_step: Callable[[Dataflow], None], with_map: bool) -> Dataflow:
    flow = Dataflow()
    flow.input("inp", TestingInputConfig([("a", 1), ("b", 2), ("a", 3), ("c", 3), (7, 3)]))
    if with_map:  # the keyed code runs in the loop of the map; without, in a loop of its own
        flow.map(lambda kv: kv)
    add_step(flow)
    flow.capture(TestingOutputConfig([]))
    return flow


def raised(run: Callable[[Dataflow], None], flow: Dataflow) -> BaseException:
    with pytest.raises(Angry) as info:
        run(flow)
    return info.value


RUNS: dict[str, Callable[[Dataflow], None]] = {
    "one worker": run_main,
    # Two workers route: an item runs in the loop that read it or, sent, in the owner's own.
    "two workers": lambda flow: cluster_main(flow, [], 0, worker_count_per_proc=2),
}


@pytest.mark.parametrize("with_map", [True, False], ids=["after a map", "alone"])
@pytest.mark.parametrize("run", RUNS, ids=list(RUNS))
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_an_error_in_a_user_function_names_the_function_and_the_step(case: str, run: str, with_map: bool) -> None:
    step, user_fn, called_as, add_step = CASES[case]
    exc = raised(RUNS[run], flow_of(add_step, with_map))
    # Its own type, with the note that names the step and the worker.
    assert type(exc) is Angry
    assert re.fullmatch(rf"raised in {re.escape(step)} on worker [01]", where(exc) or "")
    frames = traceback.extract_tb(exc.__traceback__)
    # The innermost frame is the user's function, called from the generated loop, whose line
    # (kept in linecache) shows the call.
    assert frames[-1].name == user_fn.__name__ and frames[-1].filename == __file__
    kind = step.split()[0]
    assert re.fullmatch(rf"<millrace chain: (.* -> )?{kind}( \(routed\))?>", frames[-2].filename)
    assert frames[-2].line and f"{called_as}(" in frames[-2].line
    text = "".join(traceback.format_exception(exc))
    assert f"in {user_fn.__name__}" in text and f"millrace: raised in {step} on worker" in text

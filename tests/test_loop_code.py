"""The keyed steps' per-item code: every template keeps to the names the generated loop gives
it and compiles in every shape of loop."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import millrace.runtime
from millrace import plan
from millrace.runtime import chain
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
        "fold_window": lambda: SystemClockWindowLogic(plan.FoldWindow("w", builder=list, folder=add, **window), HOUR_START),
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
                "MISSING", "type", "tuple", "str", "int", "range", "len", "KeyError",
            }


def test_the_table_names_every_name_the_loop_binds_for_itself() -> None:
    """LOOP_OWN_NAMES keeps up with chain.py: a name the loop binds that keyed code could
    also bind would let a template corrupt the loop unnoticed."""
    code = LoopCode("probe", ("_emit = []",), ("_emit.append(_key)",))
    every_kind = ("map", "filter", "flat_map", "inspect", "inspect_epoch", "capture", "map", "flat_map")
    for routed in (False, True):
        tree = ast.parse("".join(line + "\n" for line in chain._template(every_kind, code, routed).lines))
        bound = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load)}
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
        (("_emit = []",), ("if _value is None:", "    continue"), r"per_key line 2 .* does not compile: 'continue' not properly in loop"),
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


"""The stateless steps between two stateful steps, fused into one batch function.

A run of ``map``, ``filter``, ``flat_map``, ``inspect`` and ``inspect_epoch`` becomes a single
generated Python loop that carries each item through every step before the next item starts:
no list per step, and each user function is called from Python bytecode, which CPython 3.11
does without a C-level call (``list(map(fn, batch))`` pays for one per item). A ``capture``
ends the loop: it writes the batch built so far, and a new loop carries it on.

The happy path has no bookkeeping of which step runs. When something raises, the generated
function's line number in the traceback says which step it was (every line belongs to one
step), and the failing frame's locals give the value an error message shows.

>>> from millrace import plan
>>> chain = compile_chain([plan.Map(1, lambda x: x * 10), plan.Filter(2, lambda x: x > 10)])
>>> chain.run([1, 2, 3], 0)
[20, 30]
>>> try:
...     chain.run([1, "a"], 0)
... except TypeError as exc:
...     print(chain.step_of(exc))
filter #2 (<lambda>)
"""

from __future__ import annotations

import linecache
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from types import TracebackType
from typing import Any

from .. import plan
from .errors import describe
from .sinks import Sink

Batch = list[Any]
BatchFn = Callable[[Batch, int], Batch]

_KINDS: dict[type, str] = {
    plan.Map: "map",
    plan.Filter: "filter",
    plan.FlatMap: "flat_map",
    plan.Inspect: "inspect",
    plan.InspectEpoch: "inspect_epoch",
    plan.Capture: "capture",
}


def _not_bool(step_name: str, verdict: Any, item: Any) -> TypeError:
    return TypeError(
        f"{step_name} must return a bool, got {describe(verdict)} for the item {describe(item)}"
    )


def _not_iterable(step_name: str, result: Any, item: Any) -> TypeError:
    return TypeError(
        f"{step_name} must return an iterable, got {describe(result)} for the item {describe(item)}"
    )


@dataclass
class _Template:
    """The generated code for one sequence of step kinds, shared by every chain of that shape
    (so a process that builds many flows compiles, and keeps in ``linecache``, each shape once).

    ``factory(_not_bool, names, *fns)`` returns the batch function. Per line of the source:
    the index of the step it belongs to; per step: the variable holding its input item; per
    flat_map: the line of the ``for`` that iterates its result (where a non-iterable fails)."""

    kinds: tuple[str, ...]
    lines: list[str] = field(default_factory=list)
    step_at: list[int | None] = field(default_factory=list)
    input_of: dict[int, str] = field(default_factory=dict)
    iterated_at: dict[int, int] = field(default_factory=dict)
    filename: str = ""
    factory: Callable[..., BatchFn] | None = None

    def add(self, depth: int, text: str, step: int | None = None) -> int:
        """Append a line; return its line number (1-based, as tracebacks count)."""
        self.lines.append("    " * depth + text)
        self.step_at.append(step)
        return len(self.lines)


@lru_cache(maxsize=256)
def _template(kinds: tuple[str, ...]) -> _Template:
    t = _Template(kinds)
    params = "".join(f", _f{index}" for index in range(len(kinds)))
    t.add(0, f"def _factory(_not_bool, _names{params}):")
    t.add(1, "def run(batch, epoch):")
    pending: list[int] = []  # item steps not yet written out
    for index, kind in enumerate(kinds):
        if kind == "capture":
            _write_items(t, pending)
            pending = []
            t.add(2, "if not batch: return batch")
            t.add(2, f"_f{index}(batch, epoch)", index)
        else:
            pending.append(index)
    _write_items(t, pending)
    t.add(2, "return batch")
    t.add(1, "return run")
    t.filename = f"<millrace chain: {' -> '.join(kinds)}>"
    lines = [line + "\n" for line in t.lines]
    # Registered so that a traceback through a chain shows its lines.
    linecache.cache[t.filename] = (sum(map(len, lines)), None, lines, t.filename)
    namespace: dict[str, Any] = {}
    exec(compile("".join(lines), t.filename, "exec"), namespace)
    t.factory = namespace["_factory"]
    return t


def _write_items(t: _Template, indices: list[int]) -> None:
    """Lines that take ``batch`` through the item steps at ``indices``."""
    if not indices:
        return
    if all(t.kinds[index] == "map" for index in indices):
        # Only maps: a comprehension of nested calls, each call on its own line so that a
        # traceback still tells them apart.
        t.add(2, "batch = [")
        for index in reversed(indices):
            t.add(3, f"_f{index}(", index)
        t.add(3, "_item" + ")" * len(indices))
        t.add(3, "for _item in batch]")
        return
    t.add(2, "_out = []")
    t.add(2, "for _item in batch:")
    depth, item = 3, "_item"
    for index in indices:
        kind = t.kinds[index]
        t.input_of[index] = item
        if kind == "map":
            t.add(depth, f"_i{index} = _f{index}({item})", index)
            item = f"_i{index}"
        elif kind == "filter":
            t.add(depth, f"_keep = _f{index}({item})", index)
            t.add(depth, "if _keep is not True:", index)
            t.add(depth + 1, "if _keep is False: continue", index)
            t.add(depth + 1, f"raise _not_bool(_names[{index}], _keep, {item})", index)
        elif kind == "flat_map":
            t.add(depth, f"_r{index} = _f{index}({item})", index)
            t.iterated_at[t.add(depth, f"for _i{index} in _r{index}:", index)] = index
            depth += 1
            item = f"_i{index}"
        elif kind == "inspect":
            t.add(depth, f"_f{index}({item})", index)
        else:
            t.add(depth, f"_f{index}(epoch, {item})", index)
    t.add(depth, f"_out.append({item})")
    t.add(2, "batch = _out")


class Chain:
    """One compiled run of stateless steps: ``run(batch, epoch)`` returns the batch that comes
    out of the last step; :meth:`step_of` and :meth:`explain` turn an exception from ``run``
    into the step it came from and the message it deserves.
    """

    def __init__(self, steps: Sequence[plan.Step], sinks: Sequence[Sink | None] = ()) -> None:
        self.names = tuple(step.name for step in steps)
        fns: list[Any] = []
        for index, step in enumerate(steps):
            if isinstance(step, plan.Capture):
                sink = sinks[index] if index < len(sinks) else None
                if sink is None:
                    raise ValueError(f"{step.name} needs its sink")
                fns.append(sink.write)
            elif type(step) in _KINDS:
                fns.append(step.fn)  # type: ignore[attr-defined]
            else:
                raise TypeError(f"not a stateless step: {step!r}")
        self._template = _template(tuple(_KINDS[type(step)] for step in steps))
        assert self._template.factory is not None
        self.run: BatchFn = self._template.factory(_not_bool, self.names, *fns)

    def step_of(self, exc: BaseException) -> str | None:
        """The name of the step that raised ``exc`` (``None``: not raised inside the chain)."""
        tb = self._traceback_entry(exc)
        if tb is None:
            return None
        index = self._template.step_at[tb.tb_lineno - 1]
        return None if index is None else self.names[index]

    def explain(self, exc: BaseException) -> BaseException:
        """``exc``, or a clearer error when a flat_map returned something that is not iterable."""
        tb = self._traceback_entry(exc)
        t = self._template
        if not isinstance(exc, TypeError) or tb is None or tb.tb_lineno not in t.iterated_at:
            return exc
        index = t.iterated_at[tb.tb_lineno]
        local = tb.tb_frame.f_locals
        result = local[f"_r{index}"]
        try:
            iter(result)
        except TypeError:
            error = _not_iterable(self.names[index], result, local[t.input_of[index]])
            return error.with_traceback(exc.__traceback__)
        return exc  # the TypeError came from iterating a result that is iterable

    def _traceback_entry(self, exc: BaseException) -> TracebackType | None:
        """The innermost entry of ``exc``'s traceback in the generated code (a comprehension
        is a frame of its own inside ``run``)."""
        found = None
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == self._template.filename:
                found = tb
            tb = tb.tb_next
        return found


def compile_chain(steps: Sequence[plan.Step], sinks: Sequence[Sink | None] = ()) -> Chain:
    """The fused batch function of ``steps`` (``sinks[i]``: the worker's writer of a capture)."""
    return Chain(steps, sinks)

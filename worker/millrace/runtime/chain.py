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
from itertools import count
from types import TracebackType
from typing import Any

from .. import plan
from .errors import describe
from .sinks import Sink

Batch = list[Any]
BatchFn = Callable[[Batch, int], Batch]

_ITEM_STEPS = (plan.Map, plan.Filter, plan.FlatMap, plan.Inspect, plan.InspectEpoch)
_serial = count()


def _not_bool(step_name: str, verdict: Any, item: Any) -> TypeError:
    return TypeError(
        f"{step_name} must return a bool, got {describe(verdict)} for the item {describe(item)}"
    )


def _not_iterable(step_name: str, result: Any, item: Any) -> TypeError:
    return TypeError(
        f"{step_name} must return an iterable, got {describe(result)} for the item {describe(item)}"
    )


class _Source:
    """Lines of the generated function; each remembers the step (by index) it belongs to."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.step_at: list[int | None] = []

    def add(self, depth: int, text: str, step: int | None = None) -> int:
        """Append a line; return its line number (1-based, as tracebacks count)."""
        self.lines.append("    " * depth + text)
        self.step_at.append(step)
        return len(self.lines)


class Chain:
    """One compiled run of stateless steps: ``run(batch, epoch)`` returns the batch that comes
    out of the last step; :meth:`step_of` and :meth:`explain` turn an exception from ``run``
    into the step it came from and the message it deserves.
    """

    def __init__(self, steps: Sequence[plan.Step], sinks: Sequence[Sink | None] = ()) -> None:
        self.names = [step.name for step in steps]
        self._src = src = _Source()
        # Per step: the variable holding its input item, and for a flat_map the line of the
        # ``for`` that iterates its result (the one place a non-iterable result fails).
        self._input_of: dict[int, str] = {}
        self._iterated_at: dict[int, int] = {}
        values: list[Any] = []
        for index, step in enumerate(steps):
            if isinstance(step, _ITEM_STEPS):
                values.append(step.fn)
            elif isinstance(step, plan.Capture):
                sink = sinks[index] if index < len(sinks) else None
                if sink is None:
                    raise ValueError(f"{step.name} needs its sink")
                values.append(sink.write)
            else:
                raise TypeError(f"not a stateless step: {step!r}")
        params = ", ".join(f"_f{index}" for index in range(len(steps)))
        src.add(0, f"def _factory(_not_bool, {params}):")
        src.add(1, "def run(batch, epoch):")
        pending: list[int] = []  # item steps not yet written out
        for index, step in enumerate(steps):
            if isinstance(step, plan.Capture):
                self._write_items(pending, steps)
                pending = []
                src.add(2, "if not batch: return batch")
                src.add(2, f"_f{index}(batch, epoch)", index)
            else:
                pending.append(index)
        self._write_items(pending, steps)
        src.add(2, "return batch")
        src.add(1, "return run")

        self._filename = f"<millrace chain {next(_serial)}: {' -> '.join(self.names)}>"
        lines = [line + "\n" for line in src.lines]
        # Registered so that a traceback through the chain shows its lines.
        linecache.cache[self._filename] = (sum(map(len, lines)), None, lines, self._filename)
        namespace: dict[str, Any] = {}
        exec(compile("".join(lines), self._filename, "exec"), namespace)
        self.run: BatchFn = namespace["_factory"](_not_bool, *values)

    def _write_items(self, run: list[int], steps: Sequence[plan.Step]) -> None:
        """Lines that take ``batch`` through the item steps ``run`` (indices into ``steps``)."""
        src = self._src
        if not run:
            return
        if all(isinstance(steps[index], plan.Map) for index in run):
            # Only maps: a comprehension of nested calls, each call on its own line so that a
            # traceback still tells them apart.
            src.add(2, "batch = [")
            for index in reversed(run):
                src.add(3, f"_f{index}(", index)
            src.add(3, "_item" + ")" * len(run))
            src.add(3, "for _item in batch]")
            return
        src.add(2, "_out = []")
        src.add(2, "for _item in batch:")
        depth, item = 3, "_item"
        for index in run:
            step = steps[index]
            self._input_of[index] = item
            if isinstance(step, plan.Map):
                src.add(depth, f"_i{index} = _f{index}({item})", index)
                item = f"_i{index}"
            elif isinstance(step, plan.Filter):
                src.add(depth, f"_keep = _f{index}({item})", index)
                src.add(depth, "if _keep is not True:", index)
                src.add(depth + 1, "if _keep is False: continue", index)
                src.add(depth + 1, f"raise _not_bool({step.name!r}, _keep, {item})", index)
            elif isinstance(step, plan.FlatMap):
                src.add(depth, f"_r{index} = _f{index}({item})", index)
                self._iterated_at[src.add(depth, f"for _i{index} in _r{index}:", index)] = index
                depth += 1
                item = f"_i{index}"
            elif isinstance(step, plan.Inspect):
                src.add(depth, f"_f{index}({item})", index)
            else:
                src.add(depth, f"_f{index}(epoch, {item})", index)
        src.add(depth, f"_out.append({item})")
        src.add(2, "batch = _out")

    def step_of(self, exc: BaseException) -> str | None:
        """The name of the step that raised ``exc`` (``None``: not raised inside the chain)."""
        tb = self._traceback_entry(exc)
        if tb is None:
            return None
        index = self._src.step_at[tb.tb_lineno - 1]
        return None if index is None else self.names[index]

    def explain(self, exc: BaseException) -> BaseException:
        """``exc``, or a clearer error when a flat_map returned something that is not iterable."""
        tb = self._traceback_entry(exc)
        if not isinstance(exc, TypeError) or tb is None or tb.tb_lineno not in self._iterated_at:
            return exc
        index = self._iterated_at[tb.tb_lineno]
        local = tb.tb_frame.f_locals
        result = local[f"_r{index}"]
        try:
            iter(result)
        except TypeError:
            error = _not_iterable(self.names[index], result, local[self._input_of[index]])
            return error.with_traceback(exc.__traceback__)
        return exc  # the TypeError came from iterating a result that is iterable

    def _traceback_entry(self, exc: BaseException) -> TracebackType | None:
        """The innermost entry of ``exc``'s traceback in the generated code (a comprehension
        is a frame of its own inside ``run``)."""
        found = None
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == self._filename:
                found = tb
            tb = tb.tb_next
        return found


def compile_chain(steps: Sequence[plan.Step], sinks: Sequence[Sink | None] = ()) -> Chain:
    """The fused batch function of ``steps`` (``sinks[i]``: the worker's writer of a capture)."""
    return Chain(steps, sinks)

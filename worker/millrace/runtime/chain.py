"""The stateless steps between two stateful steps, fused into one batch function.

A run of ``map``, ``filter``, ``flat_map``, ``inspect`` and ``inspect_epoch`` becomes a single
generated Python loop that carries each item through every step before the next item starts:
no list per step, and each user function is called from Python bytecode, which CPython 3.11
does without a C-level call (``list(map(fn, batch))`` pays for one per item). A ``capture``
ends the loop: it writes the batch built so far, and a new loop carries it on.

A keyed step may end the loop too, when its items need not move to another worker first (one
worker in all): it gives its per-item code as :class:`LoopCode`, and each item goes from the
last stateless step straight into its state. The function then returns what the keyed step
emits. Keyed steps run their own batches through the same code (a chain of no stateless steps).

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
from typing import Any, Protocol

from .. import plan
from .errors import bad_keyed_item, describe
from .sinks import Sink

Batch = list[Any]
BatchFn = Callable[[Batch, int], Batch]


@dataclass(frozen=True)
class LoopCode:
    """A keyed step's code for the generated loop (see :func:`keyed_loop`, which writes the
    part every keyed step shares).

    The code sees the step's logic object as ``_k``. ``setup`` runs once per batch, after the
    stateless steps' captures: it binds the step's locals and ``_emit``, the list of what the
    step emits. ``body`` runs per item, ``{item}`` standing for the variable that holds it;
    nesting is four spaces. ``body[unpack]`` unpacks the ``(key, value)`` pair, so a
    ``ValueError`` there means a tuple of the wrong length.
    """

    kind: str
    setup: tuple[str, ...]
    body: tuple[str, ...]
    unpack: int


class KeyedStep(Protocol):
    """What a keyed step that ends a chain provides (:class:`~.keyed.KeyedLogic` does)."""

    name: str
    loop_code: LoopCode | None


def keyed_loop(kind: str, setup: Sequence[str], per_key: Sequence[str]) -> LoopCode:
    """The :class:`LoopCode` of a keyed step whose ``per_key`` lines update the state of
    ``_key`` with ``_value``.

    Every item is checked where it is taken apart (a separate pass would cost more than the
    test): one that is not a tuple, or whose key is not a ``str`` or ``int``, fails with the
    step's :func:`~.errors.bad_keyed_item` error (``_k.bad_item``). A key whose state changed
    joins ``_k.touched`` while a recovery store wants to know.
    """
    return LoopCode(
        kind,
        ("_touched = _k.touched", *setup),
        (
            "if _type({item}) is not _tuple: raise _k.bad_item({item})",
            "_key, _value = {item}",
            "_key_type = _type(_key)",
            "if _key_type is not _str and _key_type is not _int: raise _k.bad_item({item})",
            *per_key,
            "if _touched is not None: _touched.add(_key)",
        ),
        unpack=1,
    )

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

    ``factory(_not_bool, names, *fns)`` returns the batch function (with a ``terminal``, the
    last of ``fns`` is the keyed step). Per line of the source: the index of the step it
    belongs to; per step: the variable holding its input item; per flat_map: the line of the
    ``for`` that iterates its result (where a non-iterable fails); for the keyed step: the line
    that unpacks its pair."""

    kinds: tuple[str, ...]
    terminal: LoopCode | None = None
    lines: list[str] = field(default_factory=list)
    step_at: list[int | None] = field(default_factory=list)
    input_of: dict[int, str] = field(default_factory=dict)
    iterated_at: dict[int, int] = field(default_factory=dict)
    unpacked_at: dict[int, int] = field(default_factory=dict)
    filename: str = ""
    factory: Callable[..., BatchFn] | None = None

    def add(self, depth: int, text: str, step: int | None = None) -> int:
        """Append a line; return its line number (1-based, as tracebacks count)."""
        self.lines.append("    " * depth + text)
        self.step_at.append(step)
        return len(self.lines)


@lru_cache(maxsize=256)
def _template(kinds: tuple[str, ...], terminal: LoopCode | None = None) -> _Template:
    t = _Template(kinds, terminal)
    names = [f"_f{index}" for index in range(len(kinds))]
    if terminal is not None:
        names.append("_k")
    t.add(0, f"def _factory(_not_bool, _names, {', '.join(names)}):")
    t.add(1, "def run(batch, epoch):")
    # What a batch that empties before the keyed step gives: it emits nothing.
    empty = "batch" if terminal is None else "[]"
    pending: list[int] = []  # item steps not yet written out
    for index, kind in enumerate(kinds):
        if kind == "capture":
            _write_items(t, pending)
            pending = []
            t.add(2, f"if not batch: return {empty}")
            t.add(2, f"_f{index}(batch, epoch)", index)
        else:
            pending.append(index)
    if terminal is None:
        _write_items(t, pending)
        t.add(2, "return batch")
    else:
        _write_items(t, pending, terminal)
        t.add(2, "return _emit")
    t.add(1, "return run")
    shape = list(kinds) + ([terminal.kind] if terminal is not None else [])
    t.filename = f"<millrace chain: {' -> '.join(shape)}>"
    lines = [line + "\n" for line in t.lines]
    # Registered so that a traceback through a chain shows its lines.
    linecache.cache[t.filename] = (sum(map(len, lines)), None, lines, t.filename)
    namespace: dict[str, Any] = {}
    exec(compile("".join(lines), t.filename, "exec"), namespace)
    t.factory = namespace["_factory"]
    return t


def _write_items(t: _Template, indices: list[int], terminal: LoopCode | None = None) -> None:
    """Lines that take ``batch`` through the item steps at ``indices``, then (with a
    ``terminal``) into the keyed step."""
    if not indices and terminal is None:
        return
    if terminal is None and all(t.kinds[index] == "map" for index in indices):
        # Only maps: a comprehension of nested calls, each call on its own line so that a
        # traceback still tells them apart.
        t.add(2, "batch = [")
        for index in reversed(indices):
            t.add(3, f"_f{index}(", index)
        t.add(3, "_item" + ")" * len(indices))
        t.add(3, "for _item in batch]")
        return
    if terminal is None:
        t.add(2, "_out = []")
    else:
        keyed = len(t.kinds)
        # Builtins as locals: the keyed code tests types once per item.
        t.add(2, "_type, _tuple, _str, _int = type, tuple, str, int", keyed)
        for line in terminal.setup:
            t.add(2, line, keyed)
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
    if terminal is None:
        t.add(depth, f"_out.append({item})")
        t.add(2, "batch = _out")
        return
    keyed = len(t.kinds)
    t.input_of[keyed] = item
    for position, line in enumerate(terminal.body):
        stripped = line.lstrip(" ")
        nesting = (len(line) - len(stripped)) // 4
        number = t.add(depth + nesting, stripped.replace("{item}", item), keyed)
        if position == terminal.unpack:
            t.unpacked_at[number] = keyed


class Chain:
    """One compiled run of stateless steps, maybe ending in a keyed step: ``run(batch,
    epoch)`` returns the batch that comes out of the last step (the keyed step's output);
    :meth:`step_of` and :meth:`explain` turn an exception from ``run`` into the step it came
    from and the message it deserves.
    """

    def __init__(
        self,
        steps: Sequence[plan.Step],
        sinks: Sequence[Sink | None] = (),
        keyed: KeyedStep | None = None,
    ) -> None:
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
        terminal = None
        if keyed is not None:
            terminal = keyed.loop_code
            if terminal is None:
                raise TypeError(f"{keyed.name} has no code for a fused loop")
            self.names += (keyed.name,)
            fns.append(keyed)
        self._template = _template(tuple(_KINDS[type(step)] for step in steps), terminal)
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
        """``exc``, or a clearer error when a flat_map returned something that is not
        iterable, or a tuple of the wrong length reached the keyed step."""
        tb = self._traceback_entry(exc)
        t = self._template
        if tb is None:
            return exc
        if isinstance(exc, ValueError) and tb.tb_lineno in t.unpacked_at:
            index = t.unpacked_at[tb.tb_lineno]
            error = bad_keyed_item(self.names[index], tb.tb_frame.f_locals[t.input_of[index]])
            return error.with_traceback(exc.__traceback__)
        if not isinstance(exc, TypeError) or tb.tb_lineno not in t.iterated_at:
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


def compile_chain(
    steps: Sequence[plan.Step], sinks: Sequence[Sink | None] = (), keyed: KeyedStep | None = None
) -> Chain:
    """The fused batch function of ``steps`` (``sinks[i]``: the worker's writer of a capture),
    ending in ``keyed``'s loop code if given."""
    return Chain(steps, sinks, keyed)

"""The stateless steps between two stateful steps, fused into one batch function.

A run of ``map``, ``filter``, ``flat_map``, ``inspect`` and ``inspect_epoch`` becomes a single
generated Python loop that carries each item through every step before the next item starts:
no list per step, and each user function is called from Python bytecode, which CPython 3.11
does without a C-level call (``list(map(fn, batch))`` pays for one per item). A ``capture``
ends the loop: it writes the batch built so far, and a new loop carries it on.

A keyed step may end the loop too: it gives its per-item code as :class:`LoopCode`, and each
item goes from the last stateless step straight into its state. The function then returns
what the keyed step emits. On a cluster the loop routes: an item whose key another worker owns
goes into that worker's part instead, and the function returns the parts too. Keyed steps run
the batches they receive through the same code (a chain of no stateless steps).

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

import dis
import linecache
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from types import CodeType, TracebackType
from typing import Any, Protocol

from .. import plan
from .errors import bad_keyed_item, describe
from .loop_code import CHAIN_GLOBALS, LOOP_GLOBALS, MISSING, LoopCode
from .sinks import Sink

Batch = list[Any]
BatchFn = Callable[[Batch, int], Batch]


class KeyedStep(Protocol):
    """What a keyed step that ends a chain provides (:class:`~.keyed.KeyedLogic` does)."""

    name: str
    loop_code: LoopCode | None


class KeyRouter(Protocol):
    """Which worker owns a key, for a loop that routes (:class:`~.routing.Router` is one)."""

    worker_count: int
    #: The worker the loop runs on: its keys stay, the others' go into their parts.
    me: int
    #: Known owners of ``str`` keys (an ``int`` key's owner is ``key % worker_count``).
    owners: dict[Any, int]

    def owner_of(self, key: Any) -> int:
        """The owner of the ``str`` key ``key``, now known."""
        ...


_KINDS: dict[type, str] = {
    plan.Map: "map",
    plan.Filter: "filter",
    plan.FlatMap: "flat_map",
    plan.Inspect: "inspect",
    plan.InspectEpoch: "inspect_epoch",
    plan.Capture: "capture",
}


def _not_bool(step_name: str, verdict: Any, item: Any) -> TypeError:
    return TypeError(f"{step_name} must return a bool, got {describe(verdict)} for the item {describe(item)}")


def _not_iterable(step_name: str, result: Any, item: Any) -> TypeError:
    return TypeError(f"{step_name} must return an iterable, got {describe(result)} for the item {describe(item)}")


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
    routed: bool = False
    counted: bool = False
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
def _template(
    kinds: tuple[str, ...], terminal: LoopCode | None = None, routed: bool = False, counted: bool = False
) -> _Template:
    t = _Template(kinds, terminal, routed, counted)
    names = [f"_f{index}" for index in range(len(kinds))]
    if terminal is not None:
        names.append("_k")
    if routed:
        names.append("_r")
    if counted:
        names.append("_n")
    t.add(0, f"def _factory(_not_bool, _names, {', '.join(names)}):")
    # The steps' functions are bound as defaults, so the loop reads them as locals, not cells.
    defaults = "".join(f", _f{index}=_f{index}" for index in range(len(kinds)))
    t.add(1, f"def run(batch, epoch{defaults}):")
    if counted:
        t.add(2, "_n[0] += len(batch)")
    # What a batch that empties before the keyed step gives: it emits nothing (and sends
    # nothing).
    empty = "batch" if terminal is None else "[], []" if routed else "[]"
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
        t.add(2, "return _emit, _parts" if routed else "return _emit")
    t.add(1, "return run")
    shape = list(kinds) + ([terminal.kind] if terminal is not None else [])
    if routed:
        shape[-1] += " (routed)"
    if counted:
        shape.append("(counted)")
    t.filename = f"<millrace chain: {' -> '.join(shape)}>"
    lines = [line + "\n" for line in t.lines]
    # Registered so that a traceback through a chain shows its lines.
    linecache.cache[t.filename] = (sum(map(len, lines)), None, lines, t.filename)
    code = compile("".join(lines), t.filename, "exec")
    # A misspelt local reads as a global, and fails only on the item that reaches it: refuse
    # the shape now (what keyed code may read is checked when its LoopCode is made).
    unknown = _globals_read(code) - CHAIN_GLOBALS - LOOP_GLOBALS
    if unknown:
        raise ValueError(f"{t.filename} reads names nothing gives it: {sorted(unknown)}")
    namespace: dict[str, Any] = {"MISSING": MISSING}
    exec(code, namespace)
    t.factory = namespace["_factory"]
    return t


def _globals_read(code: CodeType) -> set[str]:
    """The names ``code`` and the functions in it look up as globals."""
    names = {ins.argval for ins in dis.get_instructions(code) if ins.opname == "LOAD_GLOBAL"}
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _globals_read(const)
    return names


_COUNTED_KINDS = ("filter", "flat_map")


def _write_items(t: _Template, indices: list[int], terminal: LoopCode | None = None) -> None:
    """Lines that take ``batch`` through the item steps at ``indices``, then (with a
    ``terminal``) into the keyed step.

    A counted loop (:attr:`_Template.counted`) also adds up how many items leave each filter
    and flat_map into ``_n`` (:meth:`Chain.counts` says which is where), once per batch: the
    other steps let out what they take in. The last of them before the loop's end needs no
    count per item, as that is how many the loop appends; each other one counts in a local
    int (``_c<i>``), and before a keyed step so does the last (the keyed step then takes what
    is not sent to another worker).
    """
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
    counting = [index for index in indices if t.counted and t.kinds[index] in _COUNTED_KINDS]
    per_item = counting if terminal is not None else counting[:-1]
    for index in per_item:
        t.add(2, f"_c{index} = 0", index)
    if terminal is None:
        t.add(2, "_out = []")
    else:
        keyed = len(t.kinds)
        # Builtins as locals: the keyed code tests types once per item. What the keyed code
        # may use is listed in loop_code.LOOP_NAMES, and what the loop binds for itself in
        # LOOP_OWN_NAMES: keep them in step with the lines written here.
        t.add(2, "_type, _tuple, _str, _int, _MISSING = type, tuple, str, int, MISSING", keyed)
        t.add(2, "_touched = _k.touched", keyed)
        for line in terminal.setup:
            t.add(2, line, keyed)
        if t.routed:
            t.add(2, "_count, _me, _owners_get, _owner_of = _r.worker_count, _r.me, _r.owners.get, _r.owner_of", keyed)
            t.add(2, "_parts = [[] for _ in range(_count)]", keyed)
    if terminal is not None and t.counted and not counting:
        # Before the loop, while ``batch`` is still what the section takes in.
        t.add(2, "_c = len(batch)", len(t.kinds))
    t.add(2, "for _item in batch:")
    depth, item = write_steps(t, indices, 3, "_item", per_item)
    if terminal is None:
        t.add(depth, f"_out.append({item})")
        t.add(2, "batch = _out")
        for index in per_item:
            t.add(2, f"_n[{index + 1}] += _c{index}")
        if counting:
            t.add(2, f"_n[{counting[-1] + 1}] += len(batch)")
        return
    _write_keyed(t, depth, item, terminal)
    if t.counted:
        keyed = len(t.kinds)
        for index in per_item:
            t.add(2, f"_n[{index + 1}] += _c{index}")
        reached = f"_c{counting[-1]}" if counting else "_c"
        routed = " - sum(map(len, _parts))" if t.routed else ""
        t.add(2, f"_n[{keyed + 1}] += {reached}{routed}", keyed)
        t.add(2, f"_n[{keyed + 2}] += len(_emit)", keyed)


class StepLines(Protocol):
    """What :func:`write_steps` writes into: a generated function's lines, and per step the
    variable holding its input item and the line that iterates a flat_map's result."""

    kinds: tuple[str, ...]
    input_of: dict[int, str]
    iterated_at: dict[int, int]

    def add(self, depth: int, text: str, step: int | None = None) -> int: ...


def write_steps(
    t: StepLines, indices: Sequence[int], depth: int, item: str, per_item: Collection[int] = ()
) -> tuple[int, str]:
    """Lines that take the item in variable ``item`` through the stateless steps at
    ``indices`` (``_f<i>`` their functions, ``epoch`` the epoch, ``_names`` their names):
    a filter that says no ``continue``s, a flat_map nests a ``for``; the filters and flat_maps
    in ``per_item`` count what they let out in ``_c<i>``. Returns the depth and the variable
    of the item that comes out."""
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
            if index in per_item:
                t.add(depth, f"_c{index} += 1", index)
        elif kind == "flat_map":
            t.add(depth, f"_r{index} = _f{index}({item})", index)
            t.iterated_at[t.add(depth, f"for _i{index} in _r{index}:", index)] = index
            depth += 1
            item = f"_i{index}"
            if index in per_item:
                t.add(depth, f"_c{index} += 1", index)
        elif kind == "inspect":
            t.add(depth, f"_f{index}({item})", index)
        else:
            t.add(depth, f"_f{index}(epoch, {item})", index)
    return depth, item


def explain_flat_map(t: StepLines, names: Sequence[str], exc: BaseException, tb: TracebackType) -> BaseException:
    """``exc`` raised at ``tb`` in generated code, or a clearer error when it is a flat_map's
    result that is not iterable."""
    if not isinstance(exc, TypeError) or tb.tb_lineno not in t.iterated_at:
        return exc
    index = t.iterated_at[tb.tb_lineno]
    local = tb.tb_frame.f_locals
    result = local[f"_r{index}"]
    try:
        iter(result)
    except TypeError:
        return _not_iterable(names[index], result, local[t.input_of[index]]).with_traceback(exc.__traceback__)
    return exc  # the TypeError came from iterating a result that is iterable


def traceback_entry(exc: BaseException, filename: str) -> TracebackType | None:
    """The innermost entry of ``exc``'s traceback in the generated code of ``filename`` (a
    comprehension is a frame of its own inside it)."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            found = tb
        tb = tb.tb_next
    return found


def _write_keyed(t: _Template, depth: int, item: str, terminal: LoopCode) -> None:
    """Lines that check ``item``, unpack it, route it if the loop routes, and run the keyed
    step's code on it.

    Each item is checked where it is taken apart (a separate pass would cost more than the
    test): one that is not a tuple, or whose key is not a ``str`` or ``int``, fails with the
    step's :func:`~.errors.bad_keyed_item` error (``_k.bad_item``); a tuple of the wrong
    length fails its unpacking (see :meth:`Chain.explain`). A key whose state changed joins
    ``_k.touched`` while a recovery store wants to know.
    """
    keyed = len(t.kinds)
    t.input_of[keyed] = item
    t.add(depth, f"if _type({item}) is not _tuple: raise _k.bad_item({item})", keyed)
    t.unpacked_at[t.add(depth, f"_key, _value = {item}", keyed)] = keyed
    t.add(depth, "_key_type = _type(_key)", keyed)
    if not t.routed:
        t.add(depth, f"if _key_type is not _str and _key_type is not _int: raise _k.bad_item({item})", keyed)
    else:
        t.add(depth, "if _key_type is _str:", keyed)
        t.add(depth + 1, "_dest = _owners_get(_key)", keyed)
        t.add(depth + 1, "if _dest is None: _dest = _owner_of(_key)", keyed)
        t.add(depth, "elif _key_type is _int:", keyed)
        t.add(depth + 1, "_dest = _key % _count", keyed)
        t.add(depth, "else:", keyed)
        t.add(depth + 1, f"raise _k.bad_item({item})", keyed)
        t.add(depth, "if _dest != _me:", keyed)
        t.add(depth + 1, f"_parts[_dest].append({item})", keyed)
        t.add(depth + 1, "continue", keyed)
    for line in terminal.per_key:
        stripped = line.lstrip(" ")
        t.add(depth + (len(line) - len(stripped)) // 4, stripped, keyed)
    t.add(depth, "if _touched is not None: _touched.add(_key)", keyed)


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
        router: KeyRouter | None = None,
        counted: bool = False,
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
        if router is not None:
            if keyed is None:
                raise TypeError("only a chain that ends in a keyed step routes")
            fns.append(router)
        kinds = tuple(_KINDS[type(step)] for step in steps)
        self._template = _template(kinds, terminal, router is not None, counted)
        assert self._template.factory is not None
        #: What a counted chain has counted (see :meth:`items`): the items it took in, then per
        #: step the items out of it (filled for filters and flat_maps only), then the items
        #: into and out of the keyed step. Empty when not counted.
        self.counters: list[int] = []
        if counted:
            self.counters = [0] * (len(kinds) + 3)
            fns.append(self.counters)
        self._keyed = keyed is not None
        #: ``run(batch, epoch)``: the batch out of the last step; with a router, also the
        #: items every worker owns, ``(emitted, parts)`` (this worker's part stays empty).
        self.run: Callable[[Batch, int], Any] = self._template.factory(_not_bool, self.names, *fns)

    def items(self) -> list[tuple[int, int]]:
        """Per step (the keyed step last), the items that went into it and came out of it, as
        a counted chain has counted them; a step that is not a filter or a flat_map lets out
        what it takes in. (The keyed step's count is of the items it kept; those another worker
        owns were sent there.) Empty when the chain is not counted.

        >>> from millrace import plan
        >>> chain = compile_chain([plan.Map(1, abs), plan.Filter(2, bool), plan.Map(3, str)], counted=True)
        >>> chain.run([0, 1, -2], 0)
        ['1', '2']
        >>> chain.items()
        [(3, 3), (3, 2), (2, 2)]
        """
        counters = list(self.counters)  # one copy: the worker may add to them meanwhile
        if not counters:
            return []
        kinds = self._template.kinds
        flowing = counters[0]
        out: list[tuple[int, int]] = []
        for index, kind in enumerate(kinds):
            leaving = counters[index + 1] if kind in _COUNTED_KINDS else flowing
            out.append((flowing, leaving))
            flowing = leaving
        if self._keyed:
            out.append((counters[len(kinds) + 1], counters[len(kinds) + 2]))
        return out

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
        return explain_flat_map(t, self.names, exc, tb)

    def _traceback_entry(self, exc: BaseException) -> TracebackType | None:
        return traceback_entry(exc, self._template.filename)


def compile_chain(
    steps: Sequence[plan.Step],
    sinks: Sequence[Sink | None] = (),
    keyed: KeyedStep | None = None,
    router: KeyRouter | None = None,
    counted: bool = False,
) -> Chain:
    """The fused batch function of ``steps`` (``sinks[i]``: the worker's writer of a capture),
    ending in ``keyed``'s loop code if given, which keeps only the keys ``router`` says
    this worker owns if given; ``counted``: it counts the items of each step
    (:meth:`Chain.items`)."""
    return Chain(steps, sinks, keyed, router, counted)

"""An input, its stateless steps and its output, fused into one generated loop per worker.

Where a flow is ``input -> map/filter/flat_map/inspect... -> capture`` (the capture last, no
stateful step), the worker need not build a batch of items, then a batch of results, then
write it: one generated function reads the builder's iterator directly, carries each item
through every step and hands it to the output before it pulls the next one. That is the plain
loop a user would write by hand, plus what the engine owes its API: each yield must unpack
into ``(state, item)`` (a ``None``, "nothing yet", or anything else stops the loop; the first
yield of each call is checked to be a 2-tuple), a filter's verdict must be a bool, and the
resume state of the last item is kept. Epoch ends, window deadlines, messages and
Ctrl-C are looked at between calls, and :class:`~.epochs.BatchSizer` sizes each call to about
10 ms as it sizes batches.

A call takes at most ``limit`` yields (``islice``); after a full one it looks one yield ahead,
as :class:`~.sources.ManualReader` does, so that the input is known exhausted in the epoch of
its last item. A batched input (``ManualInputConfig(batched=True)``) yields lists: the loop
takes whole lists until it has carried ``limit`` items.

What the source raises leaves the loop from its ``for`` line: the items it gave before have
already reached the output, the error is held by the reader and raised by the next call, as
the reader raises it (so the epoch those items belong to ends as usual). A step's error is
raised at once, named by the line it came from, as :mod:`.chain` does, once the items before
it have reached the output (as they would one at a time).

The output is called inside the loop when it is a Python callable (``ManualOutputConfig``)
and this process runs one worker (:data:`.sinks.OUTPUT_LOCK` is then held for the call: no
other worker's lines can interleave); any other output gets the call's items as one batch.

>>> from millrace import plan
>>> from millrace.runtime.sources import ManualReader
>>> got = []
>>> reader = ManualReader("inp", iter([(1, "a"), (2, "b"), None, (3, "c")]), None)
>>> pump = Pump(reader, [plan.Map(1, str.upper)], got.append)
>>> pump.run(100, 0), got, reader.state
(100, ['A', 'B'], 2)
>>> pump.run(100, 0), got, reader.state, reader.exhausted  # 100: at most that many
(100, ['A', 'B', 'C'], 3, True)
"""

from __future__ import annotations

import dis
import linecache
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain, islice
from types import CodeType, TracebackType
from typing import Any

from .. import plan
from .chain import _COUNTED_KINDS, _not_bool, explain_flat_map, traceback_entry, write_steps
from .loop_code import MISSING
from .sinks import OUTPUT_LOCK, Sink, _BatchCallableSink, _CallableSink
from .sources import BatchReader, ManualReader, Reader, TestingReader

_ITEM_KINDS: dict[type, str] = {
    plan.Map: "map",
    plan.Filter: "filter",
    plan.FlatMap: "flat_map",
    plan.Inspect: "inspect",
    plan.InspectEpoch: "inspect_epoch",
}


@dataclass
class _Template:
    """The generated loop for one shape (kinds of steps, batched or not, how it outputs),
    shared by every pump of that shape. Per line: the step it belongs to (``None``: the
    loop's own); per step: the variable holding its input item; per flat_map: the line that
    iterates its result; the line that iterates the source and the one that unpacks a yield."""

    kinds: tuple[str, ...]
    mode: str  # "pairs" (state, item), "batches" (state, list) or "items" (bare, counted)
    calls: bool  # the output is called per item (else: items collected into ``_out``)
    with_epoch: bool
    counted: bool  # filters and flat_maps count what they let out, into ``_k`` (metrics)
    lines: list[str] = field(default_factory=list)
    step_at: list[int | None] = field(default_factory=list)
    input_of: dict[int, str] = field(default_factory=dict)
    iterated_at: dict[int, int] = field(default_factory=dict)
    source_line: int = 0
    unpack_line: int = 0
    unpack_offset: int = -1  # pairs: the source line's instruction that unpacks a yield
    filename: str = ""
    factory: Callable[..., Callable[..., Any]] | None = None

    def add(self, depth: int, text: str, step: int | None = None) -> int:
        self.lines.append("    " * depth + text)
        self.step_at.append(step)
        return len(self.lines)


@lru_cache(maxsize=128)
def _template(kinds: tuple[str, ...], mode: str, calls: bool, with_epoch: bool, counted: bool = False) -> _Template:
    t = _Template(kinds, mode, calls, with_epoch, counted)
    out = len(kinds)  # the capture's index
    names = ", ".join(f"_f{i}" for i in range(len(kinds) + 1))
    # Counted (metrics on): each filter and flat_map counts in a local int, added into the
    # pump's list ``_k`` before each return; pairs are counted one by one too.
    per_item = [index for index, kind in enumerate(kinds) if counted and kind in _COUNTED_KINDS]
    flush = "".join(f"_k[{index}] += _c{index}; " for index in per_item)
    t.add(0, f"def _factory(_not_bool, _names, _k, {names}):")
    # ``pump(_src, _limit, epoch)`` returns ``(state, stop, n)``: the state of the last item
    # carried (MISSING: none), the yield that stopped the loop (MISSING: none did) and how
    # many items it carried (counted for batches and bare items; pairs are not counted).
    # The functions are bound as defaults, so the loop reads them as locals, not from cells.
    defaults = ", ".join(f"_f{i}=_f{i}" for i in range(len(kinds) + 1))
    t.add(1, f"def pump(_src, _limit, epoch, {defaults}):")
    t.add(2, "_type, _tuple, _list, _state, _n = type, tuple, list, MISSING, 0")
    for index in per_item:
        t.add(2, f"_c{index} = 0")
    if not calls:
        t.add(2, "_out = []")
    stop = flush + (f"_f{out}(_out, epoch); return _state, _pair, _n" if not calls else "return _state, _pair, _n")
    if mode == "batches":
        t.source_line = t.add(2, "for _pair in _src:")
        # These lines output what the loop collected (an error there is the output's).
        t.add(3, f"if _type(_pair) is not _tuple: {stop}", None if calls else out)
        t.unpack_line = t.add(3, "_s, _batch = _pair")
        t.add(3, f"if _type(_batch) is not _list: {stop}", None if calls else out)
        t.add(3, "_state = _s")
        t.add(3, "_n += len(_batch)")
        t.add(3, "for _item in _batch:")
        depth = 4
    elif mode == "pairs":
        # Unpacked by the ``for`` itself, as a plain loop does: no type check per yield (it
        # cost a tenth of a cheap flow), and the source may reuse its tuple (zip, enumerate
        # and dict.items do when nobody holds the last one). A ``None`` or a yield that does
        # not unpack fails here; ``Pump`` tells that from the source failing by the failed
        # instruction (``unpack_offset``). Each call's first yield is checked in full
        # (``Pump.run``), so an input yielding bare items that happen to unpack (strings of
        # two characters, pairs of its own) is still refused.
        t.source_line = t.add(2, "for _state, _item in _src:")
        if counted:
            t.add(3, "_n += 1")
        depth = 3
    else:
        t.source_line = t.add(2, "for _n, _item in enumerate(_src, 1):")
        depth = 3
    depth, item = write_steps(t, range(len(kinds)), depth, "_item", per_item)
    t.input_of[out] = item
    if calls:
        t.add(depth, f"_f{out}((epoch, {item}))" if with_epoch else f"_f{out}({item})", out)
    else:
        t.add(depth, f"_out.append({item})", out)  # specialised by CPython: no call
    if mode == "batches":
        t.add(3, "if _n >= _limit: break")
    if not calls:
        t.add(2, f"_f{out}(_out, epoch)", out)
    for index in per_item:
        t.add(2, f"_k[{index}] += _c{index}")
    t.add(2, "return _state, MISSING, _n")
    t.add(1, "return pump")
    t.filename = (
        f"<millrace pump: input -> {' -> '.join((*kinds, 'capture'))} ({mode}{', counted' if counted else ''})>"
    )
    lines = [line + "\n" for line in t.lines]
    linecache.cache[t.filename] = (sum(map(len, lines)), None, lines, t.filename)
    namespace: dict[str, Any] = {"MISSING": MISSING}
    exec(compile("".join(lines), t.filename, "exec"), namespace)
    t.factory = namespace["_factory"]
    if mode == "pairs":
        t.unpack_offset = _unpack_offset(t.factory.__code__, t.source_line)
    return t


def _unpack_offset(factory: CodeType, line: int) -> int:
    """The offset of the instruction that unpacks each yield on ``line`` of the generated
    pump (what a traceback's ``tb_lasti`` is when a yield did not unpack)."""
    pump = next(c for c in factory.co_consts if isinstance(c, CodeType) and c.co_name == "pump")
    for instruction in dis.get_instructions(pump):
        positions = instruction.positions
        if instruction.opname == "UNPACK_SEQUENCE" and positions is not None and positions.lineno == line:
            return instruction.offset
    raise AssertionError(f"no unpacking on line {line} of the generated pump")


def _unpacked_none(exc: BaseException) -> bool:
    """Whether ``exc`` is what unpacking a bare ``None`` raises ("nothing yet")."""
    return type(exc) is TypeError and exc.args == _NONE_UNPACKED


def _none_unpacked() -> tuple[Any, ...]:
    try:
        _state, _item = None  # type: ignore[misc]
    except TypeError as exc:
        return exc.args
    raise AssertionError("None unpacked")


#: The arguments of the error unpacking ``None`` raises, taken from this interpreter rather
#: than written down: its wording is CPython's to change.
_NONE_UNPACKED = _none_unpacked()


#: How a pump reads each kind of reader (see the template's ``mode``).
_MODES: dict[type, str] = {ManualReader: "pairs", BatchReader: "batches", TestingReader: "items"}


def pumpable(steps: Sequence[plan.Step], reader: Reader) -> bool:
    """Whether ``steps`` (an input's segment without a stateful step) read from ``reader``
    can run as one pump: stateless item steps, then one capture, last."""
    return (
        type(reader) in _MODES
        and bool(steps)
        and isinstance(steps[-1], plan.Capture)
        and all(type(step) in _ITEM_KINDS for step in steps[:-1])
    )


def output_of(sink: Sink, local_workers: int) -> tuple[Callable[..., Any], bool, bool]:
    """How a pump outputs to ``sink``: ``(function, calls, with_epoch)``, where ``calls``
    says the function takes each item (else ``sink.write(batch, epoch)``)."""
    if isinstance(sink, _CallableSink) and local_workers == 1:
        return sink.fn, True, sink.with_epoch
    if isinstance(sink, _BatchCallableSink):
        return sink.hand_over, False, False  # the loop's list is made per call
    return sink.write, False, False


class Pump:
    """The fused loop of one worker's input segment (see the module's docstring). ``output``
    is the capture's per-item function (``calls``, the default) or its sink's ``write``."""

    def __init__(
        self,
        reader: Reader,
        steps: Sequence[plan.Step],
        output: Callable[..., Any],
        calls: bool = True,
        with_epoch: bool = False,
        counted: bool = False,
    ) -> None:
        if type(reader) not in _MODES:
            raise TypeError(f"a pump cannot read a {type(reader).__name__}")
        self.reader = reader
        self.mode = _MODES[type(reader)]
        capture = steps[-1] if steps and isinstance(steps[-1], plan.Capture) else None
        item_steps = list(steps[:-1] if capture is not None else steps)
        self.names = (*(step.name for step in item_steps), capture.name if capture is not None else "the output")
        fns = [step.fn for step in item_steps]  # type: ignore[attr-defined]
        kinds = tuple(_ITEM_KINDS[type(step)] for step in item_steps)
        self._template = _template(kinds, self.mode, calls, with_epoch, counted)
        assert self._template.factory is not None
        #: Counted: what each filter and flat_map let out, and how many items the pump read.
        self._counts = [0] * len(kinds)
        self.read = 0
        self._pump = self._template.factory(_not_bool, self.names, self._counts, *fns, output)
        self._output = output
        self._calls = calls

    def run(self, limit: int, epoch: int) -> int:
        """Carry up to ``limit`` items (a batched input: whole batches until ``limit``) from
        the input to the output; how many were taken (for ``(state, item)`` pairs, when the
        source paused or ran out, the most it can be: they are not counted one by one).
        Raises what the source raised before, once the items before it are out, as
        :meth:`.sources.Reader.read` does."""
        reader = self.reader
        reader.raise_held()
        if reader.exhausted:
            return 0
        taken = 0
        if self.mode == "pairs" and not reader.has_ahead():
            # The loop unpacks yields without looking at their type: the first one of a call
            # is looked at in full (later calls start with the look-ahead of the one before).
            reader.look_ahead()
            if not reader.has_ahead():
                return 0  # nothing yet, the end, or an error raised by the next call
        ahead = reader.take_ahead()
        if ahead and self.mode == "batches":
            # One loop call carries the looked-ahead batch and those after it: one output call.
            return self._carry(chain(ahead, reader.iterator), limit, epoch)
        if ahead:
            taken = self._carry(ahead, 1, epoch, last=False)
            # Let go of it: zip, enumerate and dict.items reuse their tuple for the next
            # yield only when nobody holds the last one (a tenth of a cheap loop).
            del ahead
            if reader.failed:
                return taken
            limit -= 1
            if limit <= 0:
                reader.look_ahead()
                return taken
        source = reader.iterator if self.mode == "batches" else islice(reader.iterator, limit)
        return taken + self._carry(source, limit, epoch)

    def _carry(self, source: Any, limit: int, epoch: int, last: bool = True) -> int:
        """Run the loop over ``source``; ``last``: it reads the input's own iterator, so it
        ends by looking ahead (or finding the input exhausted)."""
        reader = self.reader
        n: int
        try:
            if self._calls:
                with OUTPUT_LOCK:
                    state, stop, n = self._pump(source, limit, epoch)
            else:
                state, stop, n = self._pump(source, limit, epoch)
        except Exception as exc:
            tb = self._entry(exc)
            t = self._template
            local = tb.tb_frame.f_locals if tb is not None else {}
            from_output = tb is not None and t.step_at[tb.tb_lineno - 1] == len(t.kinds)
            if not self._calls and local.get("_out") and not from_output:
                # The items before the failure go out, as they would one at a time.
                self._output(local["_out"], epoch)
            if tb is None or tb.tb_lineno not in (t.source_line, t.unpack_line):
                raise  # a step's error: the worker names the step (step_of)
            state, n = local.get("_state", MISSING), local.get("_n", 0)
            if t.counted:
                for index, kind in enumerate(t.kinds):
                    if kind in _COUNTED_KINDS:
                        self._counts[index] += local.get(f"_c{index}", 0)
            self._settle(state, n)
            # The error is held for the next call, which raises it.
            if tb.tb_lineno == t.unpack_line:
                reader.hold(reader.bad(local["_pair"]))  # a batch's tuple of the wrong length
            elif tb.tb_lasti != t.unpack_offset:
                reader.hold(exc)  # the source failed
            elif not _unpacked_none(exc):  # None: nothing yet, ask again later
                assert isinstance(reader, ManualReader)  # the only one whose yields unpack
                reader.hold(reader.did_not_unpack(exc, reader.state))
            return self._taken(limit, n, state)
        self._settle(state, n)
        if stop is not MISSING:
            if stop is not None:  # None: nothing yet, ask again later
                reader.hold(reader.bad(stop))
            return self._taken(limit, n, state)
        if not last:
            return 1 if self.mode == "pairs" else n
        if self.mode == "pairs":
            reader.look_ahead()
            # All of them, or the input ran out; counted, exactly how many.
            return n if self._template.counted else limit
        if n < limit:
            reader.exhausted = True  # the loop ran out of batches, or of items
            return n
        reader.look_ahead()
        return n

    def _settle(self, state: Any, n: int) -> None:
        """Move the reader's resume state on past what the loop carried."""
        self.read += n
        if self.mode == "items" and n:
            self.reader.handed_out(n, None)
        elif self.mode != "items" and state is not MISSING:
            self.reader.handed_out(n, state)

    def _taken(self, limit: int, n: int, state: Any) -> int:
        if self.mode != "pairs" or self._template.counted:
            return n
        return 0 if state is MISSING else limit

    def items(self) -> list[tuple[int, int]]:
        """Per step (the capture last), the items that went into it and came out of it, as a
        counted pump counted them (:meth:`.chain.Chain.items` for a pump)."""
        counts = list(self._counts)  # one copy: the worker may add to them meanwhile
        flowing = self.read
        out: list[tuple[int, int]] = []
        for index, kind in enumerate(self._template.kinds):
            leaving = counts[index] if kind in _COUNTED_KINDS else flowing
            out.append((flowing, leaving))
            flowing = leaving
        out.append((flowing, flowing))
        return out

    def step_of(self, exc: BaseException) -> str | None:
        """The name of the step that raised ``exc`` (``None``: not raised by a step)."""
        tb = self._entry(exc)
        if tb is None:
            return None
        index = self._template.step_at[tb.tb_lineno - 1]
        return None if index is None else self.names[index]

    def explain(self, exc: BaseException) -> BaseException:
        """``exc``, or a clearer error when a flat_map returned something not iterable."""
        tb = self._entry(exc)
        return exc if tb is None else explain_flat_map(self._template, self.names, exc, tb)

    def _entry(self, exc: BaseException) -> TracebackType | None:
        return traceback_entry(exc, self._template.filename)

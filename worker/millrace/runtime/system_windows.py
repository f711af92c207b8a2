"""Windowed steps on the system clock: ``reduce_window``, ``fold_window`` and
``collect_window`` with :class:`~millrace.window.SystemClockConfig`.

On the system clock an item is timed when it reaches the step, so every key's watermark is the
same: now. A window closes for every key at once, when the clock passes its end, and no item is
ever late. So the state is kept window by window, ``{window index: {key: accumulator}}``, and
folding an item costs one dict lookup and one store, as in a plain loop; the event clock
(:mod:`.windowing`) needs a clock and a dict of windows per key instead.

Snapshots store a key's state in the event clock's per-key form, ``(watermark, seen_at,
{window index: accumulator})``, so stores of either kind restore here.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from datetime import datetime
from itertools import chain
from typing import Any

from .. import plan
from ..common.clock import SYSTEM_CLOCK
from ..window import TumblingWindowConfig
from .keyed import FORGOTTEN, KeyedLogic
from .loop_code import LoopCode
from .windowing import KeyWindows, collected, duration_us, from_us, to_us

_MISSING: Any = object()

_SETUP = ("_emit, _windows, _now = _k.begin_batch()",)

# Per kind: fold ``_value`` into ``_key``'s accumulator in the current window, ``_windows``.
_LOOPS = {
    "reduce_window": LoopCode(
        "reduce_window",
        (*_SETUP, "_reducer = _k.reducer"),
        (
            "try:",
            "    _acc = _windows[_key]",
            "except KeyError:",
            "    _windows[_key] = _value",
            "else:",
            "    _windows[_key] = _reducer(_acc, _value)",
        ),
    ),
    "fold_window": LoopCode(
        "fold_window",
        (*_SETUP, "_builder, _folder = _k.builder, _k.folder"),
        (
            "try:",
            "    _acc = _windows[_key]",
            "except KeyError:",
            "    _acc = _builder()",
            "_windows[_key] = _folder(_acc, _value)",
        ),
    ),
    "collect_window": LoopCode(
        "collect_window",
        _SETUP,
        (
            "try:",
            "    _windows[_key].append((_now, _value))",
            "except KeyError:",
            "    _windows[_key] = [(_now, _value)]",
        ),
    ),
}


class SystemClockWindowLogic(KeyedLogic):
    """One windowed step on the system clock, on one worker."""

    def __init__(
        self,
        step: plan.WindowStep,
        flow_start: datetime,
        clock: Callable[[], datetime] = SYSTEM_CLOCK.now,
    ) -> None:
        self.name = step.name
        self.step_id = step.step_id
        if not isinstance(step.window, TumblingWindowConfig):
            raise TypeError(f"{self.name}: unsupported window configuration {step.window!r}")
        self.window = step.window
        self.length = duration_us(step.window.length)
        self.start = to_us(step.window.start_at or flow_start)
        # The user's functions of the kind of step this is (collect_window has none).
        self.reducer: Callable[[Any, Any], Any] | None = None
        self.builder: Callable[[], Any] | None = None
        self.folder: Callable[[Any, Any], Any] | None = None
        if isinstance(step, plan.ReduceWindow):
            self.reducer = step.reducer
            self.loop_code = _LOOPS["reduce_window"]
        elif isinstance(step, plan.FoldWindow):
            self.builder, self.folder = step.builder, step.folder
            self.loop_code = _LOOPS["fold_window"]
        elif isinstance(step, plan.CollectWindow):
            self.loop_code = _LOOPS["collect_window"]
        else:
            raise TypeError(f"{self.name}: unknown kind of window step {step!r}")
        self._collect = isinstance(step, plan.CollectWindow)
        #: Whether values are combined before they cross (``reduce_window(..., combine=True)``):
        #: then windows close only at epoch ends (:meth:`on_epoch_end`), never on a tick, so
        #: the partials other workers send at an epoch's end still find their window open.
        self.combine = bool(getattr(step, "combine", False) or getattr(step, "merger", None) is not None)
        #: ``merger(acc, partial)``: how a partial another worker sends goes into a window.
        self.merger: Callable[[Any, Any], Any] | None = getattr(step, "merger", None) or self.reducer
        # Windows older than this closed at an epoch's end (with ``combine``).
        self._closed_below = -(1 << 62)
        #: Open windows by index, each ``{key: accumulator}`` in the order keys first came.
        self.open: dict[int, dict[Any, Any]] = {}
        # The newest window the clock has reached; every older one is closed, and items never
        # go into an older one, even if the system clock steps back.
        self._newest = -(1 << 62)
        self._deadline: datetime | None = None
        self._clock = clock

    def rebase(self, flow_start: datetime) -> None:
        if self.window.start_at is None:
            self.start = to_us(flow_start)

    # -- the KeyedLogic interface ----------------------------------------------------------

    def begin_batch(self) -> tuple[list[Any], dict[Any, Any], int]:
        """Before a batch: close the windows the clock has left; return what they emit, the
        window the batch goes into (``{key: accumulator}``) and the clock in microseconds."""
        now = to_us(self._clock())
        out: list[Any] = []
        self._advance((now - self.start) // self.length, out)
        index = self._newest
        windows = self.open.get(index)
        if windows is None:
            windows = self.open[index] = {}
            self._deadline = None
        return out, windows, now

    def next_deadline(self) -> datetime | None:
        if self.combine:
            return None  # closed at epoch ends only
        if self._deadline is None and self.open:
            self._deadline = from_us(self.start + (min(self.open) + 1) * self.length)
        return self._deadline

    def on_tick(self, now: datetime) -> list[Any]:
        out: list[Any] = []
        self._advance((to_us(now) - self.start) // self.length, out)
        return out

    def on_eof(self) -> list[Any]:
        out: list[Any] = []
        self._close_before(None, out)
        return out

    # -- combining (``combine=True``) ------------------------------------------------------

    def window_now(self) -> int:
        """The index of the window a value this worker reads now goes into."""
        return max(self._newest, (to_us(self._clock()) - self.start) // self.length)

    def on_epoch_end(self) -> list[Any]:
        """Every worker has sent everything of the epoch to this step: close the windows the
        clock has left (with ``combine``, the only time but the end of input they close)."""
        out: list[Any] = []
        index = self.window_now()
        self._newest = index
        self._close_before(index, out)
        self._closed_below = index
        return out

    def merge(self, index: int, partials: list[tuple[Any, Any]]) -> None:
        """Fold ``partials``, ``(key, partial)`` pairs another worker reduced in window
        ``index``, into that window. One whose window closed already (only when the sending
        machine's clock is behind this one's) goes into the newest window instead."""
        if index < self._closed_below:
            index = self._newest
        windows = self.open.get(index)
        if windows is None:
            windows = self.open[index] = {}
        merger = self.merger
        assert merger is not None
        get = windows.get
        for key, partial in partials:
            acc = get(key, _MISSING)
            windows[key] = partial if acc is _MISSING else merger(acc, partial)
        if self.touched is not None:
            self.touched.update(key for key, _ in partials)

    def is_empty(self) -> bool:
        return not any(self.open.values())

    def held_keys(self) -> int:
        # One C call per copy: the worker's thread cannot change them in between, under the
        # GIL (str and int keys hash in C).
        windows = list(self.open.values())
        if len(windows) == 1:
            return len(windows[0])
        return len(set().union(*windows))

    def keys(self) -> Collection[Any]:
        if len(self.open) == 1:
            return next(iter(self.open.values())).keys()
        return dict.fromkeys(chain.from_iterable(self.open.values())).keys()

    def exports(self, keys: Iterable[Any]) -> list[tuple[Any, Any]]:
        now = to_us(self._clock())
        open_windows = sorted(self.open.items())
        if len(open_windows) == 1:  # the usual case: only the current window is open
            ((index, accs),) = open_windows
            return [(key, (now, now, {index: accs[key]}) if key in accs else FORGOTTEN) for key in keys]
        exported: list[tuple[Any, Any]] = []
        for key in keys:
            windows = {index: accs[key] for index, accs in open_windows if key in accs}
            exported.append((key, (now, now, windows) if windows else FORGOTTEN))
        return exported

    def restore(self, states: dict[Any, Any]) -> None:
        for key, stored in states.items():
            # A pickled KeyWindows comes from an earlier millrace; a tuple from exports().
            windows = stored.windows if isinstance(stored, KeyWindows) else stored[2]
            for index, acc in windows.items():
                self.open.setdefault(index, {})[key] = acc
        self._deadline = None

    # -- closing ---------------------------------------------------------------------------

    def _advance(self, index: int, out: list[Any]) -> None:
        """The clock is in window ``index``: close every older window (with ``combine``, the
        end of the epoch does)."""
        if index > self._newest:
            if not self.combine:
                self._close_before(index, out)
            self._newest = index

    def _close_before(self, index: int | None, out: list[Any]) -> None:
        """Emit and drop every window older than ``index`` (``None``: every window), oldest
        first, each in the order its keys first came."""
        open_windows = self.open
        due = sorted(i for i in open_windows if index is None or i < index)
        if not due:
            return
        touched = self.touched
        for i in due:
            accs = open_windows.pop(i)
            if touched is not None:
                touched.update(accs)
            if self._collect:
                out.extend((key, collected(acc)) for key, acc in accs.items())
            else:
                out.extend(accs.items())
        self._deadline = None

"""Windowed steps on the event clock: ``reduce_window``, ``fold_window`` and
``collect_window`` with :class:`~millrace.window.EventClockConfig` (the system clock is
:mod:`.system_windows`), and the time arithmetic both share.

Per key, the clock gives each value a time and a watermark; tumbling windows hold one accumulator
each. A window closes, emitting ``(key, result)``, once the key's watermark reaches its end; a
value whose window has already closed is late and dropped. A key with no open window is
removed entirely. A heap of per-key deadlines lets time alone close windows without visiting
every key. A key's entry may be earlier than its true deadline (a later one is never pushed
while an earlier one waits); a tick at it closes what is due, if anything, and schedules the
key again. The keys of a batch are not pushed at once either (that was a push per key per
batch, while events, not time, close most windows): they wait as pending, with the earliest
of their deadlines, and go into the heap when a tick reaches that.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from heapq import heappush
from operator import itemgetter
from typing import Any

from .. import plan
from ..common.clock import SYSTEM_CLOCK
from ..window import EventClockConfig, TumblingWindowConfig
from .errors import bad_keyed_item, describe
from .keyed import KeyedLogic

log = logging.getLogger("millrace.window")
UTC = UTC
_ZERO = timedelta(0)
_by_time = itemgetter(0)
_key_of = itemgetter(0)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_MISSING = object()
_NEVER = float("inf")


def to_us(t: datetime) -> int:
    """An aware datetime as integer microseconds since the Unix epoch (exact: datetimes count
    microseconds). The hot paths below work on these ints, not on datetime objects."""
    return (t - _EPOCH) // _US


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def duration_us(d: timedelta) -> int:
    return d // _US


def collected(acc: list[tuple[int, Any]]) -> list[Any]:
    """A ``collect_window`` result: the values of ``(time, value)`` pairs in time order
    (stable, so values of the same time keep their arrival order)."""
    return [value for _, value in sorted(acc, key=_by_time)]


class KeyWindows:
    """A key's clock and open windows; the unit that is snapshotted per key.

    Times are microseconds since the Unix epoch; snapshots hold datetimes."""

    __slots__ = ("lag", "seen_at", "windows", "first")

    def __init__(self, watermark_base: int, seen_at: int) -> None:
        # The watermark is the latest event time minus the wait (watermark_base, when it came
        # at seen_at), moved forward by the wall time elapsed since: at ``now`` it is
        # ``now - lag``. One subtraction per item, where base and seen_at would take two.
        self.lag = seen_at - watermark_base
        self.seen_at = seen_at
        self.windows: dict[int, Any] = {}
        # No open window has a smaller index (the first one's, or less: the per-item path
        # moves it past closed windows without looking for the next open one).
        self.first = 0

    @property
    def watermark_base(self) -> int:
        return self.seen_at - self.lag

    def __getstate__(self) -> tuple[datetime, datetime, dict[int, Any]]:
        return (from_us(self.watermark_base), from_us(self.seen_at), self.windows)

    def __setstate__(self, state: tuple[datetime, datetime, dict[int, Any]]) -> None:
        base, seen, self.windows = state
        self.seen_at = to_us(seen)
        self.lag = self.seen_at - to_us(base)
        self.first = min(self.windows) if self.windows else 0

    def watermark(self, now: int) -> int:
        return now - self.lag

    def deadline(self, start: int, length: int) -> int:
        """When wall time alone brings the watermark to the end of the first window (or
        earlier: :attr:`first` may be below the first open window), with windows from
        ``start`` of ``length``."""
        return self.lag + start + (self.first + 1) * length


class WindowLogic(KeyedLogic):
    """One windowed step on the event clock, on one worker."""

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
        self.length = duration_us(step.window.length)
        self._start_at = step.window.start_at or flow_start
        self.start = to_us(self._start_at)
        config = step.clock
        if not isinstance(config, EventClockConfig):
            raise TypeError(f"{self.name}: unsupported clock configuration {config!r}")
        self.dt_getter: Callable[[Any], datetime] = config.dt_getter
        self.wait = duration_us(config.wait_for_system_duration)
        self.step = step
        self._fold = self._folder(step)
        self._collect = isinstance(step, plan.CollectWindow)
        self.state: dict[Any, KeyWindows] = {}
        self._heap: list[tuple[int, int, Any]] = []
        # Per key its live heap entry (deadline, seq, key); the heap may also hold superseded ones.
        self._scheduled: dict[Any, tuple[int, int, Any]] = {}
        self._seq = 0
        # Keys whose deadline may be earlier than their heap entry, and a bound no later than
        # the earliest of their deadlines.
        self._pending: dict[Any, KeyWindows] = {}
        self._pending_min: float = _NEVER
        self.late_dropped = 0
        # The system time that moves watermarks on between events (a clock's ``now``).
        self._clock = clock

    def rebase(self, flow_start: datetime) -> None:
        """Use the flow start a recovery store recorded, so window boundaries stay put."""
        if self.step.window.start_at is None:  # type: ignore[attr-defined]
            self._start_at = flow_start
            self.start = to_us(flow_start)

    @staticmethod
    def export(kw: KeyWindows) -> tuple[int, int, dict[int, Any]]:
        """A key's windows as a snapshot stores them: plain ints and the accumulators, which
        are quick to encode."""
        return (kw.watermark_base, kw.seen_at, kw.windows)

    def restore(self, states: dict[Any, Any]) -> None:
        for key, stored in states.items():
            if isinstance(stored, KeyWindows):
                kw = stored  # written by an earlier millrace
            else:
                base, seen, windows = stored
                kw = KeyWindows(base, seen)
                kw.windows = windows
                kw.first = min(windows) if windows else 0
            self.state[key] = kw
            self._settle(key, kw)

    # -- time ------------------------------------------------------------------------------

    def _checked_event_time(self, t: Any, value: Any) -> int:
        """``t`` (what the clock's getter returned for ``value``) in microseconds, or a clear
        error for anything but an aware UTC datetime."""
        if not isinstance(t, datetime):
            raise TypeError(
                f"{self.name}: the clock's dt_getter must return a datetime, got {describe(t)} "
                f"for the value {describe(value)}"
            )
        offset = t.utcoffset()
        if offset is None:
            raise ValueError(
                f"{self.name}: the clock's dt_getter returned the naive datetime {t!r} for "
                f"the value {describe(value)}; event times must be timezone-aware UTC, "
                "e.g. datetime(..., tzinfo=timezone.utc)"
            )
        if offset != _ZERO:
            raise ValueError(
                f"{self.name}: the clock's dt_getter returned {t!r}, which is not UTC, for "
                f"the value {describe(value)}; convert it with .astimezone(timezone.utc)"
            )
        return (t - _EPOCH) // _US

    # -- folding ---------------------------------------------------------------------------

    @staticmethod
    def _folder(step: plan.WindowStep) -> Any:
        """``fold(windows, index, t, value)`` for the step's kind, chosen once."""
        if isinstance(step, plan.ReduceWindow):
            reducer = step.reducer

            def fold(windows: dict[int, Any], index: int, t: int, value: Any) -> None:
                acc = windows.get(index, _MISSING)
                windows[index] = value if acc is _MISSING else reducer(acc, value)

        elif isinstance(step, plan.FoldWindow):
            builder, folder = step.builder, step.folder

            def fold(windows: dict[int, Any], index: int, t: int, value: Any) -> None:
                acc = windows.get(index, _MISSING)
                windows[index] = folder(builder() if acc is _MISSING else acc, value)

        else:

            def fold(windows: dict[int, Any], index: int, t: int, value: Any) -> None:
                if index in windows:
                    windows[index].append((t, value))
                else:
                    windows[index] = [(t, value)]

        return fold

    def _result(self, acc: Any) -> Any:
        return collected(acc) if self._collect else acc

    # -- closing ---------------------------------------------------------------------------

    def _close_due(self, key: Any, kw: KeyWindows, watermark: int, out: list[Any]) -> None:
        windows = kw.windows
        start, length = self.start, self.length
        kw.first = min(windows) if windows else 0
        if not windows or start + (kw.first + 1) * length > watermark:
            return  # an early entry (see the module's docstring): nothing is due yet
        if self.touched is not None:
            self.touched.add(key)
        for index in sorted(windows):
            if start + (index + 1) * length > watermark:
                kw.first = index
                break
            out.append((key, self._result(windows.pop(index))))

    def _settle(self, key: Any, kw: KeyWindows) -> None:
        """Forget a key without windows, or make it pending (see the module's docstring)."""
        if not kw.windows:
            self._forget(key)
            return
        self._pending[key] = kw
        self._pending_min = min(self._pending_min, kw.deadline(self.start, self.length))

    def _forget(self, key: Any) -> None:
        """A key whose last window closed: no state, no schedule."""
        del self.state[key]
        self._scheduled.pop(key, None)
        self._pending.pop(key, None)

    # -- the KeyedLogic interface ----------------------------------------------------------

    def on_batch(self, batch: list[tuple[Any, Any]]) -> list[Any]:
        # The per-item path, with the common cases inlined: an aware UTC event time, a fold
        # into an open window, nothing due. Times here are int microseconds since the
        # windows' start, so that an index is one division and the watermark one subtraction
        # (these ints are big, and each operation on them allocates).
        now = to_us(self._clock())
        start, length, wait = self.start, self.length, self.wait
        since_start = now - start
        start_at = self._start_at
        state = self.state
        fold = self._fold
        # A fold_window's fold inlined below (the common case of the benchmarks): no call
        # per item for the fold itself.
        folding = isinstance(self.step, plan.FoldWindow)
        builder: Any = self.step.builder if folding else None  # type: ignore[attr-defined]
        folder: Any = self.step.folder if folding else None  # type: ignore[attr-defined]
        collect = self._collect
        getter = self.dt_getter
        out: list[Any] = []
        unsettled: dict[Any, KeyWindows] = {}
        pending = self._pending
        tuple_, str_, int_, type_ = tuple, str, int, type
        for item in batch:
            if type_(item) is not tuple_:
                raise bad_keyed_item(self.name, item)
            key, value = item
            key_type = type_(key)
            if key_type is not str_ and key_type is not int_:
                raise bad_keyed_item(self.name, item)
            event_at = getter(value)
            if type(event_at) is datetime and event_at.tzinfo is UTC:
                t = (event_at - start_at) // _US
            else:
                t = self._checked_event_time(event_at, value) - start
            candidate = t - wait
            kw = state.get(key)
            if kw is None:
                kw = state[key] = KeyWindows(candidate + start, now)
                watermark = candidate
            else:
                watermark = since_start - kw.lag
                if candidate > watermark:
                    kw.lag = since_start - candidate
                    kw.seen_at = now
                    watermark = candidate
            index = t // length
            # Windows before this one have ended by the watermark: they are closed.
            open_from = watermark // length
            windows = kw.windows
            if index < open_from:
                self.late_dropped += 1
                log.debug("%s: dropped late value %r of key %r at %s", self.name, value, key, from_us(t + start))
            else:
                if not windows or index < kw.first:
                    kw.first = index
                if folding:
                    acc = windows.get(index, _MISSING)
                    windows[index] = folder(builder() if acc is _MISSING else acc, value)
                else:
                    fold(windows, index, t + start, value)
            if windows:
                first = kw.first
                if first < open_from:
                    # Close what the watermark passed, oldest first: usually a window or
                    # two, so the slots up to the last one due are tried in turn, no sort.
                    if open_from - first <= 8:
                        for index in range(first, open_from):
                            acc = windows.pop(index, _MISSING)
                            if acc is not _MISSING:
                                out.append((key, collected(acc) if collect else acc))
                    else:  # a long gap since the key's last event
                        for index in sorted(windows):
                            if index >= open_from:
                                break
                            acc = windows.pop(index)
                            out.append((key, collected(acc) if collect else acc))
                    kw.first = open_from
                    if not windows:
                        self._forget(key)
                        unsettled.pop(key, None)
                        continue
                unsettled[key] = kw
            else:
                # Freed at once, not at the end of the batch, so results never depend on
                # how items happened to be batched.
                self._forget(key)
                unsettled.pop(key, None)
        # Every key here has windows (a key that lost them left unsettled): pending, see the
        # module's docstring.
        pending_min = self._pending_min
        for kw in unsettled.values():
            deadline = kw.lag + start + (kw.first + 1) * length  # kw.deadline(), inlined
            if deadline < pending_min:
                pending_min = deadline
        self._pending_min = pending_min
        pending.update(unsettled)
        if self.touched is not None:
            self.touched.update(map(_key_of, batch))
        return out

    def _schedule_pending(self) -> None:
        """Push the pending keys whose deadline is earlier than their heap entry."""
        scheduled, heap, seq = self._scheduled, self._heap, self._seq
        start, length = self.start, self.length
        for key, kw in self._pending.items():
            deadline = kw.lag + start + (kw.first + 1) * length  # kw.deadline(), inlined
            entry = scheduled.get(key)
            if entry is None or deadline < entry[0]:
                seq += 1
                scheduled[key] = entry = (deadline, seq, key)
                heappush(heap, entry)
        self._seq = seq
        self._pending.clear()
        self._pending_min = _NEVER
        if len(heap) > 2 * len(scheduled) + 1024:
            heap[:] = scheduled.values()  # mostly superseded entries: rebuilt from the live ones
            heapq.heapify(heap)

    def next_deadline(self) -> datetime | None:
        heap = self._heap
        earliest = heap[0][0] if heap else _NEVER
        if self._pending and self._pending_min < earliest:
            earliest = self._pending_min
        return None if earliest == _NEVER else from_us(int(earliest))

    def on_tick(self, now: datetime) -> list[Any]:
        out: list[Any] = []
        heap = self._heap
        now_us = to_us(now)
        if self._pending and self._pending_min <= now_us:
            self._schedule_pending()
        while heap and heap[0][0] <= now_us:
            entry = heapq.heappop(heap)
            key = entry[2]
            if self._scheduled.get(key) is not entry:
                continue  # superseded by a later schedule
            del self._scheduled[key]
            kw = self.state[key]
            self._close_due(key, kw, kw.watermark(now_us), out)
            self._settle(key, kw)
        return out

    def on_eof(self) -> list[Any]:
        out: list[Any] = []
        if self.touched is not None:
            self.touched.update(self.state)
        for key, kw in self.state.items():
            for index in sorted(kw.windows):
                out.append((key, self._result(kw.windows[index])))
        self.state.clear()
        self._heap.clear()
        self._scheduled.clear()
        self._pending.clear()
        self._pending_min = _NEVER
        return out

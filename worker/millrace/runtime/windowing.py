"""Windowed steps: ``reduce_window``, ``fold_window`` and ``collect_window``.

Per key, a clock gives each value a time and a watermark; tumbling windows hold one accumulator
each. A window closes, emitting ``(key, result)``, once the key's watermark reaches its end; a
value whose window has already closed is late and dropped. A key with no open window is
removed entirely. A heap of per-key deadlines lets time alone close windows without visiting
every key.
"""

from __future__ import annotations

import heapq
import logging
from datetime import datetime, timedelta, timezone
from operator import itemgetter
from typing import Any

from .. import plan
from ..window import EventClockConfig, SystemClockConfig, TumblingWindowConfig
from .errors import describe
from .keyed import KeyedLogic

log = logging.getLogger("millrace.window")
UTC = timezone.utc
_ZERO = timedelta(0)
_by_time = itemgetter(0)


def utcnow() -> datetime:
    return datetime.now(UTC)


class KeyWindows:
    """A key's clock and open windows; the unit that is snapshotted per key."""

    __slots__ = ("watermark_base", "seen_at", "windows")

    def __init__(self, watermark_base: datetime, seen_at: datetime) -> None:
        # watermark(now) = watermark_base + (now - seen_at): the latest event time minus the
        # wait, moved forward by the wall time elapsed since that event came.
        self.watermark_base = watermark_base
        self.seen_at = seen_at
        self.windows: dict[int, Any] = {}

    def __getstate__(self) -> tuple[datetime, datetime, dict[int, Any]]:
        return (self.watermark_base, self.seen_at, self.windows)

    def __setstate__(self, state: tuple[datetime, datetime, dict[int, Any]]) -> None:
        self.watermark_base, self.seen_at, self.windows = state

    def watermark(self, now: datetime) -> datetime:
        return self.watermark_base + (now - self.seen_at)


class WindowLogic(KeyedLogic):
    """One windowed step on one worker."""

    def __init__(self, step: plan.WindowStep, flow_start: datetime) -> None:
        self.name = step.name
        self.step_id = step.step_id
        if not isinstance(step.window, TumblingWindowConfig):
            raise TypeError(f"{self.name}: unsupported window configuration {step.window!r}")
        self.length: timedelta = step.window.length
        self.start: datetime = step.window.start_at or flow_start
        clock = step.clock
        if isinstance(clock, EventClockConfig):
            self.dt_getter = clock.dt_getter
            self.wait = clock.wait_for_system_duration
        elif isinstance(clock, SystemClockConfig):
            self.dt_getter = None
            self.wait = _ZERO
        else:
            raise TypeError(f"{self.name}: unsupported clock configuration {clock!r}")
        self.step = step
        self.state: dict[Any, KeyWindows] = {}
        self._heap: list[tuple[datetime, int, Any]] = []
        self._scheduled: dict[Any, datetime] = {}
        self._seq = 0
        self.late_dropped = 0

    def rebase(self, flow_start: datetime) -> None:
        """Use the flow start a recovery store recorded, so window boundaries stay put."""
        if self.step.window.start_at is None:  # type: ignore[attr-defined]
            self.start = flow_start

    def restore(self, states: dict[Any, Any]) -> None:
        for key, kw in states.items():
            self.state[key] = kw
            self._settle(key, kw)

    # -- time ------------------------------------------------------------------------------

    def _event_time(self, value: Any) -> datetime:
        t = self.dt_getter(value)  # type: ignore[misc]
        if not isinstance(t, datetime):
            raise TypeError(
                f"{self.name}: the clock's dt_getter must return a datetime, got {describe(t)} "
                f"for the value {describe(value)}"
            )
        if t.tzinfo is not UTC:
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
        return t

    def _end(self, index: int) -> datetime:
        return self.start + (index + 1) * self.length

    # -- folding ---------------------------------------------------------------------------

    def _fold(self, windows: dict[int, Any], index: int, t: datetime, value: Any) -> None:
        step = self.step
        if isinstance(step, plan.ReduceWindow):
            if index in windows:
                windows[index] = step.reducer(windows[index], value)
            else:
                windows[index] = value
        elif isinstance(step, plan.FoldWindow):
            acc = windows[index] if index in windows else step.builder()
            windows[index] = step.folder(acc, value)
        else:
            windows.setdefault(index, []).append((t, value))

    def _result(self, acc: Any) -> Any:
        if isinstance(self.step, plan.CollectWindow):
            return [value for _, value in sorted(acc, key=_by_time)]
        return acc

    # -- closing ---------------------------------------------------------------------------

    def _close_due(self, key: Any, kw: KeyWindows, watermark: datetime, out: list[Any]) -> None:
        windows = kw.windows
        if self.touched is not None:
            self.touched.add(key)
        for index in sorted(windows):
            if self._end(index) > watermark:
                break
            out.append((key, self._result(windows.pop(index))))

    def _settle(self, key: Any, kw: KeyWindows) -> None:
        """Forget a key without windows, or schedule the tick that closes its first window."""
        if not kw.windows:
            del self.state[key]
            self._scheduled.pop(key, None)
            return
        first_end = self._end(min(kw.windows))
        deadline = kw.seen_at + (first_end - kw.watermark_base)
        if self._scheduled.get(key) != deadline:
            self._scheduled[key] = deadline
            self._seq += 1
            heapq.heappush(self._heap, (deadline, self._seq, key))

    # -- the KeyedLogic interface ----------------------------------------------------------

    def on_batch(self, batch: list[tuple[Any, Any]]) -> list[Any]:
        now = utcnow()
        state = self.state
        length = self.length
        start = self.start
        wait = self.wait
        event_clock = self.dt_getter is not None
        out: list[Any] = []
        unsettled: dict[Any, KeyWindows] = {}
        for key, value in batch:
            t = self._event_time(value) if event_clock else now
            kw = state.get(key)
            if kw is None:
                kw = state[key] = KeyWindows(t - wait, now)
            else:
                candidate = t - wait
                if candidate > kw.watermark(now):
                    kw.watermark_base = candidate
                    kw.seen_at = now
            watermark = kw.watermark(now)
            index = (t - start) // length
            if self._end(index) <= watermark:
                self.late_dropped += 1
                log.debug("%s: dropped late value %r of key %r at %s", self.name, value, key, t)
            else:
                self._fold(kw.windows, index, t, value)
            self._close_due(key, kw, watermark, out)
            if kw.windows:
                unsettled[key] = kw
            else:
                # Freed at once, not at the end of the batch, so results never depend on
                # how items happened to be batched.
                del state[key]
                self._scheduled.pop(key, None)
                unsettled.pop(key, None)
        for key, kw in unsettled.items():
            self._settle(key, kw)
        return out

    def next_deadline(self) -> datetime | None:
        return self._heap[0][0] if self._heap else None

    def on_tick(self, now: datetime) -> list[Any]:
        out: list[Any] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, key = heapq.heappop(heap)
            if self._scheduled.get(key) != deadline:
                continue  # superseded by a later schedule
            del self._scheduled[key]
            kw = self.state[key]
            self._close_due(key, kw, kw.watermark(now), out)
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
        return out

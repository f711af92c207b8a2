"""Clocks and windows for :meth:`Dataflow.reduce_window`, ``fold_window`` and ``collect_window``.

A clock gives each item a time and keeps a watermark: the time before which no more items are
expected. A window closes once the watermark passes its end; an item that belongs to a closed
window is late and dropped. At end of input every open window closes. Clock and windows are kept
per key, and a key with no open window keeps no state at all.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

__all__ = [
    "ClockConfig",
    "SystemClockConfig",
    "EventClockConfig",
    "WindowConfig",
    "TumblingWindowConfig",
]


class ClockConfig:
    """Base class of clock configurations."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SystemClockConfig(ClockConfig):
    """Item time is the wall-clock time (UTC) at which the window step processes the item.

    The watermark is the current time, so no item is ever late.
    """


class EventClockConfig(ClockConfig):
    """Item time is ``dt_getter(value)``, a timezone-aware UTC :class:`~datetime.datetime`.

    The watermark of a key is the largest event time seen for it minus
    ``wait_for_system_duration``, moved forward by the wall time elapsed since that item came.

    >>> from datetime import datetime, timedelta, timezone
    >>> clock = EventClockConfig(lambda v: v["at"], wait_for_system_duration=timedelta(seconds=5))
    >>> clock.wait_for_system_duration
    datetime.timedelta(seconds=5)
    """

    def __init__(
        self,
        dt_getter: Callable[[Any], datetime],
        wait_for_system_duration: timedelta = timedelta(0),
    ) -> None:
        if not callable(dt_getter):
            raise TypeError(f"EventClockConfig needs a callable dt_getter, got {dt_getter!r}")
        if not isinstance(wait_for_system_duration, timedelta):
            raise TypeError(
                "EventClockConfig wait_for_system_duration must be a datetime.timedelta, "
                f"got {wait_for_system_duration!r}"
            )
        if wait_for_system_duration < timedelta(0):
            raise ValueError(
                "EventClockConfig wait_for_system_duration must not be negative, "
                f"got {wait_for_system_duration!r}"
            )
        self.dt_getter = dt_getter
        self.wait_for_system_duration = wait_for_system_duration

    def __repr__(self) -> str:
        return (
            f"EventClockConfig({self.dt_getter!r}, "
            f"wait_for_system_duration={self.wait_for_system_duration!r})"
        )


class WindowConfig:
    """Base class of window configurations."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class TumblingWindowConfig(WindowConfig):
    """Back-to-back windows of ``length``: ``[start_at + k*length, start_at + (k+1)*length)``.

    ``start_at`` (timezone-aware) defaults to the time the flow starts.

    >>> from datetime import datetime, timedelta, timezone
    >>> TumblingWindowConfig(timedelta(minutes=1), datetime(2023, 1, 1, tzinfo=timezone.utc))
    TumblingWindowConfig(length=datetime.timedelta(seconds=60), start_at=datetime.datetime(2023, 1, 1, 0, 0, tzinfo=datetime.timezone.utc))
    """

    def __init__(self, length: timedelta, start_at: datetime | None = None) -> None:
        if not isinstance(length, timedelta):
            raise TypeError(f"TumblingWindowConfig length must be a timedelta, got {length!r}")
        if length <= timedelta(0):
            raise ValueError(f"TumblingWindowConfig length must be positive, got {length!r}")
        if start_at is not None:
            if not isinstance(start_at, datetime):
                raise TypeError(
                    f"TumblingWindowConfig start_at must be a datetime, got {start_at!r}"
                )
            if start_at.tzinfo is None or start_at.utcoffset() is None:
                raise ValueError(
                    "TumblingWindowConfig start_at must be timezone-aware (UTC), "
                    f"got the naive {start_at!r}"
                )
        self.length = length
        self.start_at = start_at

    def __repr__(self) -> str:
        return f"TumblingWindowConfig(length={self.length!r}, start_at={self.start_at!r})"

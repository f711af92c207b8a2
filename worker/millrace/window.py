"""Clocks and windows for :meth:`Dataflow.reduce_window`, ``fold_window`` and ``collect_window``.

A clock gives each item a time and keeps a watermark: the time before which no more items are
expected. A window closes once the watermark passes its end; an item that belongs to a closed
window is late and dropped. At end of input every open window closes. Clock and windows are kept
per key, and a key with no open window keeps no state at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .common.fields import check_callable, check_type

__all__ = [
    "ClockConfig",
    "SystemClockConfig",
    "EventClockConfig",
    "WindowConfig",
    "TumblingWindowConfig",
]


@dataclass(frozen=True)
class ClockConfig:
    """Base class of clock configurations (frozen dataclasses, like every configuration)."""


@dataclass(frozen=True)
class SystemClockConfig(ClockConfig):
    """Item time is the wall-clock time (UTC) at which the window step processes the item.

    The watermark is the current time, so no item is ever late. At the end of the input every
    open window closes.

    >>> from datetime import timedelta
    >>> from millrace.dataflow import Dataflow
    >>> from millrace.execution import run_main
    >>> from millrace.inputs import TestingInputConfig
    >>> from millrace.outputs import StdOutputConfig
    >>> flow = Dataflow()
    >>> flow.input("inp", TestingInputConfig([("a", 1), ("b", 2), ("a", 3)]))
    >>> hour = TumblingWindowConfig(timedelta(hours=1))
    >>> flow.reduce_window("sum", SystemClockConfig(), hour, lambda total, x: total + x)
    >>> flow.capture(StdOutputConfig())
    >>> run_main(flow)
    ('a', 4)
    ('b', 2)
    """


@dataclass(frozen=True)
class EventClockConfig(ClockConfig):
    """Item time is ``dt_getter(value)``, a timezone-aware UTC :class:`~datetime.datetime`.

    The watermark of a key is the largest event time seen for it minus
    ``wait_for_system_duration``, moved forward by the wall time elapsed since that item came.

    >>> from datetime import datetime, timedelta, timezone
    >>> clock = EventClockConfig(lambda v: v["at"], wait_for_system_duration=timedelta(seconds=5))
    >>> clock.wait_for_system_duration
    datetime.timedelta(seconds=5)
    """

    dt_getter: Callable[[Any], datetime]
    wait_for_system_duration: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        check_callable(self, "dt_getter")
        check_type(self, "wait_for_system_duration", timedelta, "a datetime.timedelta")
        if self.wait_for_system_duration < timedelta(0):
            raise ValueError(
                f"EventClockConfig wait_for_system_duration must not be negative, got {self.wait_for_system_duration!r}"
            )


@dataclass(frozen=True)
class WindowConfig:
    """Base class of window configurations (frozen dataclasses, like every configuration)."""


@dataclass(frozen=True)
class TumblingWindowConfig(WindowConfig):
    """Back-to-back windows of ``length``: ``[start_at + k*length, start_at + (k+1)*length)``.

    ``start_at`` (timezone-aware) defaults to the time the flow starts.

    >>> from datetime import datetime, timedelta, timezone
    >>> TumblingWindowConfig(timedelta(minutes=1), datetime(2023, 1, 1, tzinfo=timezone.utc))
    TumblingWindowConfig(length=datetime.timedelta(seconds=60),
                         start_at=datetime.datetime(2023, 1, 1, 0, 0, tzinfo=datetime.timezone.utc))
    """

    length: timedelta
    start_at: datetime | None = None

    def __post_init__(self) -> None:
        check_type(self, "length", timedelta, "a timedelta")
        if self.length <= timedelta(0):
            raise ValueError(f"TumblingWindowConfig length must be positive, got {self.length!r}")
        start_at = self.start_at
        if start_at is not None:
            check_type(self, "start_at", datetime, "a datetime")
            if start_at.tzinfo is None or start_at.utcoffset() is None:
                raise ValueError(
                    f"TumblingWindowConfig start_at must be timezone-aware (UTC), got the naive {start_at!r}"
                )

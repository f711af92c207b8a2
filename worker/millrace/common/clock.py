"""The clocks millrace reads: one small abstraction, so that tests can drive time instead of
waiting for it (as Bytewax's testing clock and kopf's ``looptime`` do).

A :class:`Clock` answers two questions: what time it is (:meth:`Clock.now`, an aware UTC
``datetime``: window boundaries, system-clock item times, event-clock watermarks, the flow's
start) and how many seconds have passed (:meth:`Clock.monotonic`: when a periodic epoch ends,
and the transport's liveness timers).

:data:`SYSTEM_CLOCK` is the machine's clock and the default everywhere. A :class:`ManualClock`
moves only when told to (:meth:`ManualClock.advance`); install it around a run with
:func:`installed` (also offered as :func:`millrace.testing.use_clock`), and the run's epochs
and windows follow it::

    >>> from datetime import UTC, datetime, timedelta
    >>> clock = ManualClock(datetime(2024, 1, 1, tzinfo=UTC))
    >>> clock.advance(timedelta(seconds=90))
    >>> clock.now(), clock.monotonic()
    (datetime.datetime(2024, 1, 1, 0, 1, 30, tzinfo=datetime.timezone.utc), 90.0)

The installed clock is read once, when a run starts (``run_main``, ``cluster_main``,
``spawn_cluster``), and handed to its workers: the per-batch paths then call the clock's
functions directly, and a run never changes clocks halfway. It is a process-wide setting, not
a thread-local one, so the thread "processes" of :data:`millrace.testing.doctest_ctx` share it.

Timers that supervise real threads and processes (how long to wait for a peer, for a stuck
worker, for a failing process to leave) always read :data:`SYSTEM_CLOCK`: a test clock that
nobody advances must not stop a cluster from noticing a dead peer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "ManualClock", "SystemClock", "current", "installed"]


class Clock(Protocol):
    """What millrace asks of a clock."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start; never goes back."""
        ...


class SystemClock:
    """The machine's clocks: ``datetime.now(timezone.utc)`` and ``time.monotonic()``."""

    # Static attributes holding the C callables themselves, so a caller that binds
    # ``clock.now`` or ``clock.monotonic`` once (as the per-batch paths do) pays no Python
    # frame per call: the system clock costs what the direct reads it replaced cost.
    now = staticmethod(partial(datetime.now, UTC))
    monotonic = staticmethod(time.monotonic)

    def __repr__(self) -> str:
        return "millrace.common.clock.SYSTEM_CLOCK"

    def __reduce__(self) -> str:
        # One system clock per process: unpickling gives the receiver's own.
        return "SYSTEM_CLOCK"


#: The machine's clock: the default of every run.
SYSTEM_CLOCK = SystemClock()

#: Where a :class:`ManualClock` starts unless told otherwise: fixed, so that runs under it
#: (window boundaries that default to the flow's start, for one) repeat exactly.
MANUAL_START = datetime(2000, 1, 1, tzinfo=UTC)


class ManualClock:
    """A clock that stands still until :meth:`advance` moves it; for tests.

    ``now()`` starts at ``start`` (aware UTC) and ``monotonic()`` at 0; both move together.
    Any thread may advance it (a flow's own input, say, which makes the point in the input
    where time passes exact). It pickles, so :func:`~millrace.execution.spawn_cluster` can
    hand each process a copy along with the flow.

    >>> clock = ManualClock()
    >>> clock.now()
    datetime.datetime(2000, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
    >>> clock.advance(1.5)
    >>> clock.monotonic()
    1.5
    """

    def __init__(self, start: datetime = MANUAL_START) -> None:
        if not isinstance(start, datetime) or start.utcoffset() != timedelta(0):
            raise ValueError(f"ManualClock start must be an aware UTC datetime, got {start!r}")
        self._start = start.astimezone(UTC)
        self._now = self._start
        # advance() reads and writes _now; readers only read it, which is atomic.
        self._lock = threading.Lock()

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return (self._now - self._start).total_seconds()

    def advance(self, by: timedelta | float) -> None:
        """Move the clock forward by ``by`` (a ``timedelta`` or seconds)."""
        delta = by if isinstance(by, timedelta) else timedelta(seconds=by)
        if delta < timedelta(0):
            raise ValueError(f"a clock only moves forward, got {by!r}")
        with self._lock:
            self._now += delta

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now.isoformat()})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lock"]  # a lock does not pickle; each copy gets its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


_current: Clock = SYSTEM_CLOCK


def current() -> Clock:
    """The clock runs started now will read (:data:`SYSTEM_CLOCK` unless one is installed)."""
    return _current


@contextmanager
def installed(clock: Clock) -> Iterator[Clock]:
    """Within the ``with`` block, runs that start read ``clock``; the previous clock is put
    back after it."""
    global _current
    previous, _current = _current, clock
    try:
        yield clock
    finally:
        _current = previous

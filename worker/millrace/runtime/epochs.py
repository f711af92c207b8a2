"""When an epoch ends at the input: after a span of wall time, or after every item."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from ..common.clock import SYSTEM_CLOCK

# Large enough that per-batch overhead vanishes, small enough that a batch stays in cache and
# a periodic epoch is not overshot by much.
BATCH_SIZE = 1024
# About how long one batch may take through the steps: a worker looks at its messages, its
# windows' deadlines, the end of its epoch and whether the cluster is stopping (Ctrl-C) only
# between batches, so a batch of slow steps must not hold it for long.
BATCH_SECONDS = 0.01


class BatchSizer:
    """How many items a worker's next read may take, so that a batch takes about
    :data:`BATCH_SECONDS` through the steps: from one item, doubling after each full batch that
    took less than half of it, up to :data:`BATCH_SIZE`; cut in proportion after one that took
    longer. Fast steps reach full batches within a dozen reads; slow ones (a step that waits
    on a service) get batches of a few items, and the worker answers in time.

    >>> sizer = BatchSizer()
    >>> sizer.limit
    1
    >>> for _ in range(12):
    ...     sizer.took(sizer.limit, 0.0001)
    >>> sizer.limit
    1024
    >>> sizer.took(1024, 0.04)  # four times too long
    >>> sizer.limit
    256
    >>> sizer.took(3, 0.5)
    >>> sizer.limit
    1
    """

    def __init__(self, ceiling: int = BATCH_SIZE, seconds: float = BATCH_SECONDS) -> None:
        self.ceiling = ceiling
        self.seconds = seconds
        self.limit = 1

    def took(self, items: int, seconds: float) -> None:
        """A batch of ``items`` took ``seconds`` through the steps."""
        if seconds > self.seconds:
            self.limit = max(1, min(self.limit, int(items * self.seconds / seconds)))
        elif items >= self.limit and seconds * 2 <= self.seconds:
            # Only a full batch says the steps could take more.
            self.limit = min(self.ceiling, self.limit * 2)


class EpochPolicy:
    """Decides how many items the next read may take and whether the epoch is over."""

    def begin(self) -> None:
        """A new epoch starts now."""
        self.items = 0

    def limit(self) -> int:
        raise NotImplementedError

    def over(self) -> bool:
        raise NotImplementedError


class PeriodicEpochs(EpochPolicy):
    """An epoch ends once ``length`` has passed on ``monotonic`` (a clock's ``monotonic``;
    bound here once because :meth:`over` is asked after every batch)."""

    def __init__(self, length: timedelta, monotonic: Callable[[], float] = SYSTEM_CLOCK.monotonic) -> None:
        self.seconds = length.total_seconds()
        self.ends_at = 0.0
        self._monotonic = monotonic

    def begin(self) -> None:
        super().begin()
        self.ends_at = self._monotonic() + self.seconds

    def limit(self) -> int:
        return BATCH_SIZE

    def over(self) -> bool:
        return self._monotonic() >= self.ends_at


class ItemEpochs(EpochPolicy):
    """Every input item is its own epoch (``TestingEpochConfig``)."""

    def limit(self) -> int:
        return 1 - self.items

    def over(self) -> bool:
        return self.items >= 1

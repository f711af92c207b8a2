"""When an epoch ends at the input: after a span of wall time, or after every item."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from ..common.clock import SYSTEM_CLOCK

# Large enough that per-batch overhead vanishes, small enough that a batch stays in cache and
# a periodic epoch is not overshot by much.
BATCH_SIZE = 1024


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

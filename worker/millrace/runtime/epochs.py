"""When an epoch ends at the input: after a span of wall time, or after every item."""

from __future__ import annotations

import time
from datetime import timedelta

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
    def __init__(self, length: timedelta) -> None:
        self.seconds = length.total_seconds()
        self.ends_at = 0.0

    def begin(self) -> None:
        super().begin()
        self.ends_at = time.monotonic() + self.seconds

    def limit(self) -> int:
        return BATCH_SIZE

    def over(self) -> bool:
        return time.monotonic() >= self.ends_at


class ItemEpochs(EpochPolicy):
    """Every input item is its own epoch (``TestingEpochConfig``)."""

    def limit(self) -> int:
        return 1 - self.items

    def over(self) -> bool:
        return self.items >= 1

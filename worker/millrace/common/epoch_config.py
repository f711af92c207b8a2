"""Epoch configurations: when the input starts a new epoch. Users import them from
:mod:`millrace.execution`; the runtime turns them into an ``EpochPolicy``
(:mod:`millrace.runtime.epochs`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

__all__ = ["EpochConfig", "PeriodicEpochConfig", "TestingEpochConfig"]


@dataclass(frozen=True)
class EpochConfig:
    """Base class of epoch configurations: when the input starts a new epoch."""


@dataclass(frozen=True)
class PeriodicEpochConfig(EpochConfig):
    """A new epoch starts when ``epoch_length`` of wall time has passed (default 10 s).

    Epoch ends are when snapshots are taken, so this bounds how much input is replayed after
    a crash.

    >>> PeriodicEpochConfig(timedelta(seconds=1))
    PeriodicEpochConfig(epoch_length=datetime.timedelta(seconds=1))
    """

    epoch_length: timedelta = timedelta(seconds=10)

    def __post_init__(self) -> None:
        if not isinstance(self.epoch_length, timedelta):
            raise TypeError(f"PeriodicEpochConfig epoch_length must be a timedelta, got {self.epoch_length!r}")
        if self.epoch_length <= timedelta(0):
            raise ValueError(f"PeriodicEpochConfig epoch_length must be positive, got {self.epoch_length!r}")


@dataclass(frozen=True)
class TestingEpochConfig(EpochConfig):
    """Every input item is its own epoch: deterministic epochs for tests.

    >>> from millrace.dataflow import Dataflow
    >>> from millrace.execution import run_main
    >>> from millrace.inputs import TestingInputConfig
    >>> from millrace.outputs import TestingEpochOutputConfig
    >>> out = []
    >>> flow = Dataflow()
    >>> flow.input("inp", TestingInputConfig(["a", "b", "c"]))
    >>> flow.capture(TestingEpochOutputConfig(out))
    >>> run_main(flow, epoch_config=TestingEpochConfig())
    >>> out
    [(0, 'a'), (1, 'b'), (2, 'c')]
    """

    __test__ = False

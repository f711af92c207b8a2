"""Running a flow: on one worker (:func:`run_main`), on local processes (:func:`spawn_cluster`),
or as one process of a cluster whose members are given by address (:func:`cluster_main`).
"""

from __future__ import annotations

from datetime import timedelta

from .dataflow import Dataflow
from .recovery import RecoveryConfig
from .runtime import engine

__all__ = [
    "EpochConfig",
    "PeriodicEpochConfig",
    "TestingEpochConfig",
    "run_main",
    "cluster_main",
    "spawn_cluster",
]


class EpochConfig:
    """Base class of epoch configurations: when the input starts a new epoch."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PeriodicEpochConfig(EpochConfig):
    """A new epoch starts when ``epoch_length`` of wall time has passed (default 10 s).

    Epoch ends are when snapshots are taken, so this bounds how much input is replayed after
    a crash.

    >>> PeriodicEpochConfig(timedelta(seconds=1))
    PeriodicEpochConfig(epoch_length=datetime.timedelta(seconds=1))
    """

    def __init__(self, epoch_length: timedelta = timedelta(seconds=10)) -> None:
        if not isinstance(epoch_length, timedelta):
            raise TypeError(
                f"PeriodicEpochConfig epoch_length must be a timedelta, got {epoch_length!r}"
            )
        if epoch_length <= timedelta(0):
            raise ValueError(
                f"PeriodicEpochConfig epoch_length must be positive, got {epoch_length!r}"
            )
        self.epoch_length = epoch_length

    def __repr__(self) -> str:
        return f"PeriodicEpochConfig(epoch_length={self.epoch_length!r})"


class TestingEpochConfig(EpochConfig):
    """Every input item is its own epoch: deterministic epochs for tests."""

    __test__ = False


def run_main(
    flow: Dataflow,
    *,
    epoch_config: EpochConfig | None = None,
    recovery_config: RecoveryConfig | None = None,
) -> None:
    """Run ``flow`` on one worker in the calling thread; return when it has finished.

    An exception raised by your code leaves ``run_main`` with its own type, with a note that
    names the step.

    >>> from millrace.dataflow import Dataflow
    >>> from millrace.inputs import TestingInputConfig
    >>> from millrace.outputs import StdOutputConfig
    >>> flow = Dataflow()
    >>> flow.input("inp", TestingInputConfig(range(3)))
    >>> flow.map(lambda x: x + 1)
    >>> flow.capture(StdOutputConfig())
    >>> run_main(flow)
    1
    2
    3
    """
    engine.run_single(flow, epoch_config=epoch_config, recovery_config=recovery_config)

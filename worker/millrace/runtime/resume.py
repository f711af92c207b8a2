"""Where a recovered cluster resumes, decided from every worker's store summary.

Each worker reads its own store (in Kubernetes every pod has its own volume), and the workers
swap summaries of them before anything is loaded or written. Every worker then runs
:func:`plan_resume` on the same summaries and reaches the same decision, or the same error.

Only a store with a snapshot says which cluster wrote it: one without holds nothing (its
worker was stopped in the first epoch, or it was made for a rescale that stopped before it
rewrote anything). A grown cluster rewrites its stores in two halves (staged beside the old
content, then swapped in once every worker has staged), so a rescale stopped while the stores
were swapped is finished by the next start: every store not yet swapped has its half staged.

Every store records the run it belongs to: an id drawn when a cluster starts with nothing to
resume (worker 0's draw, which every worker sees in the summaries) and kept by every start
after it. Stores of two runs are never resumed together, as they would be when a volume or a
directory of an earlier cluster is mounted beside the stores of a new one (stores written
before runs were recorded have none, and are not compared).

>>> from pathlib import Path
>>> old = StoreSummary(exists=True, progress=4, worker_count=1, staged=(2, 4))
>>> new = StoreSummary(exists=True, progress=4, worker_count=2)  # swapped already
>>> plan_resume({0: old, 1: new}, worker_count=2, where=Path("db"))
ResumePlan(old_count=2, resume=5, flow_start=None, finish_rescale=2, run=None)
>>> plan_resume({0: StoreSummary(True, 4, 2, run="a"), 1: StoreSummary(True, 7, 2, run="b")}, 2, Path("db"))
Traceback (most recent call last):
millrace.runtime.store.RecoveryError: recovery directory db: the stores were written by different runs (workers [0] by
one, [1] by another): some are left from an earlier cluster (a leftover volume or store), and resuming them together
would mix their states; restore the stores from a copy, or start with every worker's store empty
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .store import RecoveryError, StoreInfo


@dataclass(frozen=True)
class StoreSummary:
    """What a worker tells the others about its recovery store before anything is loaded."""

    exists: bool
    progress: int = -1  # the last epoch it finished; -1 for none
    worker_count: int = 0
    flow_start: datetime | None = None
    staged: tuple[int, int] | None = None  # a rescale's staged half: (worker count, epoch)
    run: str | None = None  # the run its store belongs to (None: recorded by no version)
    #: The run id this worker drew, for a start with nothing to resume (worker 0's is used).
    draw: str | None = None

    @classmethod
    def of(cls, info: StoreInfo | None, left_empty: bool = False, draw: str | None = None) -> StoreSummary:
        """The summary of a store that says ``info``; ``None`` with ``left_empty``: a store
        begun and left without anything in it (its worker was stopped while creating it),
        which exists without a snapshot, as opposed to a store that is not there at all."""
        if info is None:
            return cls(exists=left_empty, draw=draw)
        progress = -1 if info.progress is None else info.progress
        return cls(True, progress, info.worker_count, info.flow_start, info.staged, info.run, draw)

    def committed(self) -> StoreSummary:
        """This store once its staged rescale is swapped in."""
        assert self.staged is not None
        count, epoch = self.staged
        return StoreSummary(True, epoch, count, self.flow_start, run=self.run, draw=self.draw)


@dataclass(frozen=True)
class ResumePlan:
    #: How many workers wrote the stores; ``None``: there is nothing to resume.
    old_count: int | None
    #: The first epoch to run.
    resume: int
    #: The flow start the stores recorded (windows keep their boundaries), if any.
    flow_start: datetime | None
    #: The worker count of a stopped rescale: a worker whose store has that count staged
    #: swaps it in before loading; any other staged half is dropped.
    finish_rescale: int | None = None
    #: The run every store records from now on (``None``: the summaries drew none).
    run: str | None = None


def plan_resume(summaries: Mapping[int, StoreSummary], worker_count: int, where: str | Path) -> ResumePlan:
    """The plan of a run of ``worker_count`` workers from the summaries of all of their
    stores; a :class:`~.store.RecoveryError` naming ``where`` (a recovery directory, or a
    description of where the stores are) when resuming would be wrong."""
    finishing = stopped_rescale(summaries)
    if finishing is not None:
        summaries = {
            w: summary.committed() if summary.staged and summary.staged[0] == finishing else summary
            for w, summary in summaries.items()
        }
    run = _run_of(summaries, where)
    old_count, resume, flow_start = _agree(summaries, worker_count, where)
    return ResumePlan(old_count, resume, flow_start, finishing, run)


def _run_of(summaries: Mapping[int, StoreSummary], where: str | Path) -> str | None:
    """The run the stores holding a snapshot belong to, or, when none records one, worker
    0's draw (the lowest index's); a :class:`~.store.RecoveryError` when they are of two."""
    runs: dict[str, list[int]] = {}
    for w, summary in sorted(summaries.items()):
        if summary.exists and summary.progress >= 0 and summary.run is not None:
            runs.setdefault(summary.run, []).append(w)
    if len(runs) > 1:
        first, *others = sorted(runs.values())
        rest = ", ".join(str(workers) for workers in others)
        by = "another" if len(others) == 1 else "others"
        raise RecoveryError(
            f"{_place(where)}: the stores were written by different runs (workers {first} by "
            f"one, {rest} by {by}): some are left from an earlier cluster (a leftover volume "
            "or store), and resuming them together would mix their states; restore the stores "
            "from a copy, or start with every worker's store empty"
        )
    if runs:
        return next(iter(runs))
    return summaries[min(summaries)].draw if summaries else None


def _place(where: str | Path) -> str:
    return f"recovery directory {where}" if isinstance(where, Path) else where


def stopped_rescale(summaries: Mapping[int, StoreSummary]) -> int | None:
    """The worker count of a rescale stopped while the workers swapped in their staged stores
    (some have, the others have it staged); ``None`` when there is none to finish."""
    existing = [summary for summary in summaries.values() if summary.exists]
    targets = {summary.staged[0] for summary in existing if summary.staged is not None}
    if len(targets) != 1:
        return None
    (target,) = targets
    swapped = any(
        summary.staged is None and summary.worker_count == target and summary.progress >= 0 for summary in existing
    )
    return target if swapped else None


def _agree(
    summaries: Mapping[int, StoreSummary], worker_count: int, where: str | Path
) -> tuple[int | None, int, datetime | None]:
    where = _place(where)
    existing = {w: summary for w, summary in sorted(summaries.items()) if summary.exists}
    if not existing:
        return None, 0, None
    snapshotted = {w: summary for w, summary in existing.items() if summary.progress >= 0}
    # A store left empty records no flow start.
    recorded_start = next((summary.flow_start for summary in existing.values() if summary.flow_start), None)
    if not snapshotted:
        return None, 0, recorded_start
    counts = sorted({summary.worker_count for summary in snapshotted.values()})
    if len(counts) > 1:
        raise RecoveryError(
            f"{where}: the stores of workers {sorted(snapshotted)} "
            f"disagree on the worker count ({counts}): a rescale was interrupted while it "
            "rewrote them, or some are left from another run (a leftover volume or store of "
            "an earlier cluster), and some keys' state may be in none of them: restore the "
            "stores from a copy, or start with every worker's store empty"
        )
    (old_count,) = counts
    if old_count > worker_count:
        raise RecoveryError(
            f"{where}: the stores were written by {old_count} workers, "
            f"this run has {worker_count}; millrace cannot shrink a recovered cluster, so "
            f"resume with at least {old_count} workers"
        )
    members = {w: summary for w, summary in existing.items() if w < old_count}
    missing = [w for w in range(old_count) if w not in members]
    if missing:
        raise RecoveryError(
            f"{where}: workers {missing} have no store while workers "
            f"{sorted(members)} of {old_count} do; a store was lost, or it is in another "
            "process's recovery directory (where each process has its own, as on Kubernetes, "
            "the workers per process cannot change), so resuming would be wrong"
        )
    # A member may have no snapshot yet (or a store left empty) while the others have one of
    # the first epoch: it never finished that epoch, and the run starts over. Beside a later
    # one, that store was made again, and what it held is gone.
    empty = [w for w, summary in members.items() if summary.progress < 0]
    latest = max(summary.progress for summary in members.values())
    if empty and latest > 0:
        raise RecoveryError(
            f"{where}: the stores of workers {empty} hold no snapshot while "
            f"the other workers of {old_count} finished epoch {latest}; a store was lost, so "
            "resuming would be wrong"
        )
    resume = min(summary.progress for summary in members.values()) + 1
    return old_count, resume, recorded_start

"""Where a recovered cluster resumes: the decision every worker makes from the summaries of all
stores, without any store or server (the runs behind these cases are in test_recovery.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from millrace.runtime.resume import ResumePlan, StoreSummary, plan_resume, stopped_rescale
from millrace.runtime.store import RecoveryError

WHERE = Path("/db")
T0 = datetime(2024, 1, 1, tzinfo=UTC)
NONE = StoreSummary(exists=False)


def store(progress: int, count: int, staged: tuple[int, int] | None = None) -> StoreSummary:
    return StoreSummary(True, progress, count, T0, staged)


def plan(*summaries: StoreSummary, workers: int | None = None) -> ResumePlan:
    return plan_resume(dict(enumerate(summaries)), workers or len(summaries), WHERE)


def test_no_stores_is_a_fresh_start():
    assert plan(NONE, NONE) == ResumePlan(None, 0, None)


def test_stores_resume_after_the_lowest_epoch_every_worker_finished():
    assert plan(store(7, 2), store(6, 2)) == ResumePlan(2, 7, T0)


def test_a_store_without_a_snapshot_beside_ones_of_the_first_epoch_resumes_at_zero():
    assert plan(store(0, 2), store(-1, 2)) == ResumePlan(2, 0, T0)


def test_stores_without_any_snapshot_start_afresh_whatever_cluster_made_them():
    assert plan(store(-1, 1), store(-1, 4)) == ResumePlan(None, 0, T0)


def test_a_grown_cluster_resumes_from_the_old_workers_stores():
    assert plan(store(3, 2), store(3, 2), NONE, NONE) == ResumePlan(2, 4, T0)


def test_a_new_workers_empty_store_from_a_stopped_rescale_is_not_a_cluster_size():
    assert plan(store(3, 1), store(-1, 3), store(-1, 3)) == ResumePlan(1, 4, T0)
    assert plan(store(3, 1), workers=1) == ResumePlan(1, 4, T0)


@pytest.mark.parametrize("swapped", [{0}, {1, 2}, {0, 2}])
def test_a_rescale_stopped_while_stores_were_swapped_is_finished(swapped):
    """1 -> 3 workers, as of epoch 3: the stores in ``swapped`` hold the new content, the
    others have it staged."""
    before = [store(3, 1), store(-1, 3), store(-1, 3)]
    stores = [store(3, 3) if w in swapped else replace(s, staged=(3, 3)) for w, s in enumerate(before)]
    assert plan(*stores) == ResumePlan(3, 4, T0, finish_rescale=3)


def test_a_rescale_staged_everywhere_and_swapped_nowhere_runs_again():
    stores = [store(3, 1, staged=(3, 3)), store(-1, 3, staged=(3, 3)), store(-1, 3)]
    assert stopped_rescale(dict(enumerate(stores))) is None
    assert plan(*stores) == ResumePlan(1, 4, T0)


def test_stores_of_different_sizes_with_nothing_staged_are_refused():
    with pytest.raises(RecoveryError, match=r"disagree on the worker count \(\[1, 3\]\)"):
        plan(store(3, 1), store(3, 3), store(3, 3))


def test_a_finished_rescale_of_a_larger_cluster_is_not_shrunk():
    stores = {0: store(3, 3), 1: store(3, 1, staged=(3, 3))}
    with pytest.raises(RecoveryError, match="written by 3 workers, this run has 2"):
        plan_resume(stores, 2, WHERE)


LEFT_EMPTY = StoreSummary.of(None, left_empty=True)


def test_a_store_left_empty_beside_ones_of_the_first_epoch_resumes_at_zero():
    # Its worker was stopped while creating it: it never finished epoch 0, so nobody did.
    assert plan(store(0, 2), LEFT_EMPTY) == ResumePlan(2, 0, T0)
    assert plan(LEFT_EMPTY, store(0, 2)) == ResumePlan(2, 0, T0)


def test_a_store_left_empty_beside_later_snapshots_is_refused():
    with pytest.raises(RecoveryError, match=r"workers \[1\] hold no snapshot while .* finished epoch 3"):
        plan(store(3, 2), LEFT_EMPTY)


def test_a_missing_store_is_refused():
    with pytest.raises(RecoveryError, match=r"workers \[1\] have no store"):
        plan(store(2, 2), NONE)


def test_a_store_made_again_is_refused():
    with pytest.raises(RecoveryError, match=r"workers \[1\] hold no snapshot while .* finished epoch 5"):
        plan(store(5, 2), store(-1, 2))


def test_fewer_workers_than_wrote_the_stores_is_refused():
    with pytest.raises(RecoveryError, match="cannot shrink"):
        plan(store(2, 3), store(2, 3), workers=2)


def of_run(summary: StoreSummary, run: str | None, draw: str | None = None) -> StoreSummary:
    return replace(summary, run=run, draw=draw)


def test_a_fresh_start_names_its_run_by_worker_0s_draw():
    assert plan(of_run(NONE, None, "a"), of_run(NONE, None, "b")).run == "a"


def test_stores_of_one_run_keep_it_whatever_the_workers_draw():
    decided = plan(of_run(store(5, 2), "r", "a"), of_run(store(4, 2), "r", "b"))
    assert decided == ResumePlan(2, 5, T0, run="r")


def test_stores_of_two_runs_are_refused_naming_the_workers_of_each():
    stores = [of_run(store(5, 3), "old"), of_run(store(9, 3), "new"), of_run(store(5, 3), "old")]
    with pytest.raises(RecoveryError, match=r"written by different runs \(workers \[0, 2\] by one, \[1\] by another\)"):
        plan(*stores)


def test_stores_of_three_runs_are_refused_too():
    stores = [of_run(store(5, 3), "a"), of_run(store(5, 3), "b"), of_run(store(5, 3), "c")]
    with pytest.raises(RecoveryError, match=r"workers \[0\] by one, \[1\], \[2\] by others"):
        plan(*stores)


def test_stores_of_an_older_millrace_record_no_run_and_join_worker_0s_draw():
    assert plan(of_run(store(3, 2), None, "a"), of_run(store(3, 2), "r", "b")).run == "r"
    assert plan(of_run(store(3, 2), None, "a"), of_run(store(3, 2), None, "b")).run == "a"


def test_a_store_of_another_run_without_a_snapshot_holds_nothing_and_joins():
    """A new worker's store from a stopped rescale, of some other run: nothing in it counts."""
    assert plan(of_run(store(3, 1), "r"), of_run(store(-1, 2), "other")) == ResumePlan(1, 4, T0, run="r")

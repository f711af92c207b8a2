"""The store's side of a worker's recovery (runtime/persistence.py), driven by hand: the
peers' words are fed to the Recovery machine directly, with no thread and no socket."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from millrace.runtime.exchange import MIGRATE, PROGRESS, STAGED, Exchange
from millrace.runtime.migration import Recovery
from millrace.runtime.persistence import restore
from millrace.runtime.resume import StoreSummary
from millrace.runtime.store import WorkerStore, inspect

T0 = datetime(2024, 1, 1, tzinfo=UTC)
STEPS = ["ticks", "count"]


class PeerGone(Exception):
    pass


def one_worker_store(where: Path) -> None:
    store = WorkerStore(where, 0, 1, STEPS, T0)
    try:
        store.snapshot(0, {"ticks": 5}, {})
    finally:
        store.close()


def test_a_grown_cluster_restores_once_every_peer_said_its_word(tmp_path):
    """Worker 0 of a cluster grown from 1 to 2 workers: it migrates, stages, and swaps its
    store in only after worker 1's STAGED."""
    one_worker_store(tmp_path)
    recovery = Recovery(0, 2)
    exchange = Exchange(2, 0, 2)
    words = iter([(PROGRESS, 1, StoreSummary(exists=False)), (STAGED, 1)])

    def gather() -> None:
        while not recovery.ready():
            recovery.gather(next(words))

    restored = restore(tmp_path, recovery, exchange, gather, STEPS, [], T0)
    try:
        assert (restored.epoch, restored.input_states) == (1, {"ticks": 5})
        info = inspect(tmp_path, 0)
        assert (info.worker_count, info.progress, info.staged) == (2, 0, None)
        sent = []
        while (msg := exchange.recv(1, None)) is not None:
            sent.append(msg[0])
        assert sent == [PROGRESS, MIGRATE, STAGED]
    finally:
        restored.store.close()


def test_a_start_that_fails_after_the_store_is_opened_closes_it(tmp_path, monkeypatch):
    """The worker closes only a store it was given; one opened by a start that fails (here:
    a peer is gone during the migration) is closed before the error leaves."""
    one_worker_store(tmp_path)
    closed: list[int] = []
    original = WorkerStore.close

    def close(self: WorkerStore) -> None:
        closed.append(self.worker_index)
        original(self)

    monkeypatch.setattr(WorkerStore, "close", close)
    recovery = Recovery(0, 2)

    def gather() -> None:
        if recovery.summaries.keys() != {0, 1}:
            recovery.gather((PROGRESS, 1, StoreSummary(exists=False)))
        else:
            raise PeerGone

    with pytest.raises(PeerGone):
        restore(tmp_path, recovery, Exchange(2, 0, 2), gather, STEPS, [], T0)
    assert closed == [0]
    assert inspect(tmp_path, 0).worker_count == 1, "nothing was rewritten"

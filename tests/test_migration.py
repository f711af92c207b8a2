"""What the workers of a recovered cluster tell each other before data flows (PROGRESS,
MIGRATE, STAGED), as a state machine: no threads, no sockets, no stores (the runs behind these
cases are test_recovery.py's rescale tests and test_delivery_order.py's grown clusters)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from millrace.runtime import migration
from millrace.runtime.exchange import DATA, DONE, MARK, MIGRATE, PROGRESS, STAGED, Message
from millrace.runtime.migration import Recovery
from millrace.runtime.resume import ResumePlan, StoreSummary
from millrace.runtime.routing import owner

WHERE = Path("/db")
NONE = StoreSummary(exists=False)


def snapshotted(progress: int, count: int) -> StoreSummary:
    return StoreSummary(True, progress, count)


def keyed_for(keys: range) -> dict[str, dict[Any, Any]]:
    return {"count": {f"k{k}": k for k in keys}, "sums": {f"k{k}": -k for k in keys}}


def test_every_worker_reaches_the_plan_of_all_summaries():
    summaries = [snapshotted(4, 2), snapshotted(3, 2), NONE]
    machines = [Recovery(w, 3) for w in range(3)]
    sent = [m.share(s) for m, s in zip(machines, summaries)]
    assert sent[1] == (PROGRESS, 1, summaries[1])
    for w, m in enumerate(machines):
        assert not m.ready()
        for other, msg in enumerate(sent):
            if other != w:
                m.gather(msg)
        assert m.ready()
    plans = {m.plan(WHERE) for m in machines}
    assert plans == {ResumePlan(2, 4, None)}


def test_a_single_worker_needs_no_word_from_anyone():
    m = Recovery(0, 1)
    m.share(snapshotted(2, 1))
    assert m.ready() and m.plan(WHERE) == ResumePlan(1, 3, None)


def test_messages_of_the_running_flow_wait_in_order_until_the_recovery_is_over():
    m = Recovery(0, 2)
    m.share(NONE)
    early = [(DATA, 0, 0, [("a", 1)]), (MARK, 0, 0, 1, False), (DATA, 1, 0, [("b", 2)]), (DONE, 0, 1, False)]
    for msg in early[:2]:
        m.gather(msg)
    m.gather((PROGRESS, 1, NONE))
    for msg in early[2:]:
        m.gather(msg)
    assert m.ready()
    assert m.take_deferred() == early
    assert m.take_deferred() == [] and m.ready()


def test_only_recovery_messages_are_received():
    with pytest.raises(ValueError, match="not a recovery message"):
        Recovery(0, 2).receive((DATA, 0, 0, []))


def grow(old_count: int, new_count: int, keys: range, order: str) -> list[dict[str, dict[Any, Any]]]:
    """Run the migration of ``keys`` held by ``old_count`` workers (each the keys it owned)
    to ``new_count``; ``order``: "in-turn" delivers each worker's messages once it has
    migrated, "early" delivers every message before its receiver migrates (a faster peer)."""
    held = [
        {
            step: {k: v for k, v in states.items() if owner(k, old_count) == w}
            for step, states in keyed_for(keys).items()
        }
        if w < old_count
        else {}
        for w in range(new_count)
    ]
    machines = [Recovery(w, new_count) for w in range(new_count)]
    inbox: list[list[Message]] = [[] for _ in range(new_count)]
    for w, m in enumerate(machines):
        for dest, msg in m.migrate(held[w], old_count):
            assert dest != w and msg[0] == MIGRATE and msg[1] == w
            inbox[dest].append(msg)
        if order == "in-turn":
            for msg in inbox[w]:
                m.gather(msg)
            inbox[w].clear()
    if order == "early":  # the same messages again, to fresh workers that have not migrated
        machines = [Recovery(w, new_count) for w in range(new_count)]
        for w, m in enumerate(machines):
            for msg in inbox[w]:
                m.gather(msg)
            m.migrate(held[w], old_count)
    else:
        for w, m in enumerate(machines):
            for msg in inbox[w]:
                m.gather(msg)
    owned = []
    for m in machines:
        assert m.ready()
        owned.append(m.owned())
        assert m.owned() == {}, "what was migrated is let go"
    return owned


@pytest.mark.parametrize("order", ["in-turn", "early"])
@pytest.mark.parametrize("old_count,new_count", [(1, 2), (2, 3), (2, 4), (1, 5)])
def test_every_keys_state_reaches_its_new_owner_and_no_other(old_count, new_count, order):
    keys = range(200)
    owned = grow(old_count, new_count, keys, order)
    everything = keyed_for(keys)
    for w, states in enumerate(owned):
        for step, by_key in everything.items():
            assert states.get(step, {}) == {k: v for k, v in by_key.items() if owner(k, new_count) == w}


def test_a_new_worker_waits_for_every_old_workers_final_chunk_and_sends_none():
    m = Recovery(2, 3)
    assert m.migrate({}, old_count=2) == []
    assert not m.ready()
    m.gather((MIGRATE, 0, [("count", "a", 1)], True))
    m.gather((MIGRATE, 1, [("count", "b", 2)], False))
    assert not m.ready()
    m.gather((MIGRATE, 1, [("count", "c", 3)], True))
    assert m.ready()
    assert m.owned() == {"count": {"a": 1, "b": 2, "c": 3}}


def test_an_old_worker_sends_every_peer_a_final_chunk_even_an_empty_one():
    sends = Recovery(0, 3).migrate({}, old_count=1)
    assert sends == [(1, (MIGRATE, 0, [], True)), (2, (MIGRATE, 0, [], True))]


def test_state_moves_in_bounded_chunks_only_the_last_final(monkeypatch):
    monkeypatch.setattr(migration, "MIGRATE_CHUNK", 3)
    keys = [k for k in (f"k{i}" for i in range(100)) if owner(k, 2) == 1][:7]
    sends = Recovery(0, 2).migrate({"count": {k: 1 for k in keys}}, old_count=1)
    assert [(dest, len(msg[2]), msg[3]) for dest, msg in sends] == [(1, 3, False), (1, 3, False), (1, 1, True)]
    assert [entry[1] for _, msg in sends for entry in msg[2]] == keys


def test_every_store_is_staged_before_any_is_swapped_in():
    machines = [Recovery(w, 3) for w in range(3)]
    staged = [m.stage() for m in machines]
    assert staged == [(STAGED, 0), (STAGED, 1), (STAGED, 2)]
    m = machines[1]
    m.gather(staged[2])
    assert not m.ready()
    m.gather(staged[0])
    assert m.ready()


def test_a_faster_peers_next_phase_is_kept_whenever_it_comes():
    """Worker 1's PROGRESS reaches worker 0 after worker 2's MIGRATE, and worker 2's STAGED
    after the last migration; neither is deferred as data (the hang of f5310b0)."""
    m = Recovery(0, 3)
    m.share(snapshotted(5, 2))
    m.gather((PROGRESS, 2, NONE))
    m.gather((MIGRATE, 1, [], True))
    m.gather((STAGED, 2))
    assert not m.ready()
    m.gather((PROGRESS, 1, snapshotted(5, 2)))
    assert m.ready() and m.plan(WHERE).old_count == 2
    m.migrate({}, old_count=2)
    assert m.ready() and m.owned() == {}
    m.stage()
    assert not m.ready()
    m.gather((STAGED, 1))
    assert m.ready() and m.take_deferred() == []

"""Recovery: snapshots at epoch ends, exact resume points, continuation, and a store that
survives being killed at any moment."""

from __future__ import annotations

import ast
import hashlib
import itertools
import random
import sqlite3
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from millrace.dataflow import Dataflow
from millrace.execution import TestingEpochConfig, run_main, spawn_cluster
from millrace.inputs import ManualInputConfig, TestingInputConfig
from millrace.outputs import TestingEpochOutputConfig, TestingOutputConfig
from millrace.recovery import KafkaRecoveryConfig, RecoveryConfig, SqliteRecoveryConfig
from millrace.runtime.store import RecoveryError, inspect
from millrace.testing import doctest_ctx
from millrace.window import EventClockConfig, SystemClockConfig, TumblingWindowConfig

from .conftest import SUPPORT, Procs
from .test_cluster import free_ports

pytestmark = pytest.mark.timeout(300)

ITEMS = [("a", 1), ("b", 10), ("a", 2), ("c", 100), ("b", 20), ("a", 3), ("c", 200), ("a", 4)]


class Crash(Exception):
    pass


def sums_flow(out, crash_at: int | None = None) -> Dataflow:
    seen = {"n": 0}

    def maybe_crash(item):
        if crash_at is not None and item[1] == crash_at:
            raise Crash(f"crash at {item!r}")
        seen["n"] += 1
        return item

    flow = Dataflow()
    flow.input("inp", TestingInputConfig(ITEMS))
    flow.map(maybe_crash)
    flow.stateful_map("sums", lambda: 0, lambda total, v: (total + v, total + v))
    flow.capture(TestingEpochOutputConfig(out))
    return flow


def run(flow: Dataflow, where: Path | RecoveryConfig) -> None:
    recovery = SqliteRecoveryConfig(where) if isinstance(where, Path) else where
    run_main(flow, epoch_config=TestingEpochConfig(), recovery_config=recovery)


_prefixes = itertools.count()


@pytest.fixture(params=["sqlite", "kafka"])
def recovery(request, tmp_path) -> RecoveryConfig:
    """The recovery config of a test's own store: a SQLite directory, or a Kafka topic prefix
    on the session's broker (tests/support/kafka.py). Both keep the same guarantees."""
    if request.param == "sqlite":
        return SqliteRecoveryConfig(tmp_path)
    broker = request.getfixturevalue("kafka_broker")
    return KafkaRecoveryConfig([broker], f"recovery-{next(_prefixes)}")


def store_contents(recovery: RecoveryConfig) -> object:
    """Everything the stores hold, to compare before and after a refused start."""
    if isinstance(recovery, SqliteRecoveryConfig):
        return _snapshot_files(recovery.db_dir)
    from .support.kafka import read_all

    assert isinstance(recovery, KafkaRecoveryConfig)
    (broker,) = recovery.brokers
    return [read_all(broker, f"{recovery.topic_prefix}-{suffix}") for suffix in ("progress", "state")]


def clean_output() -> list:
    out: list = []
    run_main(sums_flow(out), epoch_config=TestingEpochConfig())
    return out


@pytest.mark.parametrize("n", range(len(ITEMS)))
def test_a_crash_on_item_n_resumes_at_epoch_n(recovery, n):
    first: list = []
    with pytest.raises(Crash):
        run(sums_flow(first, crash_at=ITEMS[n][1]), recovery)
    second: list = []
    run(sums_flow(second), recovery)
    expected = clean_output()
    assert first == expected[:n]
    assert second == expected[n:]
    assert second[0][0] == n


def test_two_crashes_in_a_row(recovery):
    outs: list[list] = [[], [], []]
    with pytest.raises(Crash):
        run(sums_flow(outs[0], crash_at=2), recovery)
    with pytest.raises(Crash):
        run(sums_flow(outs[1], crash_at=200), recovery)
    run(sums_flow(outs[2]), recovery)
    assert outs[0] + outs[1] + outs[2] == clean_output()


def test_a_finished_flow_run_again_emits_nothing(recovery):
    first: list = []
    run(sums_flow(first), recovery)
    again: list = []
    run(sums_flow(again), recovery)
    assert first == clean_output()
    assert again == []


def stored(db_dir: Path, worker: int = 0) -> tuple[dict, dict]:
    """What a restart would load from worker ``worker``'s store: (inputs, keyed states)."""
    from millrace.runtime.store import WorkerStore, inspect

    info = inspect(db_dir, worker)
    assert info is not None and info.progress is not None
    store = WorkerStore(db_dir, worker, info.worker_count, info.step_ids, info.flow_start)
    try:
        return store.load(info.progress + 1)
    finally:
        store.close()


def chunk_rows(db_dir: Path, worker: int = 0) -> list[tuple[str, int, bool, Any]]:
    """Every chunk of a store: (step id, epoch, full, (changed, forgotten))."""
    from millrace.runtime.store import load_state

    with sqlite3.connect(db_dir / f"worker-{worker}.sqlite3") as conn:
        rows = conn.execute("SELECT step_id, epoch, full, state FROM chunks ORDER BY step_id, epoch")
        return [(step_id, epoch, bool(full), load_state(blob)) for step_id, epoch, full, blob in rows]


def test_what_a_store_holds_beyond_the_resume_epoch_is_forgotten(tmp_path):
    """In a cluster a worker may have written epoch e when a peer that had not is killed: the
    restart runs e again, and whatever the first run of e wrote (here: a state of "c" that
    the second run of e does not touch) must not come back on a later restart."""
    from millrace.runtime.store import dump_state

    outs: list[list] = [[], [], []]
    with pytest.raises(Crash):
        run(sums_flow(outs[0], crash_at=3), tmp_path)  # epochs 0-4 done
    with sqlite3.connect(tmp_path / "worker-0.sqlite3") as conn:
        (step_id,) = conn.execute("SELECT DISTINCT step_id FROM chunks").fetchone()
        conn.execute("INSERT INTO chunks VALUES (?, 5, 0, ?)", (step_id, dump_state(({"c": 999}, []))))
    with pytest.raises(Crash):
        run(sums_flow(outs[1], crash_at=200), tmp_path)  # epoch 5 again, then a crash in 6
    run(sums_flow(outs[2]), tmp_path)
    assert outs[0] + outs[1] + outs[2] == clean_output()


def test_garbage_collection_keeps_what_a_restart_needs_and_little_more(tmp_path):
    items = [("once", 1)] + [("often", i) for i in range(30)]
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(items))
    flow.stateful_map("sums", lambda: 0, lambda total, v: (total + v, total + v))
    flow.capture(TestingOutputConfig([]))
    run(flow, tmp_path)
    _, keyed = stored(tmp_path)
    assert list(keyed.values()) == [{"once": 1, "often": sum(range(30))}]
    # Two keys, one changing each epoch: a full chunk every third epoch, and what follows.
    chunks = chunk_rows(tmp_path)
    assert 1 <= len(chunks) <= 4 and chunks[0][2], chunks
    with sqlite3.connect(tmp_path / "worker-0.sqlite3") as conn:
        assert len(conn.execute("SELECT epoch FROM inputs").fetchall()) <= 2


def test_a_forgotten_key_stays_forgotten(tmp_path):
    # "k" is forgotten in epoch 1; epochs 2.. write only "other".
    items = [("k", 1), ("k", 2)] + [("other", i) for i in (10, 20, 30, 40)]
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(items))
    flow.stateful_map("forget", lambda: 0, lambda s, v: (None if v == 2 else s + v, v))
    flow.capture(TestingOutputConfig([]))
    run(flow, tmp_path)
    _, keyed = stored(tmp_path)
    assert list(keyed.values()) == [{"other": 100}]
    forgotten_in = [epoch for _, epoch, full, (_, forgotten) in chunk_rows(tmp_path) if "k" in forgotten]
    assert forgotten_in in ([], [1])  # a discard, until a full chunk makes it needless


REFILLED = [("a", 1), ("b", 2), ("a", -1), ("b", -2), ("c", 5), ("a", 7), ("c", 1), ("a", 1)]


def refilled_flow(out, crash_at: int | None = None) -> Dataflow:
    """Running sums that forget a key at zero: the state is empty after item 3, and fills
    again from item 4 on (one item per epoch)."""

    def add(total, item):
        if crash_at is not None and item == crash_at:
            raise Crash(f"crash at {item!r}")
        total += item[0]
        return (None if total == 0 else total), total

    flow = Dataflow()
    flow.input("inp", TestingInputConfig([(key, (v, i)) for i, (key, v) in enumerate(REFILLED)]))
    flow.stateful_map("sums", lambda: 0, add)
    flow.capture(TestingEpochOutputConfig(out))
    return flow


@pytest.mark.parametrize("n", range(len(REFILLED)))
def test_a_state_that_empties_and_fills_again_resumes_anywhere(tmp_path, n):
    """A step that holds nothing when an epoch starts records no changed keys in it: its
    snapshot is every key it holds then, as one full chunk."""
    clean: list = []
    run_main(refilled_flow(clean), epoch_config=TestingEpochConfig())
    first: list = []
    with pytest.raises(Crash):
        run(refilled_flow(first, crash_at=(REFILLED[n][1], n)), tmp_path)
    second: list = []
    run(refilled_flow(second), tmp_path)
    assert first + second == clean


def test_an_epoch_that_starts_without_state_is_snapshotted_whole(tmp_path):
    run(refilled_flow([]), tmp_path)
    chunks = {epoch: (full, changed, forgotten) for _, epoch, full, (changed, forgotten) in chunk_rows(tmp_path)}
    # Epoch 4 began with nothing held ("a" and "b" were forgotten in epochs 2 and 3).
    assert chunks[4] == (True, {"c": 5}, [])
    _, keyed = stored(tmp_path)
    assert list(keyed.values()) == [{"a": 8, "c": 6}]


def test_the_state_as_of_the_settled_epoch_survives_garbage_collection(tmp_path):
    """Store level: after the snapshot of epoch e, the state as of e - 1 (where a restart
    may resume) and as of e both load, whatever was written, forgotten or emptied, in full
    chunks or in changes."""
    from datetime import datetime

    from millrace.runtime.store import Chunk, WorkerStore

    store = WorkerStore(tmp_path, 0, 1, ["inp", "s", "w"], datetime(2024, 1, 1, tzinfo=UTC))
    history: list[dict[str, dict]] = []
    state: dict[str, dict] = {"s": {}, "w": {}}
    # Per epoch and step: changes (None: forgotten), or "full" with every key it holds.
    writes = [
        {"s": {"a": 1, "b": 1, 2: 1}, "w": ("full", {"x": 1})},
        {"s": {"a": 2, "b": None}, "w": ("full", {})},
        {"s": ("full", {"a": 2, 2: 5}), "w": {"y": 3}},
        {"s": {"b": 7, "a": None}},
        {"s": {}, "w": ("full", {})},
        {"s": {"a": 9}, "w": {"z": 1}},
        {"s": ("full", {"a": 9, "b": 7, 2: 5}), "w": {"z": None}},
        {"w": {"q": 4}},
    ]
    for epoch, write in enumerate(writes):
        chunks = {}
        for step, rows in write.items():
            if isinstance(rows, tuple):
                state[step] = dict(rows[1])
                chunks[step] = Chunk(dict(rows[1]), [], full=True)
                continue
            for k, v in rows.items():
                if v is None:
                    state[step].pop(k, None)
                else:
                    state[step][k] = v
            chunks[step] = Chunk(
                {k: v for k, v in rows.items() if v is not None}, [k for k, v in rows.items() if v is None], full=False
            )
        store.snapshot(epoch, {"inp": epoch}, chunks)
        history.append({step: dict(held) for step, held in state.items()})
        for resume in (epoch, epoch + 1):
            if resume == 0:
                continue
            inputs, keyed = store.load(resume)
            expected = {step: held for step, held in history[resume - 1].items() if held}
            assert (inputs, keyed) == ({"inp": resume - 1}, expected), (epoch, resume)
    store.close()


FORMAT_1 = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE progress (worker INTEGER PRIMARY KEY, epoch INTEGER NOT NULL);
CREATE TABLE inputs (step_id TEXT NOT NULL, epoch INTEGER NOT NULL, state BLOB, PRIMARY KEY (step_id, epoch));
CREATE TABLE state (step_id TEXT NOT NULL, key NOT NULL, epoch INTEGER NOT NULL, state BLOB,
                    PRIMARY KEY (step_id, key, epoch)) WITHOUT ROWID;
CREATE TABLE cleared (step_id TEXT NOT NULL, epoch INTEGER NOT NULL, PRIMARY KEY (step_id, epoch));
"""


def test_a_format_1_store_is_rewritten_and_resumes_where_it_was(tmp_path):
    """Format 1 kept a row per key and epoch; opening such a file rewrites it as full chunks
    as of its last two epochs, and both load as they did."""
    import json
    from datetime import datetime

    from millrace.runtime.store import WorkerStore, dump_state

    path = tmp_path / "worker-0.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(FORMAT_1)
        conn.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [
                ("format", "1"),
                ("worker_index", "0"),
                ("worker_count", "1"),
                ("step_ids", json.dumps(["inp", "s", "w"])),
                ("flow_start", "2024-01-01T00:00:00+00:00"),
            ],
        )
        conn.execute("INSERT INTO progress VALUES (0, 3)")
        conn.executemany("INSERT INTO inputs VALUES ('inp', ?, ?)", [(2, dump_state(3)), (3, dump_state(4))])
        conn.executemany(
            "INSERT INTO state VALUES (?, ?, ?, ?)",
            [
                ("s", "a", 2, dump_state(5)),
                ("s", "a", 3, dump_state(6)),
                ("s", "b", 1, dump_state(7)),
                ("s", "b", 3, None),  # forgotten in epoch 3
                ("s", 4, 0, dump_state([1, 2])),
                ("w", "c", 1, dump_state((0, 0, {1: 3}))),  # the step was emptied in epoch 3
            ],
        )
        conn.execute("INSERT INTO cleared VALUES ('w', 3)")
    store = WorkerStore(tmp_path, 0, 1, ["inp", "s", "w"], datetime(2024, 1, 1, tzinfo=UTC))
    try:
        assert store.load(3) == ({"inp": 3}, {"s": {"a": 5, "b": 7, 4: [1, 2]}, "w": {"c": (0, 0, {1: 3})}})
        assert store.load(4) == ({"inp": 4}, {"s": {"a": 6, 4: [1, 2]}})
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = conn.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()[0]
    assert version == "2" and "state" not in tables and "cleared" not in tables
    # And the flow goes on from there.
    out: list = []
    flow = Dataflow()
    flow.input("inp", TestingInputConfig([("a", 1)] * 6))
    flow.stateful_map("s", lambda: 0, lambda total, v: (total + v, total + v))
    flow.inspect(out.append)
    flow.reduce("w", lambda a, b: a + b, lambda acc: False)
    flow.capture(TestingOutputConfig([]))
    run(flow, tmp_path)
    assert out == [("a", 7), ("a", 8)]  # items 4 and 5; "a" was 6 as of epoch 3


def test_a_step_left_without_any_state_is_one_empty_chunk(tmp_path):
    keys = [(f"k{i}", 1) for i in range(50)]
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(keys))
    flow.reduce_window("count", SystemClockConfig(), TumblingWindowConfig(timedelta(days=1)), lambda a, b: a + b)
    flow.capture(TestingOutputConfig([]))
    run(flow, tmp_path)
    assert chunk_rows(tmp_path)[-1][2:] == (True, ({}, []))
    # Run again: the closed windows stay closed, nothing is emitted twice.
    out: list = []
    rerun = Dataflow()
    rerun.input("inp", TestingInputConfig(keys))
    rerun.reduce_window("count", SystemClockConfig(), TumblingWindowConfig(timedelta(days=1)), lambda a, b: a + b)
    rerun.capture(TestingOutputConfig(out))
    run(rerun, tmp_path)
    assert out == []


T0 = datetime(2024, 1, 1, tzinfo=UTC)


def window_flow(out, crash_at: int | None = None) -> Dataflow:
    events = [("k", (T0 + timedelta(seconds=s), s)) for s in (1, 3, 12, 5, 14, 25, 21, 31)]

    def maybe_crash(item):
        if item[1][1] == crash_at:
            raise Crash(f"crash at {item!r}")
        return item

    flow = Dataflow()
    flow.input("inp", TestingInputConfig(events))
    flow.map(maybe_crash)
    flow.collect_window(
        "collect",
        EventClockConfig(lambda e: e[0], wait_for_system_duration=timedelta(seconds=8)),
        TumblingWindowConfig(timedelta(seconds=10), start_at=T0),
    )
    flow.map(lambda kv: (kv[0], [s for _, s in kv[1]]))
    flow.capture(TestingOutputConfig(out))
    return flow


@pytest.mark.parametrize("crash_at", [3, 5, 14, 21])
def test_windows_resume_mid_window(recovery, crash_at):
    clean: list = []
    run_main(window_flow(clean), epoch_config=TestingEpochConfig())
    first: list = []
    with pytest.raises(Crash):
        run(window_flow(first, crash_at=crash_at), recovery)
    second: list = []
    run(window_flow(second), recovery)
    assert first + second == clean


def _snapshot_files(db_dir: Path) -> dict[str, str]:
    """The bytes of every store, and that no side file holds data.

    Reading a WAL-mode database makes SQLite create its empty ``-wal``/``-shm`` bookkeeping
    files; they carry no data, so only their emptiness is compared."""
    files = {}
    for path in sorted(db_dir.iterdir()):
        if path.name.endswith("-shm"):
            continue
        if path.name.endswith("-wal"):
            assert path.stat().st_size == 0, f"{path} holds uncommitted writes"
            continue
        files[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def test_a_smaller_cluster_is_refused_before_the_store_is_touched(recovery):
    out: list = []
    with pytest.raises(Crash):
        spawn_cluster(
            sums_flow(out, crash_at=200),
            proc_count=1,
            worker_count_per_proc=3,
            epoch_config=TestingEpochConfig(),
            recovery_config=recovery,
        )
    before = store_contents(recovery)
    with pytest.raises(RecoveryError, match=r"written by a larger cluster.*cannot shrink"):
        run(sums_flow([]), recovery)
    with pytest.raises(RecoveryError, match="larger cluster"):
        spawn_cluster(
            sums_flow([]),
            proc_count=1,
            worker_count_per_proc=2,
            recovery_config=recovery,
        )
    assert store_contents(recovery) == before


def counting_flow(out, items: int) -> Dataflow:
    """Worker 0 reads ticks 0..items-1 (its resume state: the next tick), keyed over 10 keys;
    a running count per key. Its input does not depend on the worker count, so a grown cluster
    continues exactly where the smaller one stopped."""

    def ticks(worker_index, worker_count, resume_state):
        if worker_index != 0:
            return
        for tick in range(resume_state or 0, items):
            yield tick + 1, (f"k{tick % 10}", 1)

    flow = Dataflow()
    flow.input("ticks", ManualInputConfig(ticks))
    flow.stateful_map("count", lambda: 0, lambda seen, one: (seen + one, seen + one))
    flow.capture(TestingOutputConfig(out))
    return flow


@pytest.mark.parametrize("before,after", [((1, 1), (1, 3)), ((1, 2), (2, 2))], ids=["1to3", "2to4"])
def test_a_grown_cluster_keeps_every_keys_state(recovery, before, after):
    import multiprocessing

    with multiprocessing.Manager() as manager:
        first, second = manager.list(), manager.list()
        spawn_cluster(
            counting_flow(first, 60),
            proc_count=before[0],
            worker_count_per_proc=before[1],
            epoch_config=TestingEpochConfig(),
            recovery_config=recovery,
        )
        spawn_cluster(
            counting_flow(second, 130),
            proc_count=after[0],
            worker_count_per_proc=after[1],
            epoch_config=TestingEpochConfig(),
            recovery_config=recovery,
        )
        first, second = list(first), list(second)
    assert sorted(first) == sorted((f"k{k}", n) for k in range(10) for n in range(1, 7))
    # Every key goes on from 6, on whichever worker owns it now: none restarts at 1.
    expected = [(f"k{k}", n) for k in range(10) for n in range(7, 14)]
    assert sorted(second) == sorted(expected)
    if isinstance(recovery, SqliteRecoveryConfig):
        assert len(list(recovery.db_dir.glob("worker-*.sqlite3"))) == after[0] * after[1]


def test_a_grown_cluster_can_be_recovered_again(recovery):
    import multiprocessing

    with multiprocessing.Manager() as manager:
        outs = [manager.list() for _ in range(3)]
        for out, items, workers in zip(outs, (30, 60, 90), (1, 2, 2), strict=True):
            spawn_cluster(
                counting_flow(out, items),
                proc_count=1,
                worker_count_per_proc=workers,
                epoch_config=TestingEpochConfig(),
                recovery_config=recovery,
            )
        last = list(outs[2])
    assert sorted(last) == sorted((f"k{k}", n) for k in range(10) for n in range(7, 10))


def _grow_stopped_before_any_rewrite(db_dir: Path, to_count: int) -> None:
    """What a rescale to ``to_count`` workers stopped before it rewrote any store leaves: the
    stores of the new workers made (empty), the old ones as they were."""
    from millrace.runtime.store import WorkerStore, inspect

    info = inspect(db_dir, 0)
    assert info is not None
    for worker in range(info.worker_count, to_count):
        WorkerStore(db_dir, worker, to_count, info.step_ids, datetime.now(UTC)).close()


def count_in_threads(store: Path, out: list, items: int, workers: int) -> None:
    """The counting flow over ``items`` items, on one process of ``workers`` threads, with its
    SQLite store in ``store``, one item an epoch."""
    spawn_cluster(
        counting_flow(out, items),
        proc_count=1,
        worker_count_per_proc=workers,
        epoch_config=TestingEpochConfig(),
        recovery_config=SqliteRecoveryConfig(store),
        mp_ctx=doctest_ctx,
    )


@pytest.mark.parametrize("resumed_with", [3, 1, 2], ids=["same", "back", "other"])
def test_a_rescale_stopped_before_it_rewrote_a_store_runs_again(tmp_path, resumed_with):
    first: list = []
    count_in_threads(tmp_path, first, 60, 1)
    _grow_stopped_before_any_rewrite(tmp_path, 3)
    second: list = []
    count_in_threads(tmp_path, second, 130, resumed_with)
    assert sorted(second) == sorted((f"k{k}", n) for k in range(10) for n in range(7, 14))
    third: list = []
    count_in_threads(tmp_path, third, 140, 3)  # and on from there, grown for good
    assert sorted(third) == [(f"k{k}", 14) for k in range(10)]


def test_stores_that_never_took_a_snapshot_start_afresh_whatever_cluster_made_them(tmp_path):
    from millrace.runtime.store import WorkerStore

    step_ids = ("ticks", "count")
    WorkerStore(tmp_path, 0, 1, step_ids, datetime.now(UTC)).close()
    WorkerStore(tmp_path, 1, 4, step_ids, datetime.now(UTC)).close()
    out: list = []
    spawn_cluster(
        counting_flow(out, 20),
        proc_count=1,
        worker_count_per_proc=2,
        epoch_config=TestingEpochConfig(),
        recovery_config=SqliteRecoveryConfig(tmp_path),
        mp_ctx=doctest_ctx,
    )
    assert sorted(out) == sorted((f"k{k}", n) for k in range(10) for n in (1, 2))
    again: list = []
    spawn_cluster(
        counting_flow(again, 30),
        proc_count=1,
        worker_count_per_proc=2,
        epoch_config=TestingEpochConfig(),
        recovery_config=SqliteRecoveryConfig(tmp_path),
        mp_ctx=doctest_ctx,
    )
    assert sorted(again) == [(f"k{k}", 3) for k in range(10)]


class Stopped(Exception):
    pass


@pytest.mark.parametrize(
    "half,worker",
    [("stage_rescale", 2), ("commit_rescale", 2), ("commit_rescale", 0)],
    ids=["staging", "swapping-new", "swapping-old"],
)
def test_a_rescale_stopped_while_it_rewrote_the_stores_is_finished_or_run_again(tmp_path, monkeypatch, half, worker):
    """Worker ``worker`` stops in ``half`` of the rewrite of a 1 -> 3 rescale; the others go
    on as far as they can. The next start (3 workers) finds every key's state."""
    from millrace.runtime.store import WorkerStore

    count_in_threads(tmp_path, [], 60, 1)
    original = getattr(WorkerStore, half)

    def stop_one(self, *args):
        if self.worker_index == worker:
            raise Stopped(f"worker {worker} stopped in {half}")
        return original(self, *args)

    monkeypatch.setattr(WorkerStore, half, stop_one)
    with pytest.raises(Stopped):
        count_in_threads(tmp_path, [], 130, 3)
    monkeypatch.setattr(WorkerStore, half, original)
    second: list = []
    count_in_threads(tmp_path, second, 130, 3)
    assert sorted(second) == sorted((f"k{k}", n) for k in range(10) for n in range(7, 14))


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "held,until",
    [(("PROGRESS", 2, 1), ("MIGRATE", 0, 1)), (("MIGRATE", 1, 2), ("STAGED", 0, 2))],
    ids=["migration-before-progress", "staged-before-migration"],
)
def test_a_rescale_handles_a_faster_workers_next_message_whenever_it_comes(tmp_path, monkeypatch, held, until):
    """A 2 -> 3 rescale where one worker's message of one phase reaches a peer only after
    another worker's message of the next phase: (kind, sender, dest) ``held`` is sent once
    ``until`` has been. Across processes that order happens by chance; the rescale must
    finish either way."""
    from millrace.runtime import exchange as ex

    kinds = {"PROGRESS": ex.PROGRESS, "MIGRATE": ex.MIGRATE, "STAGED": ex.STAGED}
    released = threading.Event()
    original = ex.Exchange.send

    def send(self, dest, msg):
        if (msg[0], msg[1], dest) == (kinds[held[0]], held[1], held[2]):
            assert released.wait(20), f"{until} was never sent"
        original(self, dest, msg)
        if (msg[0], msg[1], dest) == (kinds[until[0]], until[1], until[2]):
            released.set()

    count_in_threads(tmp_path, [], 60, 2)
    monkeypatch.setattr(ex.Exchange, "send", send)
    second: list = []
    count_in_threads(tmp_path, second, 130, 3)
    assert released.is_set()
    assert sorted(second) == sorted((f"k{k}", n) for k in range(10) for n in range(7, 14))


def test_a_staged_rescale_stays_beside_the_store_until_it_is_swapped_in(tmp_path):
    from millrace.runtime.store import WorkerStore, inspect

    step_ids = ("ticks", "count")
    s = WorkerStore(tmp_path, 0, 1, step_ids, datetime.now(UTC))
    try:
        s.snapshot(0, {"ticks": 5}, {})
        s.stage_rescale(2, 0, {"ticks": 5}, {"count": {"a": 1}})
        info = inspect(tmp_path, 0)
        assert (info.worker_count, info.progress, info.staged) == (1, 0, (2, 0))
        assert s.load(1) == ({"ticks": 5}, {})
        s.commit_rescale()
        info = inspect(tmp_path, 0)
        assert (info.worker_count, info.progress, info.staged) == (2, 0, None)
        assert s.load(1) == ({"ticks": 5}, {"count": {"a": 1}})
        s.stage_rescale(3, 0, {}, {})
        s.drop_rescale()
        assert inspect(tmp_path, 0).staged is None and s.load(1) == ({"ticks": 5}, {"count": {"a": 1}})
        with pytest.raises(RecoveryError, match="no staged rescale"):
            s.commit_rescale()
    finally:
        s.close()


def test_stores_rewritten_for_different_cluster_sizes_are_refused_and_left_alone(tmp_path):
    """A rescale stopped while it rewrote the stores: some keys' state may be in none of
    them, so nothing is guessed."""
    flow_args = {
        "proc_count": 1,
        "worker_count_per_proc": 2,
        "epoch_config": TestingEpochConfig(),
        "recovery_config": SqliteRecoveryConfig(tmp_path),
        "mp_ctx": doctest_ctx,
    }
    spawn_cluster(counting_flow([], 30), **flow_args)
    with sqlite3.connect(tmp_path / "worker-1.sqlite3") as conn:
        conn.execute("UPDATE meta SET value = '1' WHERE name = 'worker_count'")
    conn.close()
    before = _snapshot_files(tmp_path)
    with pytest.raises(RecoveryError, match=r"disagree on the worker count \(\[1, 2\]\): a rescale was interrupted"):
        spawn_cluster(counting_flow([], 60), **flow_args)
    assert _snapshot_files(tmp_path) == before


def test_stores_left_from_an_earlier_run_are_refused_and_left_alone(tmp_path):
    """Stores of an earlier cluster beside those of a new one (in Kubernetes: a volume kept
    from before, mounted again): the same worker count, each store whole, but resuming them
    together would mix the two runs' states."""
    flow_args = {
        "proc_count": 1,
        "worker_count_per_proc": 3,
        "epoch_config": TestingEpochConfig(),
        "recovery_config": SqliteRecoveryConfig(tmp_path),
        "mp_ctx": doctest_ctx,
    }
    spawn_cluster(counting_flow([], 30), **flow_args)
    (earlier_run,) = {inspect(tmp_path, w).run for w in range(3)}
    assert earlier_run is not None
    earlier = {name: (tmp_path / name).read_bytes() for name in ("worker-1.sqlite3", "worker-2.sqlite3")}
    for path in tmp_path.iterdir():
        path.unlink()
    spawn_cluster(counting_flow([], 20), **flow_args)  # a new run, from empty stores
    spawn_cluster(counting_flow([], 25), **flow_args)  # resumed: still that run
    runs = {inspect(tmp_path, w).run for w in range(3)}
    assert len(runs) == 1 and None not in runs and earlier_run not in runs
    for name, data in earlier.items():
        (tmp_path / name).write_bytes(data)
    before = _snapshot_files(tmp_path)
    with pytest.raises(RecoveryError, match=r"written by different runs \(workers \[0\] by one, \[1, 2\] by another\)"):
        spawn_cluster(counting_flow([], 60), **flow_args)
    assert _snapshot_files(tmp_path) == before


def test_a_cluster_resumes_after_a_crash(recovery):
    import multiprocessing

    with multiprocessing.Manager() as manager:
        first = manager.list()
        with pytest.raises(Crash):
            spawn_cluster(
                sums_flow(first, crash_at=200),
                proc_count=2,
                worker_count_per_proc=2,
                epoch_config=TestingEpochConfig(),
                recovery_config=recovery,
            )
        second = manager.list()
        spawn_cluster(
            sums_flow(second),
            proc_count=2,
            worker_count_per_proc=2,
            epoch_config=TestingEpochConfig(),
            recovery_config=recovery,
        )
        combined = [item for _, item in list(first) + list(second)]
    # Items of one key come from several workers, so running sums depend on arrival order;
    # the totals do not. Every key must reach its total, and no sum may exceed it.
    totals: dict[str, int] = {}
    for key, value in ITEMS:
        totals[key] = totals.get(key, 0) + value
    reached: dict[str, int] = {}
    for key, running in combined:
        reached[key] = max(reached.get(key, 0), running)
    assert reached == totals


def _two_worker_run(out, db_dir: Path) -> None:
    flow = Dataflow()
    flow.input("inp", TestingInputConfig([("a", 1), ("b", 2), ("a", 3)]))
    flow.stateful_map("sums", lambda: 0, lambda total, v: (total + v, total + v))
    flow.capture(TestingOutputConfig(out))
    run_main_like = {"epoch_config": TestingEpochConfig(), "recovery_config": SqliteRecoveryConfig(db_dir)}
    # One process of two worker threads, run in this process so that ``out`` fills.
    spawn_cluster(flow, proc_count=1, worker_count_per_proc=2, mp_ctx=doctest_ctx, **run_main_like)


def test_a_store_left_empty_by_a_kill_during_its_creation_is_no_store(tmp_path):
    """A process killed while creating its store leaves an SQLite file without tables; its
    peers' stores hold no snapshot yet. The restart starts over instead of refusing."""
    from datetime import datetime

    from millrace.runtime.store import WorkerStore

    WorkerStore(tmp_path, 0, 2, ["inp", "sums"], datetime(2024, 1, 1, tzinfo=UTC)).close()
    with sqlite3.connect(tmp_path / "worker-1.sqlite3") as conn:
        conn.execute("PRAGMA journal_mode = WAL")
    out: list = []
    _two_worker_run(out, tmp_path)
    assert sorted(out) == [("a", 1), ("a", 4), ("b", 2)]


def test_a_store_left_empty_beside_a_snapshot_of_the_first_epoch_starts_over(tmp_path):
    """Worker 1 was killed while creating its store (the file without tables) and worker 0
    finished epoch 0: nobody finished it, and the restart runs from the start (it used to
    refuse, as if the store had been lost)."""
    from datetime import datetime

    from millrace.runtime.store import WorkerStore

    first = WorkerStore(tmp_path, 0, 2, ["inp", "sums"], datetime(2024, 1, 1, tzinfo=UTC))
    first.snapshot(0, {}, {})
    first.close()
    (tmp_path / "worker-1.sqlite3").touch()
    out: list = []
    _two_worker_run(out, tmp_path)
    assert sorted(out) == [("a", 1), ("a", 4), ("b", 2)]


def test_a_lost_store_is_refused_once_anything_was_snapshotted(tmp_path):
    _two_worker_run([], tmp_path)
    (tmp_path / "worker-1.sqlite3").unlink()
    with pytest.raises(RecoveryError, match=r"workers \[1\] have no store while workers \[0\] of 2 do"):
        _two_worker_run([], tmp_path)


def test_missing_directory_is_named(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(RecoveryError, match=f"{missing}.*does not exist"):
        run(sums_flow([]), missing)


def test_a_file_instead_of_a_directory_is_named(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(RecoveryError, match=f"{path} is not a directory"):
        run(sums_flow([]), path)


def test_an_unwritable_store_is_named(tmp_path):
    (tmp_path / "worker-0.sqlite3").mkdir()  # something sqlite cannot open stands in its place
    with pytest.raises(RecoveryError, match=r"worker-0\.sqlite3"):
        run(sums_flow([]), tmp_path)


def test_a_corrupted_store_is_named_and_left_alone(tmp_path):
    path = tmp_path / "worker-0.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    before = _snapshot_files(tmp_path)
    with pytest.raises(RecoveryError, match=f"{path}.*not a readable millrace store"):
        run(sums_flow([]), tmp_path)
    assert _snapshot_files(tmp_path) == before


def test_a_store_of_another_flow_is_refused(recovery):
    run(sums_flow([]), recovery)
    before = store_contents(recovery)
    other = Dataflow()
    other.input("different_input", TestingInputConfig([("a", 1)]))
    other.capture(TestingOutputConfig([]))
    with pytest.raises(RecoveryError, match=r"steps \['inp', 'sums'\].*different flow"):
        run(other, recovery)
    assert store_contents(recovery) == before


def test_a_store_of_another_format_version_is_refused(tmp_path):
    run(sums_flow([]), tmp_path)
    conn = sqlite3.connect(tmp_path / "worker-0.sqlite3")
    with conn:
        conn.execute("UPDATE meta SET value = '99' WHERE name = 'format'")
    conn.close()
    before = _snapshot_files(tmp_path)
    with pytest.raises(RecoveryError, match="format version 99"):
        run(sums_flow([]), tmp_path)
    assert _snapshot_files(tmp_path) == before


# -- fault injection ------------------------------------------------------------------------

RECOVERY_PROC = str(SUPPORT / "recovery_proc.py")
COUNT = 120


def _start_cluster(procs: Procs, tmp_path: Path, out: str) -> list:
    addresses = ",".join(f"127.0.0.1:{port}" for port in free_ports(2))
    return [
        procs.start(
            RECOVERY_PROC,
            "--addresses",
            addresses,
            "--proc-id",
            str(proc_id),
            "--out",
            out,
            "--db-dir",
            str(tmp_path / "db"),
            "--count",
            str(COUNT),
        )
        for proc_id in range(2)
    ]


def _outputs(out: str) -> list[tuple[int, tuple[str, int]]]:
    items = []
    for path in Path(out).parent.glob(Path(out).name + ".*"):
        items += [ast.literal_eval(line) for line in path.read_text().splitlines()]
    return items


def _expected() -> set[tuple[str, int]]:
    sums: dict[str, int] = {}
    expected = set()
    for worker in range(4):
        for i in range(COUNT):
            key = f"{worker}-{i % 5}"
            sums[key] = sums.get(key, 0) + i
            expected.add((key, sums[key]))
    return expected


def test_with_a_directory_per_process_the_workers_per_process_cannot_change(procs, tmp_path):
    """Each process keeps its own workers' stores, as pods do on their volumes: 2x1 -> 2x2 would
    make worker 1 process 0's, whose directory lacks its store. Refused on every process,
    naming why, and the stores are left as they were (the CRD refuses it first)."""
    addresses = ",".join(f"127.0.0.1:{port}" for port in free_ports(2))
    dirs = [tmp_path / f"db{p}" for p in range(2)]
    for path in dirs:
        path.mkdir()

    def start(workers: int) -> list:
        args = ["--addresses", addresses, "--out", str(tmp_path / "out"), "--count", "20", "--delay", "0"]
        return [
            procs.start(RECOVERY_PROC, *args, "--proc-id", str(p), "--db-dir", str(dirs[p]), "--workers", str(workers))
            for p in range(2)
        ]

    for proc in start(1):
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
    before = [_snapshot_files(path) for path in dirs]
    for proc in start(2):
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode != 0
        assert "have no store" in stderr and "the workers per process cannot change" in stderr, stderr[-2000:]
    assert [_snapshot_files(path) for path in dirs] == before


@pytest.mark.parametrize("seed", range(20))
def test_a_random_kill_of_a_2x2_cluster_loses_nothing(procs, tmp_path, seed):
    rng = random.Random(seed)
    (tmp_path / "db").mkdir()
    first_out = str(tmp_path / "first")
    cluster = _start_cluster(procs, tmp_path, first_out)
    time.sleep(rng.uniform(0.3, 1.5))
    victim = rng.randrange(2)
    cluster[victim].kill()
    for proc in cluster:
        proc.communicate(timeout=60)
    if cluster[1 - victim].returncode == 0:
        # The flow had already finished everywhere; the run again must add nothing.
        pass
    second_out = str(tmp_path / "second")
    restarted = _start_cluster(procs, tmp_path, second_out)
    for proc in restarted:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
    first, second = _outputs(first_out), _outputs(second_out)
    got = {item for _, item in first} | {item for _, item in second}
    assert got == _expected(), "output was lost or invented"
    assert all(count == 1 for count in Counter(item for _, item in second).values())
    if second:
        resumed_at = min(epoch for epoch, _ in second)
        repeated = {item for _, item in first} & {item for _, item in second}
        first_epochs = {item: epoch for epoch, item in first}
        assert all(first_epochs[item] >= resumed_at for item in repeated), (
            "an item before the resume point was emitted again"
        )


def test_states_of_every_kind_come_back_as_they_were():
    from collections import namedtuple

    from millrace.runtime.store import dump_state, load_state

    Point = namedtuple("Point", "x y")
    for value in [
        0,
        10**30,
        -1.5,
        "word",
        b"raw",
        None,
        True,
        (1, "a"),
        [1, [2]],
        {"k": {1: 2}},
        {1, 2},
        frozenset({"a"}),
        Point(1, 2),
        datetime(2024, 1, 1, tzinfo=UTC),
        {"window": [(datetime(2024, 1, 1, tzinfo=UTC), 1)]},
    ]:
        back = load_state(dump_state(value))
        assert back == value and type(back) is type(value), value
    closure = load_state(dump_state(lambda x: x + 1))
    assert closure(1) == 2


def test_window_state_written_by_an_earlier_millrace_is_read(tmp_path):
    """Stores of earlier builds hold pickled KeyWindows objects; they restore as they were."""
    from millrace import plan
    from millrace.runtime.store import dump_state, load_state
    from millrace.runtime.windowing import KeyWindows, WindowLogic

    kw = KeyWindows(1_000_000, 2_000_000)
    kw.windows = {3: ["a"], 1: ["b"]}
    step = plan.CollectWindow(
        step_id="w",
        clock=EventClockConfig(lambda v: v, timedelta(0)),
        window=TumblingWindowConfig(timedelta(seconds=1)),
    )
    logic = WindowLogic(step, datetime(2024, 1, 1, tzinfo=UTC))
    logic.restore({"old": load_state(dump_state(kw)), "new": load_state(dump_state(logic.export(kw)))})
    for key in ("old", "new"):
        restored = logic.state[key]
        assert (restored.watermark_base, restored.seen_at, restored.windows, restored.first) == (
            1_000_000,
            2_000_000,
            {3: ["a"], 1: ["b"]},
            1,
        )

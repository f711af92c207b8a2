"""A worker's state in its recovery store: brought back at the start, in agreement with its
peers (:func:`restore`), and written at the end of every epoch (:class:`Snapshots`).

A snapshot holds, per stateful step, a :class:`~.store.Chunk`: either every key the step
holds (``full``), or only the keys that changed (and those forgotten) since the last one. A
restart replays the chunks from the last full one, so a step writes a full chunk again once
its partial chunks since then add up to more keys than it holds.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from . import store
from .exchange import Exchange
from .keyed import FORGOTTEN, KeyedLogic
from .migration import Recovery
from .resume import StoreSummary
from .stores import SqliteStores, Stores, WorkerStoreLike


class Snapshots:
    """The chunks of the stateful steps of one worker, epoch after epoch."""

    __slots__ = ("_keys_since_full",)

    def __init__(self) -> None:
        # Per step: how many keys its chunks since its last full one wrote (see _chunk).
        self._keys_since_full: dict[str, int] = {}

    def chunks(self, logics: list[KeyedLogic]) -> dict[str, store.Chunk]:
        """The chunks of ``logics`` for the epoch that ends now, per step id (none for a step
        that neither holds nor changed anything); every step starts recording anew."""
        chunks = {}
        for logic in logics:
            touched = logic.touched
            if touched is None:
                if not logic.is_empty():
                    chunks[logic.step_id] = self._full_chunk(logic)
            elif touched:
                chunks[logic.step_id] = self._chunk(logic, touched)
            self.track(logic)
        return chunks

    @staticmethod
    def track(logic: KeyedLogic) -> None:
        """Start recording which keys of ``logic`` change this epoch, unless it holds no
        state: then every key it holds at the epoch's end is new, its snapshot is all of them
        (:meth:`_full_chunk`), and the per-item record would cost time for nothing. (The first
        epoch of a fresh run is all of a short run, and holds most of its items.)"""
        logic.touched = None if logic.is_empty() else set()

    def _full_chunk(self, logic: KeyedLogic) -> store.Chunk:
        self._keys_since_full[logic.step_id] = 0
        return store.Chunk(dict(logic.exports(logic.keys())), [], full=True)

    def _chunk(self, logic: KeyedLogic, touched: set[Any]) -> store.Chunk:
        """What ``logic``'s keys did this epoch: the changed ones, or every key it holds when
        the chunks since its last full one add up to more keys than that (a restart replays
        them all), and always after a restart (the older chunks are not counted)."""
        step_id = logic.step_id
        held = logic.keys()
        since_full = self._keys_since_full.get(step_id, len(held)) + len(touched)
        if since_full > len(held):
            return self._full_chunk(logic)
        self._keys_since_full[step_id] = since_full
        changed = {}
        forgotten = []
        for key, state in logic.exports(touched):
            if state is FORGOTTEN:
                forgotten.append(key)
            else:
                changed[key] = state
        return store.Chunk(changed, forgotten, full=False)


def check_stores(stores: Stores, info: store.StoreInfo | None, step_ids: list[str], count: int) -> None:
    """Raise :class:`~.store.RecoveryError` when worker ``info``'s store (``None``: it has
    none) was written by a flow without some of its steps, or when ``stores`` hold snapshots
    of workers a cluster of ``count`` does not have."""
    if info is not None:
        unknown = sorted(set(info.step_ids) - set(step_ids))
        if unknown:
            raise store.RecoveryError(
                f"recovery store {info.path} holds state of steps {unknown} that this flow "
                "does not have: it was written by a different flow"
            )
    strays = [worker for worker in stores.snapshotted() if worker >= count]
    if strays:
        raise store.RecoveryError(
            f"{stores.where} holds stores of workers this run of {count} does not have "
            f"({', '.join(stores.store_name(worker) for worker in strays)}): it was written by a larger "
            "cluster, and millrace cannot shrink a recovered cluster"
        )


def own_inputs(index: int, by_worker: dict[str, dict[int, Any]]) -> dict[str, Any]:
    """The input states old worker ``index`` had (a new worker: none).

    >>> own_inputs(1, {"ticks": {0: 5, 1: 7}})
    {'ticks': 7}
    """
    return {step_id: states[index] for step_id, states in by_worker.items() if index in states}


class Restored(NamedTuple):
    store: WorkerStoreLike
    #: The first epoch to run.
    epoch: int
    #: Per input step id, where its reader resumes.
    input_states: dict[str, Any]


def restore(
    stores: Stores | Path,
    recovery: Recovery,
    exchange: Exchange,
    gather: Callable[[], None],
    step_ids: list[str],
    logics: list[KeyedLogic],
    flow_start: datetime,
    merge_inputs: Callable[[dict[str, dict[int, Any]]], dict[str, Any]] | None = None,
) -> Restored:
    """Agree with every worker on the resume epoch, load the state as of then into ``logics``
    and open the store for the snapshots to come. Every check runs before the store is
    written. ``recovery`` says what to tell the peers (through ``exchange``) and ``gather``
    handles their messages until its round is complete.

    A cluster may resume with more workers than wrote the stores: each key's state then
    moves to the worker that owns it now, and every store is rewritten for the new count.
    Every old worker's input states go to every worker, and ``merge_inputs`` makes this
    worker's from them (per input step id, per old worker index); by default a worker keeps
    its own old index's.
    """
    if merge_inputs is None:
        merge_inputs = partial(own_inputs, recovery.index)
    if isinstance(stores, Path):
        stores = SqliteStores(stores)
    index, count = recovery.index, recovery.count
    stores.check()
    info = stores.inspect(index)
    check_stores(stores, info, step_ids, count)
    # Every worker draws a run id; worker 0's names the run if the stores hold none.
    summary = StoreSummary.of(info, info is None and stores.left_empty(index), draw=uuid.uuid4().hex)
    progress = recovery.share(summary)
    if count > 1:
        exchange.broadcast(index, progress)
        gather()
    decided = recovery.plan(stores.where)
    old_count, resume, recorded_start = decided.old_count, decided.resume, decided.flow_start
    if recorded_start is not None:
        for logic in logics:
            logic.rebase(recorded_start)
    worker_store = stores.open(index, count, step_ids, recorded_start or flow_start, decided.run)
    try:
        if info is not None and info.staged is not None:
            if decided.finish_rescale == info.staged[0]:
                worker_store.commit_rescale()
            else:
                worker_store.drop_rescale()  # no store swapped it in: the current ones are whole
            info = stores.inspect(index)
        input_states, keyed = worker_store.load(resume) if info is not None else ({}, {})
        if old_count not in (None, count):
            for dest, msg in recovery.migrate(keyed, old_count, input_states):
                exchange.send(dest, msg)
            gather()
            keyed = recovery.owned()
            input_states = merge_inputs(recovery.migrated_inputs)
            _rewrite_for_count(worker_store, recovery, exchange, gather, resume - 1, input_states, keyed)
        elif info is not None and info.worker_count != count and (info.progress is None or info.progress < 0):
            worker_store.rescale(count, resume - 1, {}, {})  # it held nothing
        elif info is not None:
            worker_store.rewind(resume)
        for logic in logics:
            logic.restore(keyed.get(logic.step_id, {}))
            Snapshots.track(logic)
    except BaseException:
        worker_store.close()  # the worker never got it: a failed start leaves no connection
        raise
    return Restored(worker_store, resume, input_states)


def _rewrite_for_count(
    worker_store: WorkerStoreLike,
    recovery: Recovery,
    exchange: Exchange,
    gather: Callable[[], None],
    epoch: int,
    inputs: dict[str, Any],
    keyed: dict[str, dict[Any, Any]],
) -> None:
    """Rewrite this worker's store for the grown cluster in two halves: every worker stages
    its new store beside the current one, and only once all have does any swap it in. A start
    stopped in between finds either no store swapped (each keeps its current content, and the
    rescale runs again) or every store swapped or staged (the next start swaps the rest in,
    :func:`.resume.stopped_rescale`): never a key whose state is in no store."""
    worker_store.stage_rescale(recovery.count, epoch, inputs, keyed)
    exchange.broadcast(recovery.index, recovery.stage())
    gather()
    worker_store.commit_rescale()

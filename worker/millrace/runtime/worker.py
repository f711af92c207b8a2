"""One worker: reads its share of the input, pushes batches through the steps, exchanges
keyed items with its peers, and keeps epochs in step with the whole cluster.

The worker is the loop that moves batches; what it says to its peers, and when it may go on,
is decided by state machines it feeds with their messages: :class:`.progress.Progress` ends
each epoch (``MARK``, ``DONE``), :class:`.migration.Recovery` agrees on where a recovered
cluster resumes and moves a grown cluster's state (``PROGRESS``, ``MIGRATE``, ``STAGED``).
Only ``DATA`` (and ``STOP``) is the worker's own business.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from ..dataflow import Dataflow
from .epochs import EpochPolicy
from .errors import annotate, cannot_travel
from . import store
from .exchange import DATA, DONE, MARK, STOP, Exchange, Message
from .keyed import FORGOTTEN, KeyedLogic
from .progress import Broadcast, Ended, Flush, Progress, Snapshot
from .migration import RECOVERY_KINDS, Recovery
from .resume import StoreSummary
from .routing import Router, check_pairs
from .segments import Segment, build_logic, check_flow, lay_out
from .sources import Reader, build_reader
from .windowing import utcnow

# Stopped, Worker and check_flow are what the runtime's entry points import from here;
# build_logic and Segment moved to .segments, and stay importable from here too.
__all__ = ["Segment", "Stopped", "Worker", "build_logic", "check_flow"]

_IDLE_SLEEP_MAX = 0.01


def _holds_a_snapshot(db_dir: Path, worker_index: int) -> bool:
    info = store.inspect(db_dir, worker_index)
    return info is not None and info.progress is not None and info.progress >= 0


class Stopped(Exception):
    """Another worker failed; this one leaves without an error of its own."""


class Worker:
    """Worker ``index`` of ``exchange.worker_count``, running ``flow``; with ``recovery_dir``
    it resumes from, and snapshots to, the SQLite store there."""

    def __init__(
        self,
        flow: Dataflow,
        index: int,
        exchange: Exchange,
        epochs: EpochPolicy,
        flow_start: datetime,
        recovery_dir: Path | None = None,
    ) -> None:
        self.index = index
        self.count = exchange.worker_count
        self.exchange = exchange
        self.epochs = epochs
        self.epoch = 0
        self.flow_start = flow_start
        self.recovery_dir = recovery_dir
        self.store: store.WorkerStore | None = None
        self.router = Router(self.count, index)
        self.inputs: list[tuple[Reader, Segment]] = []
        self.recovery = Recovery(index, self.count)
        # Per step: how many keys its chunks since its last full one wrote (see _chunk).
        self._keys_since_full: dict[str, int] = {}
        self.logics, self.input_steps, self.after = lay_out(flow, flow_start, self.router)
        self.progress = Progress(index, self.count, len(self.logics))

    # -- inputs ----------------------------------------------------------------------------

    def _open_inputs(self, resume_states: dict[str, Any]) -> None:
        for step, segment in self.input_steps:
            reader = self._guard(
                step.name,
                build_reader,
                step.config,
                step.name,
                self.index,
                self.count,
                resume_states.get(step.step_id),
            )
            self.inputs.append((reader, segment))

    def _guard(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            annotate(exc, name, self.index)
            raise

    # -- moving batches --------------------------------------------------------------------

    def _push(self, segment: Segment, batch: list[Any], epoch: int) -> None:
        chain = segment.chain
        target = segment.target
        if chain is not None:
            try:
                result = chain.run(batch, epoch)
            except Exception as exc:
                error = chain.explain(exc)
                annotate(error, chain.step_of(error) or "a stateless step", self.index)
                if error is exc:
                    raise
                raise error from None
            if segment.fused:  # the result is what the target emitted (and sends)
                assert target is not None
                if segment.routed:
                    result, parts = result
                    self._send(segment, target, parts, epoch)
                if result:
                    self._push(self.after[target], result, epoch)
                return
            batch = result
            if not batch:
                return
        if target is None:
            return
        if self.count == 1:
            self._apply(target, batch, epoch)
            return
        try:
            parts = self.router.split(batch, segment.target_name)
        except TypeError as exc:
            annotate(exc, segment.target_name, self.index)
            raise
        mine = parts[self.index]
        if mine:
            parts[self.index] = []
            self._apply(target, mine, epoch)
        self._send(segment, target, parts, epoch)

    def _send(self, segment: Segment, target: int, parts: list[list[Any]], epoch: int) -> None:
        """Send each other worker its part of a batch for ``target``."""
        for dest, part in enumerate(parts):
            if part:
                try:
                    self.exchange.send(dest, (DATA, target, epoch, part))
                except Exception as exc:
                    error = cannot_travel(segment.target_name, part, dest, exc)
                    annotate(error, segment.target_name, self.index)
                    raise error from exc

    def _apply(self, target: int, batch: list[Any], epoch: int) -> None:
        logic = self.logics[target]
        try:
            out = logic.on_batch(batch)
        except ValueError as exc:
            try:
                check_pairs(batch, logic.name)
            except TypeError as shape_error:
                annotate(shape_error, logic.name, self.index)
                raise shape_error from None
            annotate(exc, logic.name, self.index)
            raise
        except Exception as exc:
            annotate(exc, logic.name, self.index)
            raise
        if out:
            self._push(self.after[target], out, epoch)

    def _tick(self, epoch: int, first: int = 0) -> None:
        """Let time close windows of steps ``first`` and later, emitting into ``epoch``.

        Only steps whose downstream has not been marked done with ``epoch`` may emit, so
        while waiting for the marks of step ``k`` only steps ``k`` and later tick.
        """
        now: datetime | None = None
        for target, logic in enumerate(self.logics):
            if target < first:
                continue
            deadline = logic.next_deadline()
            if deadline is None:
                continue
            if now is None:
                now = utcnow()
            if deadline <= now:
                try:
                    out = logic.on_tick(now)
                except Exception as exc:
                    annotate(exc, logic.name, self.index)
                    raise
                if out:
                    self._push(self.after[target], out, epoch)

    # -- messages --------------------------------------------------------------------------

    def _handle(self, msg: Message) -> None:
        kind = msg[0]
        if kind == DATA:
            _, target, epoch, items = msg
            self._apply(target, items, epoch)
        elif kind == MARK or kind == DONE:
            self.progress.receive(msg)
        elif kind in RECOVERY_KINDS:
            self.recovery.receive(msg)
        elif kind == STOP:
            raise Stopped()
        else:
            raise ValueError(f"worker {self.index} got an unknown message kind {kind!r}")

    def _drain(self) -> None:
        recv = self.exchange.recv
        while (msg := recv(self.index, None)) is not None:
            self._handle(msg)

    def _wait_for(
        self, ready: Callable[[], bool], epoch: int = 0, tick_from: int | None = None
    ) -> None:
        """Handle messages until ``ready()``; meanwhile let time close the windows of steps
        ``tick_from`` and later (a worker whose input ran dry may wait here a whole epoch)."""
        recv = self.exchange.recv
        while not ready():
            timeout = 0.5
            if tick_from is not None:
                self._tick(epoch, tick_from)
                timeout = self._until_deadline(timeout, tick_from)
            msg = recv(self.index, timeout)
            if msg is not None:
                self._handle(msg)
            elif self.exchange.stopping.is_set():
                raise Stopped()

    def _until_deadline(self, pause: float, first: int = 0) -> float:
        """``pause``, shortened to the next window deadline of steps ``first`` and later."""
        for logic in self.logics[first:]:
            deadline = logic.next_deadline()
            if deadline is not None:
                pause = max(0.0, min(pause, (deadline - utcnow()).total_seconds()))
        return pause

    def _idle(self, pause: float) -> None:
        """Nothing to read right now: wait for a message, a window deadline, or ``pause``."""
        pause = self._until_deadline(pause)
        if self.count == 1:
            time.sleep(pause)
            return
        msg = self.exchange.recv(self.index, pause)
        if msg is not None:
            self._handle(msg)
            self._drain()

    # -- epochs ----------------------------------------------------------------------------

    def _read_epoch(self, epoch: int) -> None:
        epochs = self.epochs
        epochs.begin()
        idle = 0.0
        multi = self.count > 1
        stopping = self.exchange.stopping
        while True:
            got_any = False
            for reader, segment in self.inputs:
                if reader.exhausted:
                    continue
                try:
                    batch = reader.read(epochs.limit())
                except Exception as exc:
                    annotate(exc, reader.name, self.index)
                    raise
                if batch:
                    got_any = True
                    epochs.items += len(batch)
                    self._push(segment, batch, epoch)
                    if epochs.over():
                        return
            if all(reader.exhausted for reader, _ in self.inputs):
                return
            if multi:
                if stopping.is_set():
                    raise Stopped()
                self._drain()
                while self.exchange.congested():
                    self._idle(0.001)
            self._tick(epoch)
            if epochs.over():
                return
            if got_any:
                idle = 0.0
            else:
                idle = min(_IDLE_SLEEP_MAX, idle * 2 or 0.0005)
                self._idle(idle)

    def _finish_epoch(self, epoch: int) -> bool:
        """Bring every step through ``epoch`` as :class:`.progress.Progress` says; return
        whether the whole flow has ended."""
        progress = self.progress
        actions = progress.end_input(epoch, all(reader.exhausted for reader, _ in self.inputs))
        while True:
            for action in actions:
                if isinstance(action, Broadcast):
                    self.exchange.broadcast(self.index, action.message)
                elif isinstance(action, Flush):
                    self._flush(action.step, epoch)
                elif isinstance(action, Snapshot):
                    if self.store is not None:
                        self._snapshot(epoch)
                elif isinstance(action, Ended):
                    return action.eof
            self._wait_for(progress.ready, epoch, progress.tick_from)
            actions = progress.advance()

    def _flush(self, target: int, epoch: int) -> None:
        logic = self.logics[target]
        try:
            out = logic.on_eof()
        except Exception as exc:
            annotate(exc, logic.name, self.index)
            raise
        if out:
            self._push(self.after[target], out, epoch)

    def run(self) -> None:
        """Run until every worker's input is exhausted and nothing is in flight."""
        try:
            self._open_inputs(self._recover())
            for msg in self.recovery.take_deferred():
                self._handle(msg)
            while True:
                self._read_epoch(self.epoch)
                if self._finish_epoch(self.epoch):
                    return
                self.epoch += 1
        finally:
            if self.store is not None:
                self.store.close()

    # -- recovery --------------------------------------------------------------------------

    def _step_ids(self) -> list[str]:
        return [step.step_id for step, _ in self.input_steps] + [
            logic.step_id for logic in self.logics
        ]

    def _recover(self) -> dict[str, Any]:
        """Agree with every worker on the resume epoch, load the state as of then, and return
        the input states. Every check runs before the store is written.

        A cluster may resume with more workers than wrote the stores: each key's state then
        moves to the worker that owns it now, and every store is rewritten for the new count.
        """
        if self.recovery_dir is None:
            return {}
        db_dir = self.recovery_dir
        store.check_dir(db_dir)
        info = store.inspect(db_dir, self.index)
        if info is not None:
            unknown = sorted(set(info.step_ids) - set(self._step_ids()))
            if unknown:
                raise store.RecoveryError(
                    f"recovery store {info.path} holds state of steps {unknown} that this flow "
                    "does not have: it was written by a different flow"
                )
        numbers = {path.name: path.stem.split("-", 1)[1] for path in db_dir.glob("worker-*.sqlite3")}
        strays = sorted(
            name for name, number in numbers.items()
            if number.isdigit() and int(number) >= self.count and _holds_a_snapshot(db_dir, int(number))
        )
        if strays:
            raise store.RecoveryError(
                f"recovery directory {db_dir} holds stores of workers this run of {self.count} "
                f"does not have ({', '.join(strays)}): it was written by a larger cluster, and "
                "millrace cannot shrink a recovered cluster"
            )
        progress = self.recovery.share(StoreSummary.of(info))
        if self.count > 1:
            self.exchange.broadcast(self.index, progress)
            self._gather()
        decided = self.recovery.plan(db_dir)
        old_count, resume, flow_start = decided.old_count, decided.resume, decided.flow_start
        if flow_start is not None:
            for logic in self.logics:
                logic.rebase(flow_start)
        self.store = store.WorkerStore(db_dir, self.index, self.count, self._step_ids(), flow_start or self.flow_start)
        if info is not None and info.staged is not None:
            if decided.finish_rescale == info.staged[0]:
                self.store.commit_rescale()
            else:
                self.store.drop_rescale()  # no store swapped it in: the current ones are whole
            info = store.inspect(db_dir, self.index)
        input_states, keyed = self.store.load(resume) if info is not None else ({}, {})
        if old_count not in (None, self.count):
            keyed = self._migrate(keyed, old_count)
            self._rewrite_for_count(resume - 1, input_states, keyed)
        elif info is not None and info.worker_count != self.count and (info.progress is None or info.progress < 0):
            self.store.rescale(self.count, resume - 1, {}, {})  # it held nothing
        elif info is not None:
            self.store.rewind(resume)
        for logic in self.logics:
            logic.restore(keyed.get(logic.step_id, {}))
            self._track(logic)
        self.epoch = resume
        return input_states

    def _rewrite_for_count(self, epoch: int, inputs: dict[str, Any], keyed: dict[str, dict[Any, Any]]) -> None:
        """Rewrite this worker's store for the grown cluster in two halves: every worker
        stages its new store beside the current one, and only once all have does any swap it
        in. A start stopped in between finds either no store swapped (each keeps its current
        content, and the rescale runs again) or every store swapped or staged (the next start
        swaps the rest in, :func:`.resume.stopped_rescale`): never a key whose state is in
        no store."""
        assert self.store is not None
        self.store.stage_rescale(self.count, epoch, inputs, keyed)
        self.exchange.broadcast(self.index, self.recovery.stage())
        self._gather()
        self.store.commit_rescale()

    def _migrate(self, keyed: dict[str, dict[Any, Any]], old_count: int) -> dict[str, dict[Any, Any]]:
        """Send every key's state to its owner among ``self.count`` workers; return what this
        worker owns now, once every worker of the old cluster has sent its share."""
        for dest, msg in self.recovery.migrate(keyed, old_count):
            self.exchange.send(dest, msg)
        self._gather()
        return self.recovery.owned()

    def _gather(self) -> None:
        """Handle messages until the recovery round awaited is complete; data of a faster
        worker waits in :attr:`.migration.Recovery.deferred` until the state is loaded."""
        recv = self.exchange.recv
        recovery = self.recovery
        while not recovery.ready():
            msg = recv(self.index, 0.5)
            if msg is None:
                if self.exchange.stopping.is_set():
                    raise Stopped()
            elif msg[0] == STOP:
                raise Stopped()
            else:
                recovery.gather(msg)

    def _snapshot(self, epoch: int) -> None:
        assert self.store is not None
        inputs = {}
        for (step, _), (reader, _) in zip(self.input_steps, self.inputs):
            inputs[step.step_id] = reader.state
        chunks = {}
        for logic in self.logics:
            touched = logic.touched
            if touched is None:
                if not logic.is_empty():
                    chunks[logic.step_id] = self._full_chunk(logic)
            elif touched:
                chunks[logic.step_id] = self._chunk(logic, touched)
            self._track(logic)
        try:
            self.store.snapshot(epoch, inputs, chunks)
        except Exception as exc:
            annotate(exc, f"the snapshot of epoch {epoch} to {self.store.path}", self.index)
            raise

    @staticmethod
    def _track(logic: KeyedLogic) -> None:
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

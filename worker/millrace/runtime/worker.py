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
from contextlib import suppress
from datetime import datetime
from typing import Any

from ..common.clock import SYSTEM_CLOCK, Clock
from ..dataflow import Dataflow
from .epochs import BatchSizer, EpochPolicy
from .errors import annotate, cannot_travel
from .exchange import DATA, DONE, MARK, STOP, Exchange, Message
from .migration import RECOVERY_KINDS, Recovery
from .persistence import Snapshots, restore
from .progress import Broadcast, Ended, Flush, Progress, Snapshot
from .routing import Router, check_pairs
from .segments import Segment, build_logic, check_flow, check_outputs, lay_out
from .sinks import Sink
from .sources import Reader, build_reader, merge_resume_states
from .stores import Stores, WorkerStoreLike

# Stopped, Worker and check_flow are what the runtime's entry points import from here;
# build_logic and Segment moved to .segments, and stay importable from here too.
__all__ = ["Segment", "Stopped", "Worker", "build_logic", "check_flow", "check_outputs"]

_IDLE_SLEEP_MAX = 0.01
# Real time, whatever clock the flow reads: it measures how long the steps take on a batch.
_monotonic = SYSTEM_CLOCK.monotonic


class Stopped(Exception):
    """Another worker failed; this one leaves without an error of its own."""


class Worker:
    """Worker ``index`` of ``exchange.worker_count``, running ``flow``; with ``stores`` it
    resumes from, and snapshots to, its recovery store among them. Its windows read the time from
    ``clock`` (``epochs`` carries its own, which should be the same)."""

    def __init__(
        self,
        flow: Dataflow,
        index: int,
        exchange: Exchange,
        epochs: EpochPolicy,
        flow_start: datetime,
        stores: Stores | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        check_outputs(flow, stores is not None)
        self.index = index
        self.count = exchange.worker_count
        self.exchange = exchange
        self.epochs = epochs
        self.epoch = 0
        self.flow_start = flow_start
        self.stores = stores
        self.store: WorkerStoreLike | None = None
        self.router = Router(self.count, index)
        self.inputs: list[tuple[Reader, Segment]] = []
        self.recovery = Recovery(index, self.count)
        self.snapshots = Snapshots()
        self.sizer = BatchSizer()
        self._now = clock.now
        self.logics, self.input_steps, self.after = lay_out(flow, flow_start, self.router, clock.now)
        self.progress = Progress(index, self.count, len(self.logics))
        # Every capture's writer once (a capture's sink is in each segment that reaches it).
        segments = [segment for _, segment in self.input_steps] + self.after
        self.sinks: list[Sink] = list({id(s): s for seg in segments for s in seg.sinks if s is not None}.values())
        # The writers whose state is part of the snapshots (an exactly-once Kafka output).
        self.stateful_sinks = [sink for sink in self.sinks if sink.state_key is not None]

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
        for sink in self.stateful_sinks:
            assert sink.state_key is not None
            self._guard(f"the output kept in {sink.state_key}", sink.resume, resume_states.get(sink.state_key))

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
                now = self._now()
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
            if self.exchange.stopping.is_set():
                raise Stopped  # the cluster is stopping (a failure, Ctrl-C): process no more
            _, target, epoch, items = msg
            self._apply(target, items, epoch)
        elif kind == MARK or kind == DONE:
            self.progress.receive(msg)
        elif kind in RECOVERY_KINDS:
            self.recovery.receive(msg)
        elif kind == STOP:
            raise Stopped
        else:
            raise ValueError(f"worker {self.index} got an unknown message kind {kind!r}")

    def _drain(self) -> None:
        recv = self.exchange.recv
        while (msg := recv(self.index, None)) is not None:
            self._handle(msg)

    def _wait_for(self, ready: Callable[[], bool], epoch: int = 0, tick_from: int | None = None) -> None:
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
                raise Stopped

    def _until_deadline(self, pause: float, first: int = 0) -> float:
        """``pause``, shortened to the next window deadline of steps ``first`` and later."""
        for logic in self.logics[first:]:
            deadline = logic.next_deadline()
            if deadline is not None:
                pause = max(0.0, min(pause, (deadline - self._now()).total_seconds()))
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
        sizer = self.sizer
        while True:
            got_any = False
            for reader, segment in self.inputs:
                if reader.exhausted:
                    continue
                try:
                    batch = reader.read(min(epochs.limit(), sizer.limit))
                except Exception as exc:
                    annotate(exc, reader.name, self.index)
                    raise
                if batch:
                    got_any = True
                    epochs.items += len(batch)
                    started = _monotonic()
                    self._push(segment, batch, epoch)
                    sizer.took(len(batch), _monotonic() - started)
                    if epochs.over():
                        return
                    if multi and stopping.is_set():
                        raise Stopped
            if all(reader.exhausted for reader, _ in self.inputs):
                return
            if multi:
                if stopping.is_set():
                    raise Stopped
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
                    # The epoch's output is durable before the snapshot says it is complete.
                    self._flush_sinks(epoch)
                    if self.store is not None:
                        self._snapshot(epoch)
                elif isinstance(action, Ended):
                    self._end_sinks(action.epoch)
                    return action.eof
            self._wait_for(progress.ready, epoch, progress.tick_from)
            actions = progress.advance()

    def _flush_sinks(self, epoch: int) -> None:
        self._each_sink(lambda sink, e: sink.flush(e), epoch)

    def _end_sinks(self, epoch: int) -> None:
        """Every worker has snapshotted ``epoch``: it never runs again (what an exactly-once
        output waits for to commit it)."""
        self._each_sink(lambda sink, e: sink.ended(e), epoch)

    def _each_sink(self, call: Callable[[Sink, int], None], epoch: int) -> None:
        for sink in self.sinks:
            try:
                call(sink, epoch)
            except Exception as exc:
                annotate(exc, f"the output of epoch {epoch}", self.index)
                raise

    def _close(self) -> None:
        """Let go of the readers', writers' and store's connections, whatever happened."""
        for closable in [reader for reader, _ in self.inputs] + self.sinks:
            # The run's own outcome (or error) is what counts, not a failure to let go.
            with suppress(Exception):
                closable.close()
        if self.store is not None:
            self.store.close()

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
            self._close()

    # -- recovery --------------------------------------------------------------------------

    def _step_ids(self) -> list[str]:
        return [step.step_id for step, _ in self.input_steps] + [logic.step_id for logic in self.logics]

    def _recover(self) -> dict[str, Any]:
        """With a recovery directory, bring the state back (:func:`.persistence.restore`) and
        return the input states; without, start afresh."""
        if self.stores is None:
            return {}
        restored = restore(
            self.stores,
            self.recovery,
            self.exchange,
            self._gather,
            self._step_ids(),
            self.logics,
            self.flow_start,
            self._merge_inputs,
        )
        self.store, self.epoch, input_states = restored
        return input_states

    def _merge_inputs(self, by_worker: dict[str, dict[int, Any]]) -> dict[str, Any]:
        """This worker's input states in a grown cluster, from every old worker's."""
        merged = {}
        for step, _ in self.input_steps:
            state = merge_resume_states(step.config, self.index, by_worker.get(step.step_id, {}))
            if state is not None:
                merged[step.step_id] = state
        # A writer's kept output stays with its worker index (a grown cluster keeps every old
        # index), and so with the transactional id and marker that index commits it under.
        for sink in self.stateful_sinks:
            assert sink.state_key is not None
            kept = by_worker.get(sink.state_key, {})
            if self.index in kept:
                merged[sink.state_key] = kept[self.index]
        return merged

    def _gather(self) -> None:
        """Handle messages until the recovery round awaited is complete; data of a faster
        worker waits in :attr:`.migration.Recovery.deferred` until the state is loaded."""
        recv = self.exchange.recv
        recovery = self.recovery
        while not recovery.ready():
            msg = recv(self.index, 0.5)
            if msg is None:
                if self.exchange.stopping.is_set():
                    raise Stopped
            elif msg[0] == STOP:
                raise Stopped
            else:
                recovery.gather(msg)

    def _snapshot(self, epoch: int) -> None:
        assert self.store is not None
        inputs = {}
        for (step, _), (reader, _) in zip(self.input_steps, self.inputs, strict=True):
            inputs[step.step_id] = reader.state
        for sink in self.stateful_sinks:
            assert sink.state_key is not None
            inputs[sink.state_key] = sink.snapshot_state(epoch)
        chunks = self.snapshots.chunks(self.logics)
        try:
            self.store.snapshot(epoch, inputs, chunks)
        except Exception as exc:
            annotate(exc, f"the snapshot of epoch {epoch} to {self.store.where}", self.index)
            raise

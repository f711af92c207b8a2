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
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..common.clock import SYSTEM_CLOCK, Clock
from ..dataflow import Dataflow
from .combine import Combiner
from .credits import Credits
from .epochs import BATCH_SIZE, BatchSizer, EpochPolicy
from .errors import annotate, cannot_travel
from .exchange import CREDIT, DATA, DONE, MARK, STOP, Exchange, Message
from .migration import RECOVERY_KINDS, Recovery
from .persistence import Snapshots, restore
from .progress import Broadcast, Close, Ended, Flush, Progress, Snapshot
from .pump import Pump, output_of, pumpable
from .routing import Router, check_pairs
from .segments import Segment, build_logic, check_flow, check_outputs, lay_out
from .sinks import Sink
from .sources import Reader, build_reader, merge_resume_states
from .stats import WorkerStats
from .stores import Stores, WorkerStoreLike

if TYPE_CHECKING:
    from .metrics import ProcessMetrics

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
    ``clock`` (``epochs`` carries its own, which should be the same). With ``metrics`` (this
    process's, see :mod:`.metrics`) its steps count their items and it joins what a scrape
    reads; it keeps its other counters (:attr:`stats`) anyway, which cost nothing per item."""

    #: Whether an input whose segment is stateless steps then a capture runs as one fused
    #: loop (:mod:`.pump`); a worker that times every read and batch (tracing) keeps them apart.
    pumping = True

    def __init__(
        self,
        flow: Dataflow,
        index: int,
        exchange: Exchange,
        epochs: EpochPolicy,
        flow_start: datetime,
        stores: Stores | None = None,
        clock: Clock = SYSTEM_CLOCK,
        metrics: ProcessMetrics | None = None,
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
        #: Per input, its fused loop, or ``None`` where its segment runs batch by batch.
        self.pumps: list[Pump | None] = []
        self.recovery = Recovery(index, self.count)
        self.snapshots = Snapshots()
        self.sizer = BatchSizer()
        self._now = clock.now
        self.logics, self.input_steps, self.after = lay_out(
            flow, flow_start, self.router, clock.now, counted=metrics is not None
        )
        # Steps that combine values before they cross (reduce_window(..., combine=True)):
        # their windows close at epoch ends, and with peers their values cross as partials.
        combining = [target for target, logic in enumerate(self.logics) if logic.combine]
        self.progress = Progress(index, self.count, len(self.logics), frozenset(combining))
        self.credits = Credits(index, exchange.credit_window)
        # Messages taken from the inbox while waiting for credit that had to wait (see
        # Credits.eligible); handled first once the worker no longer waits, in order.
        self.aside: deque[Message] = deque()
        # Seconds spent waiting for credit (handling peers' messages meanwhile): not the time
        # a batch of input took through the steps, which sizes the next read.
        self.waited = 0.0
        self._waiting = False
        segments = [segment for _, segment in self.input_steps] + self.after
        #: Per step that combines, this worker's partials of it (more than one worker only).
        self.combiners: dict[int, Combiner] = {
            seg.target: seg.combiner for seg in segments if seg.combiner is not None and seg.target is not None
        }
        # Every capture's writer once (a capture's sink is in each segment that reaches it).
        self.sinks: list[Sink] = list({id(s): s for seg in segments for s in seg.sinks if s is not None}.values())
        self.stats = WorkerStats(len(self.input_steps), len(self.logics), self.count, _monotonic())
        #: Whether the loops count their steps' items (metrics are on).
        self.counted = metrics is not None
        if metrics is not None:
            metrics.add_worker(self)
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
            pump = None
            if self.pumping and segment.target is None and pumpable(segment.steps, reader):
                sink = segment.sinks[-1]
                assert sink is not None
                output, calls, with_epoch = output_of(sink, self.exchange.local_count)
                pump = Pump(reader, segment.steps, output, calls, with_epoch, counted=self.counted)
            self.pumps.append(pump)
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
        combiner = segment.combiner
        if combiner is not None and combiner.epoch != epoch:
            # What an earlier epoch left (nothing, when every epoch's end drained) goes first.
            self._drain_combiner(combiner)
            combiner.epoch = epoch
        if chain is not None:
            try:
                result = chain.run(batch, epoch)
            except Exception as exc:
                error = chain.explain(exc)
                annotate(error, chain.step_of(error) or "a stateless step", self.index)
                if error is exc:
                    raise
                raise error from None
            if combiner is not None:  # the loop reduced the batch into the partials
                if combiner.full():
                    self._drain_combiner(combiner)
                return
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

    def _pump(self, pump: Pump, limit: int, epoch: int) -> int:
        """Run ``pump`` once; an error names the step it came from, or the input."""
        try:
            return pump.run(limit, epoch)
        except Exception as exc:
            error = pump.explain(exc)
            annotate(error, pump.step_of(error) or pump.reader.name, self.index)
            if error is exc:
                raise
            raise error from None

    def _send(self, segment: Segment, target: int, parts: list[list[Any]], epoch: int) -> None:
        """Send each other worker its part of a batch for ``target``."""
        credits = self.credits
        sent = self.stats.sent
        for dest, part in enumerate(parts):
            sent[dest] += len(part)
            # A part past a batch (what a fan-out or a flush emits) goes in pieces: credit
            # counts messages, so bounded messages bound the bytes.
            for start in range(0, len(part), BATCH_SIZE):
                piece = part[start : start + BATCH_SIZE] if len(part) > BATCH_SIZE else part
                if not credits.available(dest, target):
                    self._await_credit(dest, target)
                credits.spend(dest, target)
                try:
                    self.exchange.send(dest, (DATA, target, epoch, piece, self.index))
                except Exception as exc:
                    error = cannot_travel(segment.target_name, piece, dest, exc)
                    annotate(error, segment.target_name, self.index)
                    raise error from exc

    def _drain_combiner(self, combiner: Combiner) -> None:
        """Route the partials ``combiner`` holds: this worker's keys into its step, the
        others' to their owners."""
        local, messages = combiner.drain()
        for index, pairs in local:
            self._merge(combiner.target, (index, pairs))
        credits = self.credits
        sent = self.stats.sent
        for dest, msg in messages:
            sent[dest] += len(msg[3][1])
            # Partials take the step's credit as its DATA does: a drain of many keys is many
            # chunks, and the peer's inbox must stay bounded.
            if not credits.available(dest, combiner.target):
                self._await_credit(dest, combiner.target)
            credits.spend(dest, combiner.target)
            try:
                self.exchange.send(dest, msg)
            except Exception as exc:
                error = cannot_travel(combiner.name, msg[3][1], dest, exc)
                annotate(error, combiner.name, self.index)
                raise error from exc

    def _merge(self, target: int, partials: tuple[int, list[Any]]) -> None:
        """Fold another worker's partials (see :mod:`.combine`) into step ``target``."""
        logic = self.logics[target]
        index, pairs = partials
        try:
            logic.merge(index, pairs)
        except Exception as exc:
            annotate(exc, logic.name, self.index)
            raise

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
        stats = self.stats
        stats.keyed_in[target] += len(batch)
        if out:
            stats.keyed_out[target] += len(out)
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
                    self.stats.keyed_out[target] += len(out)
                    self._push(self.after[target], out, epoch)

    # -- messages --------------------------------------------------------------------------

    def _handle(self, msg: Message) -> None:
        kind = msg[0]
        if kind == DATA:
            if self.exchange.stopping.is_set():
                raise Stopped  # the cluster is stopping (a failure, Ctrl-C): process no more
            _, target, epoch, items, sender = msg
            step = ~target if target < 0 else target  # partials of a step that combines: ~step
            # Paid back before the work: the batch is out of every queue now, and a peer
            # waiting for credit need not wait for what handling it emits.
            if (credit := self.credits.handled(sender, step)) is not None:
                self.exchange.send(sender, credit)
            if target < 0:
                self._merge(step, items)
            else:
                self._apply(target, items, epoch)
        elif kind == CREDIT:
            self.credits.receive(msg)
        elif kind == MARK or kind == DONE:
            self.progress.receive(msg)
        elif kind in RECOVERY_KINDS:
            self.recovery.receive(msg)
        elif kind == STOP:
            raise Stopped
        else:
            raise ValueError(f"worker {self.index} got an unknown message kind {kind!r}")

    def _recv(self, timeout: float | None) -> Message | None:
        """The next message: what was set aside while waiting for credit comes first."""
        if self.aside:
            return self.aside.popleft()
        return self.exchange.recv(self.index, timeout)

    def _drain(self) -> None:
        recv = self._recv
        while (msg := recv(None)) is not None:
            self._handle(msg)

    def _await_credit(self, dest: int, step: int) -> None:
        """Wait until worker ``dest`` takes more ``DATA`` (for step ``step``), handling
        meanwhile what does not make waiting workers a cycle, and setting the rest aside."""
        if self._waiting:  # inside an outer wait, whose time counts already
            self._take_while_waiting(dest, step)
            return
        started = _monotonic()
        self._waiting = True
        try:
            self._take_while_waiting(dest, step)
        finally:
            self._waiting = False
            waited = _monotonic() - started
            self.waited += waited
            self.stats.backpressure_seconds += waited

    def _take_while_waiting(self, dest: int, step: int) -> None:
        credits = self.credits
        aside = self.aside
        eligible = Credits.eligible
        while not credits.available(dest, step):
            # What an inner wait (for a later step) set aside may be for this one to handle.
            at = next((i for i, m in enumerate(aside) if eligible(m, step)), None)
            if at is not None:
                msg = aside[at]
                del aside[at]
                self._handle(msg)
                continue
            got = self.exchange.recv(self.index, 0.5)
            if got is None:
                if self.exchange.stopping.is_set():
                    raise Stopped
            elif got[0] == STOP:
                raise Stopped
            elif eligible(got, step):
                self._handle(got)
            else:
                aside.append(got)

    def _wait_for(self, ready: Callable[[], bool], epoch: int = 0, tick_from: int | None = None) -> None:
        """Handle messages until ``ready()``; meanwhile let time close the windows of steps
        ``tick_from`` and later (a worker whose input ran dry may wait here a whole epoch)."""
        recv = self._recv
        while not ready():
            timeout = 0.5
            if tick_from is not None:
                self._tick(epoch, tick_from)
                timeout = self._until_deadline(timeout, tick_from)
            msg = recv(timeout)
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
        msg = self._recv(pause)
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
        read = self.stats.read
        while True:
            got_any = False
            for position, ((reader, segment), pump) in enumerate(zip(self.inputs, self.pumps, strict=True)):
                if reader.exhausted:
                    continue
                if pump is not None:
                    started = _monotonic()
                    taken = self._pump(pump, min(epochs.limit(), sizer.limit), epoch)
                    if taken:
                        got_any = True
                        epochs.items += taken
                        read[position] += taken
                        sizer.took(taken, _monotonic() - started)
                        if epochs.over():
                            return
                        if multi and stopping.is_set():
                            raise Stopped
                    continue
                try:
                    batch = reader.read(min(epochs.limit(), sizer.limit))
                except Exception as exc:
                    annotate(exc, reader.name, self.index)
                    raise
                if batch:
                    got_any = True
                    epochs.items += len(batch)
                    read[position] += len(batch)
                    started = _monotonic()
                    waited = self.waited
                    self._push(segment, batch, epoch)
                    sizer.took(len(batch), _monotonic() - started - (self.waited - waited))
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
                if self.exchange.congested():
                    self._held_back()
            self._tick(epoch)
            if epochs.over():
                return
            if got_any:
                idle = 0.0
            else:
                idle = min(_IDLE_SLEEP_MAX, idle * 2 or 0.0005)
                self._idle(idle)

    def _held_back(self) -> None:
        """A queue this worker feeds is full: read no input until it has room (backpressure),
        handling messages meanwhile."""
        since = _monotonic()
        try:
            while self.exchange.congested():
                self._idle(0.001)
        finally:
            self.stats.backpressure_seconds += _monotonic() - since

    def _finish_epoch(self, epoch: int) -> bool:
        """Bring every step through ``epoch`` as :class:`.progress.Progress` says; return
        whether the whole flow has ended."""
        progress = self.progress
        actions = progress.end_input(epoch, all(reader.exhausted for reader, _ in self.inputs))
        while True:
            for action in actions:
                if isinstance(action, Broadcast):
                    message = action.message
                    if message[0] == MARK and message[1] in self.combiners:
                        # The step's partials of the epoch go before its mark.
                        self._drain_combiner(self.combiners[message[1]])
                    self.exchange.broadcast(self.index, message)
                elif isinstance(action, Close):
                    self._flush(action.step, epoch, epoch_end=True)
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

    def _flush(self, target: int, epoch: int, *, epoch_end: bool = False) -> None:
        """Every input ended: flush step ``target``; or, ``epoch_end``, every item of
        ``epoch`` reached it, and it closes the windows it closes at epoch ends."""
        logic = self.logics[target]
        try:
            out = logic.on_epoch_end() if epoch_end else logic.on_eof()
        except Exception as exc:
            annotate(exc, logic.name, self.index)
            raise
        if out:
            self.stats.keyed_out[target] += len(out)
            self._push(self.after[target], out, epoch)

    def run(self) -> None:
        """Run until every worker's input is exhausted and nothing is in flight."""
        try:
            self._open_inputs(self._recover())
            for msg in self.recovery.take_deferred():
                self._handle(msg)
            while True:
                self._read_epoch(self.epoch)
                ended = self._finish_epoch(self.epoch)
                self.stats.epoch_completed(_monotonic())
                if ended:
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
        started = _monotonic()
        chunks = self.snapshots.chunks(self.logics)
        try:
            size = self.store.snapshot(epoch, inputs, chunks)
        except Exception as exc:
            annotate(exc, f"the snapshot of epoch {epoch} to {self.store.where}", self.index)
            raise
        self.stats.snapshots.observe(_monotonic() - started)
        self.stats.snapshot_bytes = size

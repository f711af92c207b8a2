"""One worker: reads its share of the input, pushes batches through the steps, exchanges
keyed items with its peers, and keeps epochs in step with the whole cluster.

Progress protocol (per epoch ``e``, after this worker's input phase of ``e`` ends):

1. For each stateful step ``k`` in order, the worker sends ``MARK(k, e, eof)`` to every peer
   after the last ``DATA`` of ``e`` it sends for ``k``. Channels are FIFO per pair of workers,
   so once a worker holds the marks of all workers for ``k``, it has every item of ``e`` for
   ``k``. If every mark says ``eof`` (all inputs everywhere are exhausted), the step flushes:
   windows close. Only then does the worker mark step ``k + 1``.
2. After the last step, the worker sends ``DONE(e, eof)`` to all and starts epoch ``e + 1`` only
   when every worker is done with ``e``. These are the points where snapshots are taken.
3. When every ``DONE`` says ``eof``, the flow is over.

Between its ``DONE(e)`` and the last peer's, a worker may already receive data of ``e + 1``
from faster peers; it applies it at once, which keeps per-key epoch order because nothing of
``e`` can still arrive.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .. import plan
from ..dataflow import Dataflow
from .chain import Op, compile_op
from .epochs import EpochPolicy
from .errors import annotate
from .exchange import DATA, DONE, MARK, STOP, Exchange, Message
from .keyed import KeyedLogic, ReduceLogic, StatefulMapLogic
from .routing import Router, check_keyed
from .sinks import build_sink
from .sources import Reader, build_reader
from .windowing import WindowLogic, utcnow

_IDLE_SLEEP_MAX = 0.01


class Stopped(Exception):
    """Another worker failed; this one leaves without an error of its own."""


class Segment:
    """Stateless steps and the stateful step (by index) that receives their output, if any."""

    __slots__ = ("ops", "target", "target_name")

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.target: int | None = None
        self.target_name = ""


def check_flow(flow: Dataflow) -> None:
    """Raise :class:`ValueError` for a flow that cannot run, before anything starts."""
    if not isinstance(flow, Dataflow):
        raise TypeError(f"expected a Dataflow, got {flow!r}")
    steps = flow.steps
    if not any(isinstance(step, plan.Input) for step in steps):
        raise ValueError("the flow has no input: add one with Dataflow.input(step_id, config)")
    if not any(isinstance(step, plan.Capture) for step in steps):
        raise ValueError(
            "the flow has no capture, so its results would go nowhere: add one with "
            "Dataflow.capture(output_config)"
        )
    if not isinstance(steps[0], plan.Input):
        raise ValueError(
            f"{steps[0].name} comes before any input; a flow starts with Dataflow.input"
        )


def build_logic(step: plan.StatefulStep, flow_start: datetime) -> KeyedLogic:
    if isinstance(step, plan.Reduce):
        return ReduceLogic(step)
    if isinstance(step, plan.StatefulMap):
        return StatefulMapLogic(step)
    if isinstance(step, plan.WindowStep):
        return WindowLogic(step, flow_start)
    raise TypeError(f"unknown stateful step {step!r}")


class Worker:
    """Worker ``index`` of ``exchange.worker_count``, running ``flow`` from ``start_epoch``."""

    def __init__(
        self,
        flow: Dataflow,
        index: int,
        exchange: Exchange,
        epochs: EpochPolicy,
        flow_start: datetime,
        start_epoch: int = 0,
        resume_states: dict[str, Any] | None = None,
    ) -> None:
        self.index = index
        self.count = exchange.worker_count
        self.exchange = exchange
        self.epochs = epochs
        self.epoch = start_epoch
        self.router = Router(self.count)
        self.logics: list[KeyedLogic] = []
        self.after: list[Segment] = []
        self.inputs: list[tuple[Reader, Segment]] = []
        self._marks: dict[tuple[int, int], list[bool]] = {}
        self._dones: dict[int, list[bool]] = {}
        self._build(flow, flow_start, resume_states or {})

    # -- compiling the plan ----------------------------------------------------------------

    def _build(self, flow: Dataflow, flow_start: datetime, resume_states: dict[str, Any]) -> None:
        open_segments: list[Segment] = []
        for step in flow.steps:
            if isinstance(step, plan.Input):
                segment = Segment()
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
                open_segments.append(segment)
            elif isinstance(step, plan.StatefulStep):
                target = len(self.logics)
                self.logics.append(build_logic(step, flow_start))
                for segment in open_segments:
                    segment.target = target
                    segment.target_name = step.name
                after = Segment()
                self.after.append(after)
                open_segments = [after]
            else:
                sink = None
                if isinstance(step, plan.Capture):
                    sink = self._guard(
                        step.name, build_sink, step.config, self.index, self.count, step.name
                    )
                op = compile_op(step, sink)
                for segment in open_segments:
                    segment.ops.append(op)

    def _guard(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            annotate(exc, name, self.index)
            raise

    # -- moving batches --------------------------------------------------------------------

    def _push(self, segment: Segment, batch: list[Any], epoch: int) -> None:
        for op in segment.ops:
            try:
                batch = op.run(batch, epoch)
            except Exception as exc:
                annotate(exc, op.name, self.index)
                raise
            if not batch:
                return
        target = segment.target
        if target is None:
            return
        if self.count == 1:
            try:
                check_keyed(batch, segment.target_name)
            except TypeError as exc:
                annotate(exc, segment.target_name, self.index)
                raise
            self._apply(target, batch, epoch)
            return
        try:
            parts = self.router.split(batch, segment.target_name)
        except TypeError as exc:
            annotate(exc, segment.target_name, self.index)
            raise
        for dest, part in enumerate(parts):
            if part:
                if dest == self.index:
                    self._apply(target, part, epoch)
                else:
                    self.exchange.send(dest, (DATA, target, epoch, part))

    def _apply(self, target: int, batch: list[Any], epoch: int) -> None:
        logic = self.logics[target]
        try:
            out = logic.on_batch(batch)
        except Exception as exc:
            annotate(exc, logic.name, self.index)
            raise
        if out:
            self._push(self.after[target], out, epoch)

    def _tick(self, epoch: int) -> None:
        """Let time close windows; only while this worker's epoch ``epoch`` is still open."""
        now: datetime | None = None
        for target, logic in enumerate(self.logics):
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
        elif kind == MARK:
            _, target, epoch, _sender, eof = msg
            self._marks.setdefault((target, epoch), []).append(eof)
        elif kind == DONE:
            _, epoch, _sender, eof = msg
            self._dones.setdefault(epoch, []).append(eof)
        elif kind == STOP:
            raise Stopped()
        else:
            raise ValueError(f"worker {self.index} got an unknown message kind {kind!r}")

    def _drain(self) -> None:
        recv = self.exchange.recv
        while (msg := recv(self.index, None)) is not None:
            self._handle(msg)

    def _wait_for(self, ready: Callable[[], bool]) -> None:
        recv = self.exchange.recv
        while not ready():
            msg = recv(self.index, 0.5)
            if msg is not None:
                self._handle(msg)
            elif self.exchange.stopping.is_set():
                raise Stopped()

    def _idle(self, pause: float) -> None:
        """Nothing to read right now: wait for a message, a window deadline, or ``pause``."""
        for logic in self.logics:
            deadline = logic.next_deadline()
            if deadline is not None:
                pause = max(0.0, min(pause, (deadline - utcnow()).total_seconds()))
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
        """Bring every step through ``epoch``; return whether the whole flow has ended."""
        eof = all(reader.exhausted for reader, _ in self.inputs)
        multi = self.count > 1
        for target, logic in enumerate(self.logics):
            if multi:
                key = (target, epoch)
                self.exchange.broadcast(self.index, (MARK, target, epoch, self.index, eof))
                marks = self._marks.setdefault(key, [])
                marks.append(eof)
                self._wait_for(lambda: len(marks) == self.count)
                eof = all(marks)
                del self._marks[key]
            if eof:
                try:
                    out = logic.on_eof()
                except Exception as exc:
                    annotate(exc, logic.name, self.index)
                    raise
                if out:
                    self._push(self.after[target], out, epoch)
        if multi:
            self.exchange.broadcast(self.index, (DONE, epoch, self.index, eof))
            dones = self._dones.setdefault(epoch, [])
            dones.append(eof)
            self._wait_for(lambda: len(dones) == self.count)
            eof = all(dones)
            del self._dones[epoch]
        return eof

    def run(self) -> None:
        """Run until every worker's input is exhausted and nothing is in flight."""
        while True:
            self._read_epoch(self.epoch)
            if self._finish_epoch(self.epoch):
                return
            self.epoch += 1

"""A worker that reports what it does: spans and log lines per worker, epoch and batch.

Used only when :func:`millrace.tracing.setup_tracing` installed something
(:func:`.telemetry.new_worker`); a run without it has the plain :class:`~.worker.Worker` and
pays nothing. The hooks sit at batch granularity, around what runs a whole batch: an input's
read, a chain of fused steps (:mod:`.chain`), a stateful step's ``on_batch``, and its window
or end-of-input emissions. The generated per-item loops stay as they are.

The span tree of one process: ``millrace.run`` (or ``millrace.process`` under a
``spawn_cluster``'s run) > ``millrace.worker`` > ``millrace.epoch`` > one span per step batch,
named after the steps that ran it (``map #1 (f) -> reduce 'sum'``). A batch's span is made
once the batch is done, with the start time measured before it, so an input's empty polls
cost a clock read and leave no span.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace

from .telemetry import LOGGER, TRACE, Telemetry
from .worker import Stopped, Worker

log = logging.getLogger(f"{LOGGER}.worker")

_ERROR = trace.StatusCode.ERROR


class TracedWorker(Worker):
    """A :class:`~.worker.Worker` (same arguments first) whose spans hang from the context
    ``parent``, made by ``telemetry.tracer`` (``None``: logs only)."""

    def __init__(self, *args: Any, telemetry: Telemetry, parent: Any) -> None:
        super().__init__(*args)
        self._tracer = telemetry.tracer
        self._worker_span: Any = None
        self._epoch_span: Any = None
        self._epoch_items = 0
        #: What the spans of a batch hang from: the epoch's span once one is open.
        self._context: Any = parent
        self._parent = parent
        self._worker_context: Any = parent
        self._attributes = {"millrace.worker.index": self.index, "millrace.worker.count": self.count}
        if self._tracer is not None or log.isEnabledFor(TRACE):
            self.pumping = False  # a span per read and per batch: keep them apart
            self._wrap_batches()

    # -- batches ---------------------------------------------------------------------------

    def _wrap_batches(self) -> None:
        """Put a span (and a TRACE line) around every call that runs a whole batch."""
        for segment in [segment for _, segment in self.input_steps] + self.after:
            chain = segment.chain
            if chain is not None:
                chain.run = self._timed(" -> ".join(chain.names), chain.names, chain.run)
        for logic in self.logics:
            names = (logic.name,)
            # Instance attributes shadow the methods, for this worker's logic objects only.
            logic.on_batch = self._timed(logic.name, names, logic.on_batch)  # type: ignore[method-assign]
            logic.on_tick = self._timed(f"{logic.name} (timer)", names, logic.on_tick)  # type: ignore[method-assign]
            logic.on_eof = self._timed(f"{logic.name} (end of input)", names, logic.on_eof)  # type: ignore[method-assign]
            if logic.combine:  # partials merged, windows closed at epoch ends
                logic.merge = self._timed(f"{logic.name} (partials)", names, logic.merge)  # type: ignore[method-assign]
                logic.on_epoch_end = self._timed(f"{logic.name} (epoch end)", names, logic.on_epoch_end)  # type: ignore[method-assign]

    def _open_inputs(self, resume_states: dict[str, Any]) -> None:
        super()._open_inputs(resume_states)
        if self._tracer is not None or log.isEnabledFor(TRACE):
            for reader, _ in self.inputs:
                reader.read = self._timed(reader.name, (reader.name,), reader.read, skip_empty=True)  # type: ignore[method-assign]

    def _timed(
        self, name: str, steps: tuple[str, ...], fn: Callable[..., Any], skip_empty: bool = False
    ) -> Callable[..., Any]:
        tracer = self._tracer
        attributes = {**self._attributes, "millrace.steps": steps}
        index = self.index
        tracing = log.isEnabledFor(TRACE)

        def timed(*args: Any) -> Any:
            start = time.time_ns()
            try:
                out = fn(*args)
            except BaseException as exc:
                if tracer is not None:
                    span = tracer.start_span(name, self._context, attributes=attributes, start_time=start)
                    span.record_exception(exc)
                    span.set_status(_ERROR, f"{type(exc).__name__}: {exc}")
                    span.end()
                raise
            if skip_empty and not out:
                return out
            if tracer is not None:
                # All attributes at once: the SDK checks each value, and set_attribute takes a lock.
                batch = args[0] if args and type(args[0]) is list else out if skip_empty else None
                attrs = {**attributes, "millrace.epoch": self.epoch}
                if batch is not None:
                    attrs["millrace.batch.size"] = len(batch)
                tracer.start_span(name, self._context, attributes=attrs, start_time=start).end()
            if tracing:
                log.log(TRACE, "worker %d, epoch %d: %s ran a batch", index, self.epoch, name)
            return out

        return timed

    # -- epochs ----------------------------------------------------------------------------

    def _read_epoch(self, epoch: int) -> None:
        log.debug("worker %d: epoch %d begins", self.index, epoch)
        if self._tracer is not None:
            self._epoch_span = self._tracer.start_span(
                "millrace.epoch", self._worker_context, attributes={**self._attributes, "millrace.epoch": epoch}
            )
            self._context = trace.set_span_in_context(self._epoch_span)
        super()._read_epoch(epoch)
        self._epoch_items = self.epochs.items

    def _finish_epoch(self, epoch: int) -> bool:
        ended = super()._finish_epoch(epoch)
        log.debug("worker %d: epoch %d ends, %d items read", self.index, epoch, self._epoch_items)
        span = self._epoch_span
        if span is not None:
            span.set_attribute("millrace.epoch.items_read", self._epoch_items)
            span.set_attribute("millrace.epoch.last", ended)
            span.end()
            self._epoch_span = None
            self._context = self._worker_context
        return ended

    # -- the whole run ---------------------------------------------------------------------

    def run(self) -> None:
        log.info("worker %d of %d starts", self.index, self.count)
        if self._tracer is not None:
            self._worker_span = self._tracer.start_span("millrace.worker", self._parent, attributes=self._attributes)
        self._worker_context = self._context = (
            self._parent if self._worker_span is None else trace.set_span_in_context(self._worker_span)
        )
        try:
            super().run()
        except Stopped:
            log.info("worker %d stops: another worker failed", self.index)
            self._end_spans(None, "stopped: another worker failed")
            raise
        except BaseException as exc:
            log.error("worker %d failed in epoch %d: %s: %s", self.index, self.epoch, type(exc).__name__, exc)
            self._end_spans(exc, f"{type(exc).__name__}: {exc}")
            raise
        log.info("worker %d finished after epoch %d", self.index, self.epoch)
        self._end_spans(None, None)

    def _end_spans(self, exc: BaseException | None, failure: str | None) -> None:
        for span in (self._epoch_span, self._worker_span):
            if span is None:
                continue
            if exc is not None:
                span.record_exception(exc)
            if failure is not None:
                span.set_status(_ERROR, failure)
            span.end()
        self._epoch_span = self._worker_span = None

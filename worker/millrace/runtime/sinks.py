"""Per-worker writers built from output configurations."""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable
from itertools import repeat
from types import FunctionType, MethodType
from typing import Any

from ..outputs import (
    KafkaOutputConfig,
    ManualEpochOutputConfig,
    ManualOutputConfig,
    OutputConfig,
    StdOutputConfig,
    TestingEpochOutputConfig,
    TestingOutputConfig,
)
from .errors import describe

# Workers of one process share stdout and often one output callable (``print``); each batch is
# written under this lock so that lines from different workers never interleave mid-line.
# Reentrant: the fused input loop (pump.py) holds it while it calls the user's steps too, and
# a step that runs a flow of its own writing to stdout must not wait for itself.
OUTPUT_LOCK = threading.RLock()


class Sink:
    """Writes a batch of items that belong to one epoch."""

    #: The key under which the worker's snapshots keep this writer's state (beside the input
    #: states); ``None``: it keeps none. Only a writer with a key is asked for
    #: :meth:`snapshot_state` and given :meth:`resume`.
    state_key: str | None = None

    def write(self, batch: list[Any], epoch: int) -> None:
        raise NotImplementedError

    def flush(self, epoch: int) -> None:
        """Epoch ``epoch`` is over on this worker: make what was written of it durable before
        its snapshot records it as complete (a client's buffered records, for instance)."""

    def snapshot_state(self, epoch: int) -> Any:
        """What the snapshot of ``epoch`` keeps of this writer (with a :attr:`state_key`)."""
        return None

    def resume(self, state: Any) -> None:
        """The run starts from a snapshot holding ``state`` (``None``: none, a fresh start);
        called once, before any item is written."""

    def ended(self, epoch: int) -> None:
        """Every worker has snapshotted ``epoch``: no restart runs it again."""

    def close(self) -> None:
        """Let go of what the writer holds; the run is over."""


class _CallableSink(Sink):
    def __init__(self, fn: Callable[[Any], Any], with_epoch: bool) -> None:
        self.fn = fn
        self.with_epoch = with_epoch
        # CPython 3.11 runs a Python function or method called from a Python loop in the same
        # evaluation loop; map() calls it from C, a new one per item (about 15% of a cheap
        # sink's cost). A builtin such as print is cheaper through map().
        self.in_python = isinstance(fn, (FunctionType, MethodType))

    def write(self, batch: list[Any], epoch: int) -> None:
        fn = self.fn
        with OUTPUT_LOCK:
            if self.in_python:
                if self.with_epoch:
                    for item in batch:
                        fn((epoch, item))
                else:
                    for item in batch:
                        fn(item)
            elif self.with_epoch:
                deque(map(fn, zip(repeat(epoch), batch)), maxlen=0)
            else:
                deque(map(fn, batch), maxlen=0)


class _BatchCallableSink(Sink):
    """A ``ManualOutputConfig(batched=True)`` function: one call per non-empty batch."""

    def __init__(self, fn: Callable[[Any], Any], with_epoch: bool) -> None:
        self.fn = fn
        self.with_epoch = with_epoch

    def write(self, batch: list[Any], epoch: int) -> None:
        # A copy: the worker may pass the batch on to later steps, and the list is the
        # user's to keep or change.
        if batch:
            self.hand_over(list(batch), epoch)

    def hand_over(self, batch: list[Any], epoch: int) -> None:
        """Write ``batch``, a list nobody else holds (a fused loop's own): no copy."""
        if batch:
            with OUTPUT_LOCK:
                self.fn((epoch, batch) if self.with_epoch else batch)


class _ListSink(Sink):
    def __init__(self, out: Any, with_epoch: bool) -> None:
        self.out = out
        self.with_epoch = with_epoch

    def write(self, batch: list[Any], epoch: int) -> None:
        if batch:
            # One extend per batch: one call for a list, one round trip for a Manager proxy.
            self.out.extend(list(zip(repeat(epoch), batch)) if self.with_epoch else batch)


class _StdoutSink(Sink):
    def write(self, batch: list[Any], epoch: int) -> None:
        if batch:
            text = "\n".join(map(str, batch)) + "\n"
            with OUTPUT_LOCK:
                # Looked up on every write so doctest's and pytest's stdout capture see it.
                sys.stdout.write(text)
                sys.stdout.flush()


def capture_state_key(position: int) -> str:
    """Where the snapshots keep the state of the capture at ``position`` in the flow, beside
    the input states (keyed by step id; :func:`.segments.check_outputs` refuses a clash).

    >>> capture_state_key(3)
    'capture #3'
    """
    return f"capture #{position}"


def build_sink(config: OutputConfig, worker_index: int, worker_count: int, step_name: str, position: int = 0) -> Sink:
    """The writer of ``config`` for one worker; ``position``: the capture's place in the flow
    (what names a writer's state in the snapshots)."""
    if isinstance(config, ManualOutputConfig):
        fn = config.output_builder(worker_index, worker_count)
        takes = "each list of items" if config.batched else "each item"
        if not callable(fn):
            raise TypeError(
                f"{step_name}: output_builder must return a callable that takes {takes}, got {describe(fn)}"
            )
        with_epoch = isinstance(config, ManualEpochOutputConfig)
        if config.batched:
            return _BatchCallableSink(fn, with_epoch)
        return _CallableSink(fn, with_epoch)
    if isinstance(config, TestingOutputConfig):
        return _ListSink(config.out, with_epoch=isinstance(config, TestingEpochOutputConfig))
    if isinstance(config, StdOutputConfig):
        return _StdoutSink()
    if isinstance(config, KafkaOutputConfig):
        # Imported here: only a flow that writes Kafka needs the client (millrace[kafka]).
        if config.exactly_once:
            from .kafka_transactions import build_transactional_sink

            return build_transactional_sink(config, step_name, worker_index, position)
        from .kafka_sink import build_kafka_sink

        return build_kafka_sink(config, step_name)
    raise TypeError(f"{step_name}: unsupported output configuration {describe(config)}")

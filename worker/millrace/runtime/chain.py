"""Stateless steps as batch functions: each takes ``(batch, epoch)`` and returns the next batch.

Every function below spends its time in one Python call of the user's function per item; the
loops themselves run in C (``map``, ``compress``, ``chain``), which is what keeps a stateless
pipeline close to a hand-written loop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from itertools import chain, compress, repeat
from typing import Any

from .. import plan
from .errors import describe
from .sinks import Sink

Batch = list[Any]
BatchFn = Callable[[Batch, int], Batch]


class Op:
    """One compiled stateless step: its name for errors and its batch function."""

    __slots__ = ("name", "run")

    def __init__(self, name: str, run: BatchFn) -> None:
        self.name = name
        self.run = run


def _map(fn: Callable[[Any], Any]) -> BatchFn:
    def run(batch: Batch, epoch: int) -> Batch:
        return list(map(fn, batch))

    return run


def _flat_map(fn: Callable[[Any], Any], name: str) -> BatchFn:
    def run(batch: Batch, epoch: int) -> Batch:
        results = list(map(fn, batch))
        try:
            return list(chain.from_iterable(results))
        except TypeError:
            for item, result in zip(batch, results):
                try:
                    iter(result)
                except TypeError:
                    raise TypeError(
                        f"{name} must return an iterable, got {describe(result)} "
                        f"for the item {describe(item)}"
                    ) from None
            raise

    return run


def _filter(fn: Callable[[Any], bool], name: str) -> BatchFn:
    def run(batch: Batch, epoch: int) -> Batch:
        keep = list(map(fn, batch))
        if keep and not set(map(type, keep)) <= {bool}:
            for item, verdict in zip(batch, keep):
                if type(verdict) is not bool:
                    raise TypeError(
                        f"{name} must return a bool, got {describe(verdict)} "
                        f"for the item {describe(item)}"
                    )
        return list(compress(batch, keep))

    return run


def _inspect(fn: Callable[[Any], Any]) -> BatchFn:
    def run(batch: Batch, epoch: int) -> Batch:
        deque(map(fn, batch), maxlen=0)
        return batch

    return run


def _inspect_epoch(fn: Callable[[int, Any], Any]) -> BatchFn:
    def run(batch: Batch, epoch: int) -> Batch:
        deque(map(fn, repeat(epoch), batch), maxlen=0)
        return batch

    return run


def _capture(sink: Sink) -> BatchFn:
    write = sink.write

    def run(batch: Batch, epoch: int) -> Batch:
        write(batch, epoch)
        return batch

    return run


def compile_op(step: plan.Step, sink: Sink | None = None) -> Op:
    """The batch function of one stateless step (``sink`` is the worker's writer of a capture)."""
    name = step.name
    if isinstance(step, plan.Map):
        return Op(name, _map(step.fn))
    if isinstance(step, plan.FlatMap):
        return Op(name, _flat_map(step.fn, name))
    if isinstance(step, plan.Filter):
        return Op(name, _filter(step.fn, name))
    if isinstance(step, plan.Inspect):
        return Op(name, _inspect(step.fn))
    if isinstance(step, plan.InspectEpoch):
        return Op(name, _inspect_epoch(step.fn))
    if isinstance(step, plan.Capture):
        assert sink is not None
        return Op(name, _capture(sink))
    raise TypeError(f"not a stateless step: {step!r}")

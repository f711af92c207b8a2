"""The steps of a flow as plain data: what :class:`~millrace.dataflow.Dataflow` builds and the
runtime compiles. Nothing here runs user code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .inputs import InputConfig
from .outputs import OutputConfig
from .window import ClockConfig, WindowConfig


@dataclass(frozen=True)
class Step:
    """One step of the pipeline. ``name`` identifies it in error messages."""

    @property
    def name(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class _FunctionStep(Step):
    position: int
    fn: Callable[..., Any]

    kind = "step"

    @property
    def name(self) -> str:
        fn_name = getattr(self.fn, "__qualname__", None) or repr(self.fn)
        return f"{self.kind} #{self.position} ({fn_name})"


@dataclass(frozen=True)
class Map(_FunctionStep):
    kind = "map"


@dataclass(frozen=True)
class FlatMap(_FunctionStep):
    kind = "flat_map"


@dataclass(frozen=True)
class Filter(_FunctionStep):
    kind = "filter"


@dataclass(frozen=True)
class Inspect(_FunctionStep):
    kind = "inspect"


@dataclass(frozen=True)
class InspectEpoch(_FunctionStep):
    kind = "inspect_epoch"


@dataclass(frozen=True)
class Input(Step):
    step_id: str
    config: InputConfig

    @property
    def name(self) -> str:
        return f"input {self.step_id!r}"


@dataclass(frozen=True)
class Capture(Step):
    position: int
    config: OutputConfig

    @property
    def name(self) -> str:
        return f"capture #{self.position} ({type(self.config).__name__})"


@dataclass(frozen=True)
class StatefulStep(Step):
    """A keyed step: items are ``(key, value)`` and each key lives on one worker."""

    step_id: str

    kind = "stateful step"

    @property
    def name(self) -> str:
        return f"{self.kind} {self.step_id!r}"


@dataclass(frozen=True)
class Reduce(StatefulStep):
    reducer: Callable[[Any, Any], Any]
    is_complete: Callable[[Any], bool]

    kind = "reduce"


@dataclass(frozen=True)
class StatefulMap(StatefulStep):
    builder: Callable[[], Any]
    mapper: Callable[[Any, Any], tuple[Any, Any]]

    kind = "stateful_map"


@dataclass(frozen=True)
class WindowStep(StatefulStep):
    clock: ClockConfig
    window: WindowConfig


@dataclass(frozen=True)
class ReduceWindow(WindowStep):
    reducer: Callable[[Any, Any], Any]
    #: Whether values are combined per key before they cross between workers (the reducer
    #: is declared associative; see :meth:`~millrace.dataflow.Dataflow.reduce_window`).
    combine: bool = False

    kind = "reduce_window"


@dataclass(frozen=True)
class FoldWindow(WindowStep):
    builder: Callable[[], Any]
    folder: Callable[[Any, Any], Any]
    #: ``merger(acc, partial)``: folds in a partial another worker folded from ``builder()``;
    #: given, values are combined before they cross (see
    #: :meth:`~millrace.dataflow.Dataflow.fold_window`).
    merger: Callable[[Any, Any], Any] | None = None

    kind = "fold_window"


@dataclass(frozen=True)
class CollectWindow(WindowStep):
    kind = "collect_window"


def step_label(step: Step) -> str:
    """How metrics (the ``step_id`` label) and a Dataflow's ``status.steps`` name ``step``: its
    id, or for a stateless step its kind and position.

    >>> step_label(Map(2, abs)), step_label(Capture(3, None))
    ('map#2', 'capture#3')
    """
    if isinstance(step, (Input, StatefulStep)):
        return step.step_id
    if isinstance(step, Capture):
        return f"capture#{step.position}"
    if isinstance(step, _FunctionStep):
        return f"{step.kind}#{step.position}"
    return step.name

"""A flow laid out for one worker: its stateful steps, and the stateless steps between them.

Every input starts a :class:`Segment`, and so does every stateful step's output. A segment
runs its stateless steps (fused into one loop, see :mod:`.chain`) and hands what comes out to
the stateful step it ends in, if any; where that step has per-item code of its own, the loop
runs it too, and with more than one worker routes each item to the key's owner.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from datetime import datetime

from .. import plan
from ..common.clock import SYSTEM_CLOCK
from ..dataflow import Dataflow
from ..outputs import KafkaOutputConfig
from ..window import SystemClockConfig
from .chain import Chain, compile_chain
from .combine import Combiner
from .errors import annotate
from .keyed import KeyedLogic, ReduceLogic, StatefulMapLogic
from .routing import Router
from .sinks import Sink, build_sink, capture_state_key
from .system_windows import SystemClockWindowLogic
from .windowing import WindowLogic


class Segment:
    """Stateless steps and the stateful step (by index) that receives their output, if any."""

    __slots__ = ("steps", "sinks", "chain", "target", "target_name", "fused", "routed", "combiner")

    def __init__(self) -> None:
        self.steps: list[plan.Step] = []
        self.sinks: list[Sink | None] = []
        self.chain: Chain | None = None  # the steps fused, once the whole flow is built
        self.target: int | None = None
        self.target_name = ""
        #: Whether ``chain`` ends in the target's own loop, so it returns what the target
        #: emits; and whether that loop routes, so it returns ``(emitted, parts)``.
        self.fused = False
        self.routed = False
        #: With more than one worker, a target that combines is not routed to: the loop
        #: reduces into this worker's partials of it instead (see :mod:`.combine`).
        self.combiner: Combiner | None = None


def check_flow(flow: Dataflow) -> None:
    """Raise :class:`ValueError` for a flow that cannot run, before anything starts."""
    if not isinstance(flow, Dataflow):
        raise TypeError(f"expected a Dataflow, got {flow!r}")
    steps = flow.steps
    if not any(isinstance(step, plan.Input) for step in steps):
        raise ValueError("the flow has no input: add one with Dataflow.input(step_id, config)")
    if not any(isinstance(step, plan.Capture) for step in steps):
        raise ValueError(
            "the flow has no capture, so its results would go nowhere: add one with Dataflow.capture(output_config)"
        )
    if not isinstance(steps[0], plan.Input):
        raise ValueError(f"{steps[0].name} comes before any input; a flow starts with Dataflow.input")


def check_outputs(flow: Dataflow, recovering: bool) -> None:
    """Raise :class:`ValueError` for an output that cannot keep its promise: an exactly-once
    Kafka output without recovery (its kept output lives in the snapshots)."""
    inputs = {step.step_id for step in flow.steps if isinstance(step, plan.Input)}
    for step in flow.steps:
        if not (isinstance(step, plan.Capture) and isinstance(step.config, KafkaOutputConfig)):
            continue
        if step.config.exactly_once and not recovering:
            raise ValueError(
                f"{step.name}: exactly_once=True needs a recovery config (the output of an epoch is "
                "kept in the snapshots until every worker has finished it); pass recovery_config"
            )
        if step.config.exactly_once and capture_state_key(step.position) in inputs:
            raise ValueError(
                f"{step.name}: an input's step id {capture_state_key(step.position)!r} is where this output "
                "keeps its state in the snapshots; rename the input"
            )


def build_logic(
    step: plan.StatefulStep,
    flow_start: datetime,
    now: Callable[[], datetime] = SYSTEM_CLOCK.now,
) -> KeyedLogic:
    """The logic of ``step``; a windowed one reads the time from ``now`` (a clock's ``now``)."""
    if isinstance(step, plan.Reduce):
        return ReduceLogic(step)
    if isinstance(step, plan.StatefulMap):
        return StatefulMapLogic(step)
    if isinstance(step, plan.WindowStep):
        if isinstance(step.clock, SystemClockConfig):
            return SystemClockWindowLogic(step, flow_start, now)
        return WindowLogic(step, flow_start, now)
    raise TypeError(f"unknown stateful step {step!r}")


def lay_out(
    flow: Dataflow,
    flow_start: datetime,
    router: Router,
    now: Callable[[], datetime] = SYSTEM_CLOCK.now,
    counted: bool = False,
) -> tuple[list[KeyedLogic], list[tuple[plan.Input, Segment]], list[Segment]]:
    """``flow`` for worker ``router.me`` of ``router.worker_count``: the stateful steps'
    logic, each input's segment, and the segment after each stateful step. Builds the sinks
    (an error in one names its step and the worker). Windowed steps read the time from
    ``now``. ``counted``: the segments' loops count their steps' items (metrics are on)."""
    index, count = router.me, router.worker_count
    logics: list[KeyedLogic] = []
    input_steps: list[tuple[plan.Input, Segment]] = []
    after: list[Segment] = []
    open_segments: list[Segment] = []
    built: list[Sink] = []
    try:
        for step in flow.steps:
            if isinstance(step, plan.Input):
                segment = Segment()
                input_steps.append((step, segment))
                open_segments.append(segment)
            elif isinstance(step, plan.StatefulStep):
                target = len(logics)
                logics.append(build_logic(step, flow_start, now))
                for segment in open_segments:
                    segment.target = target
                    segment.target_name = step.name
                after_step = Segment()
                after.append(after_step)
                open_segments = [after_step]
            else:
                sink = None
                if isinstance(step, plan.Capture):
                    try:
                        sink = build_sink(step.config, index, count, step.name, step.position)
                        built.append(sink)
                    except Exception as exc:
                        annotate(exc, step.name, index)
                        raise
                for segment in open_segments:
                    segment.steps.append(step)
                    segment.sinks.append(sink)
    except BaseException:
        # The writers built before the failure hold connections (a Kafka producer, a file):
        # nobody else will close them.
        for sink in built:
            with suppress(Exception):
                sink.close()
        raise
    combiners: dict[int, Combiner] = {}
    for segment in [s for _, s in input_steps] + after:
        logic = None if segment.target is None else logics[segment.target]
        # The target's per-item code runs inside the loop of the steps before it (no list
        # in between: see chain.py); with more than one worker that loop routes, or, for a
        # target that combines, reduces into the worker's partials of it.
        if logic is not None and logic.combine and count > 1:
            assert segment.target is not None
            combiner = combiners.get(segment.target)
            if combiner is None:
                combiner = combiners[segment.target] = Combiner(logic, segment.target, router)  # type: ignore[arg-type]
            segment.chain = compile_chain(segment.steps, segment.sinks, combiner)
            segment.fused = True
            segment.combiner = combiner
        elif logic is not None and logic.loop_code is not None:
            routing = router if count > 1 else None
            segment.chain = compile_chain(segment.steps, segment.sinks, logic, routing, counted)
            segment.fused = True
            segment.routed = routing is not None
        elif segment.steps:
            segment.chain = compile_chain(segment.steps, segment.sinks, counted=counted)
    return logics, input_steps, after

"""Building a flow: :class:`Dataflow` is a linear pipeline of steps.

Build it, then run it with one of the entry points of :mod:`millrace.execution`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from . import plan
from .inputs import InputConfig
from .outputs import OutputConfig
from .window import ClockConfig, SystemClockConfig, WindowConfig

__all__ = ["Dataflow"]


def _require_callable(step: str, arg: str, fn: Any) -> None:
    if not callable(fn):
        raise TypeError(f"{step}: {arg} must be callable, got {fn!r}")


def _check_combine(step: str, combine: Any, clock_config: ClockConfig, keyword: str = "combine=True") -> None:
    """Refuse a ``combine`` that is not a bool, or that the step's clock does not allow."""
    if type(combine) is not bool:
        raise TypeError(f"{step}: combine must be True or False, got {combine!r}")
    if combine and not isinstance(clock_config, SystemClockConfig):
        raise ValueError(
            f"{step}: {keyword} needs SystemClockConfig, got {type(clock_config).__name__}: on an event "
            "clock whether a value is late depends on the order the values of its key arrive in, which "
            "combining them before they cross between workers would change"
        )


class Dataflow:
    """A pipeline of steps. Every method appends one step and returns ``None``.

    A flow needs at least one :meth:`input` and one :meth:`capture`; items flow through the
    steps in the order they were added.

    >>> from millrace.execution import run_main
    >>> from millrace.inputs import TestingInputConfig
    >>> from millrace.outputs import StdOutputConfig
    >>> flow = Dataflow()
    >>> flow.input("inp", TestingInputConfig(range(4)))
    >>> flow.map(lambda x: x * 10)
    >>> flow.capture(StdOutputConfig())
    >>> run_main(flow)
    0
    10
    20
    30
    """

    def __init__(self) -> None:
        self.steps: list[plan.Step] = []

    def __repr__(self) -> str:
        return f"Dataflow({', '.join(step.name for step in self.steps)})"

    # -- helpers ---------------------------------------------------------------------------

    def _check_step_id(self, method: str, step_id: Any) -> None:
        if not isinstance(step_id, str) or not step_id:
            raise TypeError(f"{method}: step_id must be a non-empty str, got {step_id!r}")
        for step in self.steps:
            if getattr(step, "step_id", None) == step_id:
                raise ValueError(
                    f"{method}: step_id {step_id!r} is already used by {step.name}; "
                    "step ids must be unique within a flow"
                )

    def _add_function_step(self, cls: type[plan._FunctionStep], fn: Any) -> None:
        _require_callable(cls.kind, "the function", fn)
        self.steps.append(cls(position=len(self.steps), fn=fn))

    def _check_windowed(self, method: str, step_id: Any, clock_config: Any, window_config: Any) -> None:
        self._check_step_id(method, step_id)
        if not isinstance(clock_config, ClockConfig):
            raise TypeError(f"{method} {step_id!r}: clock_config must be a ClockConfig, got {clock_config!r}")
        if not isinstance(window_config, WindowConfig):
            raise TypeError(f"{method} {step_id!r}: window_config must be a WindowConfig, got {window_config!r}")

    # -- inputs and outputs ----------------------------------------------------------------

    def input(self, step_id: str, input_config: InputConfig) -> None:
        """Introduce items into the flow; each worker builds its own reader.

        ``step_id`` names the input in errors and in recovery snapshots; ``input_config`` says
        where the items come from (:mod:`millrace.inputs`). An input that raises stops the flow
        with its error once every item it gave before has gone through the steps.

        >>> from millrace.execution import run_main
        >>> from millrace.inputs import TestingInputConfig
        >>> from millrace.outputs import StdOutputConfig
        >>> flow = Dataflow()
        >>> flow.input("letters", TestingInputConfig(["a", "b"]))
        >>> flow.map(str.upper)
        >>> flow.capture(StdOutputConfig())
        >>> run_main(flow)
        A
        B
        """
        self._check_step_id("input", step_id)
        if not isinstance(input_config, InputConfig):
            raise TypeError(f"input {step_id!r}: expected an InputConfig, got {input_config!r}")
        self.steps.append(plan.Input(step_id=step_id, config=input_config))

    def capture(self, output_config: OutputConfig) -> None:
        """Write every item on the worker that holds it, then pass it on unchanged.

        >>> from millrace.execution import run_main
        >>> from millrace.inputs import TestingInputConfig
        >>> from millrace.outputs import TestingOutputConfig
        >>> middle, end = [], []
        >>> flow = Dataflow()
        >>> flow.input("inp", TestingInputConfig([1, 2]))
        >>> flow.capture(TestingOutputConfig(middle))
        >>> flow.map(lambda x: -x)
        >>> flow.capture(TestingOutputConfig(end))
        >>> run_main(flow)
        >>> middle, end
        ([1, 2], [-1, -2])
        """
        if not isinstance(output_config, OutputConfig):
            raise TypeError(f"capture: expected an OutputConfig, got {output_config!r}")
        self.steps.append(plan.Capture(position=len(self.steps), config=output_config))

    # -- stateless steps -------------------------------------------------------------------

    def map(self, mapper: Callable[[Any], Any]) -> None:
        """Replace every item by ``mapper(item)``.

        >>> from millrace.execution import run_main
        >>> from millrace.inputs import TestingInputConfig
        >>> from millrace.outputs import StdOutputConfig
        >>> flow = Dataflow()
        >>> flow.input("inp", TestingInputConfig(["a b", "c"]))
        >>> flow.map(str.upper)
        >>> flow.capture(StdOutputConfig())
        >>> run_main(flow)
        A B
        C
        """
        self._add_function_step(plan.Map, mapper)

    def flat_map(self, mapper: Callable[[Any], Iterable[Any]]) -> None:
        """Replace every item by each element of the iterable ``mapper(item)``, in order and in
        the epoch of the item they came from.

        >>> from millrace.execution import run_main
        >>> from millrace.inputs import TestingInputConfig
        >>> from millrace.outputs import StdOutputConfig
        >>> flow = Dataflow()
        >>> flow.input("inp", TestingInputConfig(["hello world", "bye"]))
        >>> flow.flat_map(str.split)
        >>> flow.capture(StdOutputConfig())
        >>> run_main(flow)
        hello
        world
        bye
        """
        self._add_function_step(plan.FlatMap, mapper)

    def filter(self, predicate: Callable[[Any], bool]) -> None:
        """Keep the items for which ``predicate(item)`` is ``True``.

        The predicate must return a ``bool``; anything else is a :class:`TypeError`.

        >>> from millrace.execution import run_main
        >>> from millrace.inputs import TestingInputConfig
        >>> from millrace.outputs import StdOutputConfig
        >>> flow = Dataflow()
        >>> flow.input("inp", TestingInputConfig(range(6)))
        >>> flow.filter(lambda x: x % 2 == 0)
        >>> flow.capture(StdOutputConfig())
        >>> run_main(flow)
        0
        2
        4
        """
        self._add_function_step(plan.Filter, predicate)

    def inspect(self, inspector: Callable[[Any], None]) -> None:
        """Call ``inspector(item)`` for every item and pass the item on unchanged.

        >>> from millrace.execution import run_main
        >>> from millrace.inputs import TestingInputConfig
        >>> from millrace.outputs import TestingOutputConfig
        >>> flow = Dataflow()
        >>> flow.input("inp", TestingInputConfig(["x"]))
        >>> flow.inspect(lambda item: print("saw", item))
        >>> flow.capture(TestingOutputConfig([]))
        >>> run_main(flow)
        saw x
        """
        self._add_function_step(plan.Inspect, inspector)

    def inspect_epoch(self, inspector: Callable[[int, Any], None]) -> None:
        """Call ``inspector(epoch, item)`` for every item and pass the item on unchanged.

        >>> from millrace.execution import run_main, TestingEpochConfig
        >>> from millrace.inputs import TestingInputConfig
        >>> from millrace.outputs import TestingOutputConfig
        >>> flow = Dataflow()
        >>> flow.input("inp", TestingInputConfig(["a", "b", "c"]))
        >>> flow.inspect_epoch(lambda epoch, item: print(f"{item} in epoch {epoch}"))
        >>> flow.capture(TestingOutputConfig([]))
        >>> run_main(flow, epoch_config=TestingEpochConfig())
        a in epoch 0
        b in epoch 1
        c in epoch 2
        """
        self._add_function_step(plan.InspectEpoch, inspector)

    # -- keyed, stateful steps -------------------------------------------------------------

    def reduce(
        self,
        step_id: str,
        reducer: Callable[[Any, Any], Any],
        is_complete: Callable[[Any], bool],
    ) -> None:
        """Fold the values of each key until ``is_complete(acc)`` says the key is done.

        Items are ``(key, value)``. The first value of a key is its accumulator, then
        ``reducer(acc, value)`` folds each later one. After every update ``is_complete(acc)``
        (a ``bool``) is asked; on ``True`` the step emits ``(key, acc)`` and forgets the key.

        >>> from millrace.execution import run_main
        >>> from millrace.inputs import TestingInputConfig
        >>> from millrace.outputs import StdOutputConfig
        >>> flow = Dataflow()
        >>> flow.input("inp", TestingInputConfig([("a", 1), ("b", 5), ("a", 2), ("a", 3)]))
        >>> flow.reduce("sum_to_5", lambda acc, x: acc + x, lambda acc: acc >= 5)
        >>> flow.capture(StdOutputConfig())
        >>> run_main(flow)
        ('b', 5)
        ('a', 6)
        """
        self._check_step_id("reduce", step_id)
        _require_callable(f"reduce {step_id!r}", "reducer", reducer)
        _require_callable(f"reduce {step_id!r}", "is_complete", is_complete)
        self.steps.append(plan.Reduce(step_id=step_id, reducer=reducer, is_complete=is_complete))

    def stateful_map(
        self,
        step_id: str,
        builder: Callable[[], Any],
        mapper: Callable[[Any, Any], tuple[Any, Any]],
    ) -> None:
        """Map each ``(key, value)`` with a state kept per key.

        ``builder()`` makes a new key's state; ``mapper(state, value)`` returns
        ``(new_state, out)`` and the step emits ``(key, out)``. A ``None`` state forgets the key.

        >>> from millrace.execution import run_main
        >>> from millrace.inputs import TestingInputConfig
        >>> from millrace.outputs import StdOutputConfig
        >>> def running_total(total, value):
        ...     total += value
        ...     return total, total
        >>> flow = Dataflow()
        >>> flow.input("inp", TestingInputConfig([("a", 1), ("b", 10), ("a", 2)]))
        >>> flow.stateful_map("total", lambda: 0, running_total)
        >>> flow.capture(StdOutputConfig())
        >>> run_main(flow)
        ('a', 1)
        ('b', 10)
        ('a', 3)
        """
        self._check_step_id("stateful_map", step_id)
        _require_callable(f"stateful_map {step_id!r}", "builder", builder)
        _require_callable(f"stateful_map {step_id!r}", "mapper", mapper)
        self.steps.append(plan.StatefulMap(step_id=step_id, builder=builder, mapper=mapper))

    def reduce_window(
        self,
        step_id: str,
        clock_config: ClockConfig,
        window_config: WindowConfig,
        reducer: Callable[[Any, Any], Any],
        *,
        combine: bool = False,
    ) -> None:
        """Reduce the values of each key and window; emit ``(key, acc)`` when the window closes.

        >>> from datetime import datetime, timedelta, timezone
        >>> from millrace.execution import run_main
        >>> from millrace.inputs import TestingInputConfig
        >>> from millrace.outputs import StdOutputConfig
        >>> from millrace.window import EventClockConfig, TumblingWindowConfig
        >>> t0 = datetime(2023, 1, 1, tzinfo=timezone.utc)
        >>> events = [("a", {"at": t0 + timedelta(seconds=s), "n": 1}) for s in (0, 4, 7, 12)]
        >>> flow = Dataflow()
        >>> flow.input("inp", TestingInputConfig(events))
        >>> flow.map(lambda kv: (kv[0], kv[1]))
        >>> flow.reduce_window(
        ...     "count",
        ...     EventClockConfig(lambda e: e["at"], wait_for_system_duration=timedelta(0)),
        ...     TumblingWindowConfig(timedelta(seconds=5), start_at=t0),
        ...     lambda acc, e: {"at": acc["at"], "n": acc["n"] + e["n"]},
        ... )
        >>> flow.map(lambda kv: (kv[0], kv[1]["n"]))
        >>> flow.capture(StdOutputConfig())
        >>> run_main(flow)
        ('a', 2)
        ('a', 1)
        ('a', 1)

        ``combine=True`` (not in Bytewax 0.15; off by default) declares the reducer
        associative, ``reducer(reducer(a, b), c) == reducer(a, reducer(b, c))``, and lets
        millrace reduce values before they cross between workers, as Flink's and Spark's
        combiners do: a worker reduces the values it reads into one partial per key and
        window, and routes the partials when the epoch ends (or when it holds too many keys);
        each key's owner reduces the partials into its accumulator with the same reducer. On
        a cluster most values then never cross, nor are they routed one by one, which is what
        lets a keyed count scale with processes. It needs :class:`~millrace.window.SystemClockConfig`
        (on an event clock lateness depends on the order a key's values arrive in, which
        combining would change), and it changes two things, the same on any number of workers:

        - a value's time is when the step sees it on the worker that read it, not when it
          reaches the key's owner;
        - windows close at the end of an epoch: a window's results come out at the end of the
          first epoch that ends after the window does (as micro-batches do in Spark), and at
          the end of the input every open window closes, as without ``combine``.

        Values of a key reach the reducer in the order one worker read them, the partials of
        several workers in any order (as the values of several workers do without
        ``combine``); the reducer need not be commutative.

        >>> from datetime import timedelta
        >>> from millrace.execution import run_main
        >>> from millrace.inputs import TestingInputConfig
        >>> from millrace.outputs import StdOutputConfig
        >>> from millrace.window import SystemClockConfig, TumblingWindowConfig
        >>> flow = Dataflow()
        >>> flow.input("inp", TestingInputConfig("the cat saw the dog".split()))
        >>> flow.map(lambda word: (word, 1))
        >>> hour = TumblingWindowConfig(timedelta(hours=1))
        >>> flow.reduce_window("count", SystemClockConfig(), hour, lambda a, b: a + b, combine=True)
        >>> flow.capture(StdOutputConfig())
        >>> run_main(flow)
        ('the', 2)
        ('cat', 1)
        ('saw', 1)
        ('dog', 1)
        """
        self._check_windowed("reduce_window", step_id, clock_config, window_config)
        _require_callable(f"reduce_window {step_id!r}", "reducer", reducer)
        _check_combine(f"reduce_window {step_id!r}", combine, clock_config)
        self.steps.append(
            plan.ReduceWindow(
                step_id=step_id, clock=clock_config, window=window_config, reducer=reducer, combine=combine
            )
        )

    def fold_window(
        self,
        step_id: str,
        clock_config: ClockConfig,
        window_config: WindowConfig,
        builder: Callable[[], Any],
        folder: Callable[[Any, Any], Any],
        *,
        merger: Callable[[Any, Any], Any] | None = None,
    ) -> None:
        """Fold the values of each key and window into ``builder()``; emit ``(key, acc)`` when
        the window closes.

        >>> from datetime import datetime, timedelta, timezone
        >>> from millrace.execution import run_main
        >>> from millrace.inputs import TestingInputConfig
        >>> from millrace.outputs import StdOutputConfig
        >>> from millrace.window import EventClockConfig, TumblingWindowConfig
        >>> t0 = datetime(2023, 1, 1, tzinfo=timezone.utc)
        >>> clicks = [("ann", (t0 + timedelta(seconds=s), page)) for s, page in
        ...           [(1, "home"), (2, "cart"), (3, "home"), (11, "home")]]
        >>> flow = Dataflow()
        >>> flow.input("inp", TestingInputConfig(clicks))
        >>> flow.fold_window(
        ...     "pages",
        ...     EventClockConfig(lambda click: click[0]),
        ...     TumblingWindowConfig(timedelta(seconds=10), start_at=t0),
        ...     set,
        ...     lambda pages, click: pages | {click[1]},
        ... )
        >>> flow.map(lambda kv: (kv[0], sorted(kv[1])))
        >>> flow.capture(StdOutputConfig())
        >>> run_main(flow)
        ('ann', ['cart', 'home'])
        ('ann', ['home'])

        ``merger`` (not in Bytewax 0.15, which has no such argument; Bytewax 0.18 gave its
        ``fold_window`` one) combines values before they cross between workers, as
        ``reduce_window(..., combine=True)`` does (read there what changes: a value's time
        and when windows close): a worker folds the values it reads into ``builder()``, one
        partial per key and window, and each key's owner folds the partials into its
        accumulator with ``merger(acc, partial)``. The promise it makes:
        ``merger(acc, fold(builder(), values)) == fold(acc, values)``, where ``fold`` applies
        ``folder`` value by value. It needs :class:`~millrace.window.SystemClockConfig`.

        >>> from millrace.window import SystemClockConfig
        >>> flow = Dataflow()
        >>> flow.input("inp", TestingInputConfig([("ann", "home"), ("bob", "cart"), ("ann", "cart")]))
        >>> flow.fold_window(
        ...     "pages",
        ...     SystemClockConfig(),
        ...     TumblingWindowConfig(timedelta(hours=1)),
        ...     set,
        ...     lambda pages, page: pages | {page},
        ...     merger=lambda pages, more: pages | more,
        ... )
        >>> flow.map(lambda kv: (kv[0], sorted(kv[1])))
        >>> flow.capture(StdOutputConfig())
        >>> run_main(flow)
        ('ann', ['cart', 'home'])
        ('bob', ['cart'])
        """
        self._check_windowed("fold_window", step_id, clock_config, window_config)
        _require_callable(f"fold_window {step_id!r}", "builder", builder)
        _require_callable(f"fold_window {step_id!r}", "folder", folder)
        if merger is not None:
            _require_callable(f"fold_window {step_id!r}", "merger", merger)
            _check_combine(f"fold_window {step_id!r}", True, clock_config, "merger=")
        self.steps.append(
            plan.FoldWindow(
                step_id=step_id,
                clock=clock_config,
                window=window_config,
                builder=builder,
                folder=folder,
                merger=merger,
            )
        )

    def collect_window(self, step_id: str, clock_config: ClockConfig, window_config: WindowConfig) -> None:
        """Collect the values of each key and window into a list ordered by the clock's time;
        emit ``(key, list)`` when the window closes.

        >>> from datetime import datetime, timedelta, timezone
        >>> from millrace.execution import run_main
        >>> from millrace.inputs import TestingInputConfig
        >>> from millrace.outputs import StdOutputConfig
        >>> from millrace.window import EventClockConfig, TumblingWindowConfig
        >>> t0 = datetime(2023, 1, 1, tzinfo=timezone.utc)
        >>> at = lambda s: t0 + timedelta(seconds=s)
        >>> flow = Dataflow()
        >>> flow.input("inp", TestingInputConfig([("k", (at(3), "c")), ("k", (at(1), "a"))]))
        >>> flow.collect_window(
        ...     "collect",
        ...     EventClockConfig(lambda v: v[0], wait_for_system_duration=timedelta(seconds=10)),
        ...     TumblingWindowConfig(timedelta(seconds=10), start_at=t0),
        ... )
        >>> flow.map(lambda kv: (kv[0], [letter for _, letter in kv[1]]))
        >>> flow.capture(StdOutputConfig())
        >>> run_main(flow)
        ('k', ['a', 'c'])
        """
        self._check_windowed("collect_window", step_id, clock_config, window_config)
        self.steps.append(plan.CollectWindow(step_id=step_id, clock=clock_config, window=window_config))

"""Helpers for tests and doctests.

:data:`doctest_ctx` stands in for a :mod:`multiprocessing` context but runs each "process" as a
thread of the calling process, so that output printed by :func:`~millrace.execution.spawn_cluster`
children lands where a doctest can see it. Each thread still runs a full cluster process: its
own workers, its own ZeroMQ sockets on loopback.

:class:`ManualClock` and :func:`use_clock` let a test drive the time a flow sees instead of
waiting for it. Under ``with use_clock(clock):`` the runs started in the block
(:func:`~millrace.execution.run_main`, :func:`~millrace.execution.cluster_main`,
:func:`~millrace.execution.spawn_cluster`) read ``clock`` for their periodic epochs
(``PeriodicEpochConfig``), their system-clock windows (``SystemClockConfig``: item times and
window closes) and the event clock's watermarks (moved on by system time between events);
``clock.advance(timedelta)`` is the only thing that moves it. Advancing it from the flow's own
input makes the point where time passes exact: an epoch ends after the batch in which its
length has passed, and an input that yields ``None`` ("nothing yet") right after advancing
ends the batch there.

>>> from datetime import timedelta
>>> from millrace.dataflow import Dataflow
>>> from millrace.execution import PeriodicEpochConfig, run_main
>>> from millrace.inputs import ManualInputConfig
>>> from millrace.outputs import StdOutputConfig
>>> clock = ManualClock()
>>> def minutes(worker_index, worker_count, resume_state):
...     for minute in range(3):
...         yield minute, minute
...         clock.advance(timedelta(minutes=1))  # a minute passes, in no time
...         yield None
>>> flow = Dataflow()
>>> flow.input("inp", ManualInputConfig(minutes))
>>> flow.inspect_epoch(lambda epoch, item: print(f"epoch {epoch}: {item}"))
>>> flow.capture(StdOutputConfig())
>>> with use_clock(clock):
...     run_main(flow, epoch_config=PeriodicEpochConfig(timedelta(minutes=1)))
epoch 0: 0
0
epoch 1: 1
1
epoch 2: 2
2

The clock is read when a run starts and is kept until it ends; it is process-wide (the thread
processes of :data:`doctest_ctx` share it). ``spawn_cluster`` on real processes gives each
process a copy, pickled together with the flow, so a flow's function that advances the clock
advances its own process's copy. The transport's liveness timers (connect timeouts, lost
peers) always run on real time.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from .common.clock import ManualClock, installed

__all__ = ["ManualClock", "doctest_ctx", "test_print", "use_clock"]

#: ``with use_clock(clock):`` runs started in the block read ``clock``
#: (:func:`millrace.common.clock.installed`).
use_clock = installed

_print_lock = threading.Lock()


def test_print(*args: Any, **kwargs: Any) -> None:
    """``print`` with flush, under a lock, so lines from concurrent workers stay whole.

    >>> from millrace.dataflow import Dataflow
    >>> from millrace.execution import run_main
    >>> from millrace.inputs import TestingInputConfig
    >>> from millrace.outputs import ManualOutputConfig
    >>> flow = Dataflow()
    >>> flow.input("inp", TestingInputConfig(["a", "b"]))
    >>> flow.capture(ManualOutputConfig(lambda worker_index, worker_count: test_print))
    >>> run_main(flow)
    a
    b
    """
    with _print_lock:
        print(*args, flush=True, **kwargs)


test_print.__test__ = False  # type: ignore[attr-defined]


class _ThreadProcess:
    """The part of :class:`multiprocessing.Process` that spawn_cluster uses, on a thread."""

    def __init__(
        self,
        target: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        name: str | None = None,
        daemon: bool | None = None,
    ) -> None:
        self.exitcode: int | None = None
        self._target = target
        self._args = args
        self._kwargs = kwargs or {}
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.name = self._thread.name

    def _run(self) -> None:
        try:
            self._target(*self._args, **self._kwargs)
            self.exitcode = 0
        except SystemExit as exc:
            self.exitcode = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            self.exitcode = 1
            raise

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()


class _ThreadManager:
    """``Manager()`` whose lists are plain lists (every "process" shares this memory)."""

    def __enter__(self) -> _ThreadManager:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def list(self, *args: Any) -> list[Any]:
        return list(*args)

    def dict(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def shutdown(self) -> None:
        return None


class _DoctestContext:
    """A stand-in for a :mod:`multiprocessing` context, for ``spawn_cluster(mp_ctx=...)``: each
    "process" is a thread of this one (a full cluster process all the same), so what it prints
    shows in a doctest and a plain list works as an output.

    >>> from millrace.dataflow import Dataflow
    >>> from millrace.execution import spawn_cluster
    >>> from millrace.inputs import TestingInputConfig
    >>> from millrace.outputs import TestingOutputConfig
    >>> out = []
    >>> flow = Dataflow()
    >>> flow.input("inp", TestingInputConfig(range(6)))
    >>> flow.map(lambda x: x * 10)
    >>> flow.capture(TestingOutputConfig(out))
    >>> spawn_cluster(flow, proc_count=2, worker_count_per_proc=2, mp_ctx=doctest_ctx)
    >>> sorted(out)
    [0, 10, 20, 30, 40, 50]
    """

    Process = _ThreadProcess
    #: spawn_cluster hands the flow over as it is instead of pickling it.
    shares_memory = True

    @staticmethod
    def Manager() -> _ThreadManager:  # noqa: N802 - mirrors multiprocessing's API
        return _ThreadManager()

    @staticmethod
    def Queue() -> queue.Queue[Any]:  # noqa: N802
        return queue.Queue()

    def __repr__(self) -> str:
        return "millrace.testing.doctest_ctx"


#: A thread-backed stand-in for a multiprocessing context (see the module docstring).
doctest_ctx = _DoctestContext()

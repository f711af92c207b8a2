"""Helpers for tests and doctests.

:data:`doctest_ctx` stands in for a :mod:`multiprocessing` context but runs each "process" as a
thread of the calling process, so that output printed by :func:`~millrace.execution.spawn_cluster`
children lands where a doctest can see it. Each thread still runs a full cluster process: its
own workers, its own ZeroMQ sockets on loopback.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["doctest_ctx", "test_print"]

_print_lock = threading.Lock()


def test_print(*args: Any, **kwargs: Any) -> None:
    """``print`` with flush, under a lock, so lines from concurrent workers stay whole."""
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

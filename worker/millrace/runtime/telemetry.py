"""What :func:`millrace.tracing.setup_tracing` installed, as the runtime sees it.

The entry points ask :func:`current` once per run. ``None`` (nothing installed) runs the plain
:class:`~.worker.Worker`: a flow that is not traced pays nothing, not even a check per batch.
Otherwise the run gets a span (:func:`run_span`) and its workers are
:class:`~.traced.TracedWorker`, which add spans and log lines at batch and epoch granularity.

OpenTelemetry is imported only once tracing is installed, so ``import millrace`` stays as
cheap as it was.

>>> current() is None
True
>>> with run_span("millrace.run", {"millrace.proc_count": 1}) as parent:
...     print(parent)
None
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .worker import Worker

#: The logger every millrace module logs under (``millrace.cluster``, ``millrace.worker``...).
LOGGER = "millrace"
#: Below DEBUG, as Bytewax's ``TRACE``: one line per batch.
TRACE = 5
logging.addLevelName(TRACE, "TRACE")


@dataclass(frozen=True)
class Telemetry:
    """An installed setup: ``tracer`` (an OpenTelemetry ``Tracer``; ``None`` when only logs
    were asked for), and ``handoff``, which sets up the same in another process (a process
    started by ``spawn_cluster``) and returns what exports its spans before it exits."""

    tracer: Any
    handoff: Callable[[], Callable[[], object]] | None = None


_lock = threading.Lock()
_current: Telemetry | None = None


def install(telemetry: Telemetry | None) -> Telemetry | None:
    """Make ``telemetry`` the current setup (``None``: none); return the one it replaces."""
    global _current
    with _lock:
        previous, _current = _current, telemetry
    return previous


def current() -> Telemetry | None:
    """The installed setup, or ``None``."""
    return _current


def carrier(parent: Any) -> dict[str, str]:
    """The W3C trace context of the span context ``parent`` as a dict that pickles, for a
    process that continues this trace (empty without a parent)."""
    if parent is None:
        return {}
    from opentelemetry.propagate import inject

    out: dict[str, str] = {}
    inject(out, context=parent)
    return out


@contextmanager
def run_span(name: str, attributes: Mapping[str, Any], parent: Mapping[str, str] | None = None) -> Iterator[Any]:
    """A span around a run (or one process of it), as a child of the trace context in
    ``parent`` (see :func:`carrier`); yields the OpenTelemetry context its workers' spans
    hang from (``None`` when nothing traces). An exception leaving the block marks the span
    as failed and goes on."""
    telemetry = _current
    if telemetry is None or telemetry.tracer is None:
        yield None
        return
    from opentelemetry import trace
    from opentelemetry.propagate import extract

    context = extract(dict(parent)) if parent else None
    span = telemetry.tracer.start_span(name, context=context, attributes=dict(attributes))
    try:
        yield trace.set_span_in_context(span)
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        span.end()


def new_worker(telemetry: Telemetry | None, parent: Any, *args: Any) -> Worker:
    """A worker of the run (``args`` as :class:`~.worker.Worker` takes them): the plain one
    when ``telemetry`` is ``None``, else a :class:`~.traced.TracedWorker` whose spans hang
    from the context ``parent`` (what :func:`run_span` yielded)."""
    if telemetry is None:
        return Worker(*args)
    from .traced import TracedWorker

    return TracedWorker(*args, telemetry=telemetry, parent=parent)


def continue_in_child(handoff: Callable[[], Callable[[], object]] | None) -> Callable[[], object] | None:
    """In a process ``spawn_cluster`` started: set up what its caller had (``handoff`` is
    :attr:`Telemetry.handoff`, pickled there), and return what flushes it at the end."""
    return None if handoff is None else handoff()

"""One process of a cluster: its worker threads, its link to the other processes, and the
supervision that turns any failure into a stop of the whole cluster."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from ..common import clock as clocks
from ..common.clock import SYSTEM_CLOCK, Clock
from ..common.settings import read
from ..transport.link import ZmqLink
from ..transport.listener import Listener
from . import telemetry
from .engine import check_recovery, epoch_policy
from .errors import ClusterError, PeerLost, where
from .exchange import Exchange
from .worker import Stopped, check_flow

if TYPE_CHECKING:
    from ..common.epoch_config import EpochConfig
    from ..dataflow import Dataflow
    from ..recovery import RecoveryConfig
    from .metrics import ProcessMetrics

log = logging.getLogger("millrace.cluster")

CREDIT_WINDOW_ENV = "MILLRACE_CREDIT_WINDOW"

# How long a failing process waits for its workers to leave user code before it raises anyway.
_STOP_GRACE = 5.0


def failure_reason(exc: BaseException, worker: int, proc_id: int) -> str:
    """One line for the other processes: which worker, which step, what error."""
    place = where(exc) or f"worker {worker}"
    return f"worker {worker} (process {proc_id}) failed, {place}: {type(exc).__name__}: {exc}"


def run_process(
    flow: Dataflow,
    addresses: list[str],
    proc_id: int,
    *,
    workers_per_proc: int,
    epoch_config: EpochConfig | None,
    recovery_config: RecoveryConfig | None,
    secret: bytes | None,
    connect_timeout: float,
    cluster_id: str = "",
    listener: Listener | None = None,
    abandoned: Callable[[], str | None] | None = None,
    on_formed: Callable[[], None] | None = None,
    clock: Clock | None = None,
    trace_parent: dict[str, str] | None = None,
    encrypt: bool = False,
    metrics: ProcessMetrics | None = None,
) -> None:
    """Run process ``proc_id`` of the cluster at ``addresses`` until the flow ends everywhere.
    ``listener``: this process's socket, already bound at its address (the link closes it).
    ``abandoned``: polled while the workers run; a reason it returns (whoever waits for this
    process is gone) stops the whole cluster. ``on_formed``: called once every process has
    joined, before the workers start (a pod becomes ready then). ``clock``: what the epochs
    and windows read (default: the clock installed now, :func:`millrace.common.clock.current`).
    ``trace_parent``: the trace context (:func:`.telemetry.carrier`) of the ``spawn_cluster``
    run this process is part of; its span is then a ``millrace.process`` in that trace.
    ``encrypt``: encrypt the traffic (CURVE, keys derived from ``secret``). ``metrics``: this
    process's metrics (served by the caller, see :mod:`.metrics_server`), which the run and its
    workers report to.

    A failure raises: the original exception where it happened; elsewhere a
    :class:`ClusterError`, or a :class:`PeerLost` when a process went away (then forming the
    cluster again can go on); a ``KeyboardInterrupt`` (Ctrl-C, or a pod's SIGTERM) stops the
    whole cluster, which the others see as a lost peer."""
    clock = clock if clock is not None else clocks.current()
    try:
        check_flow(flow)
        epoch_policy(epoch_config)  # reject a bad config before connecting to anyone
        stores = check_recovery(recovery_config, flow)
        proc_count = max(1, len(addresses))
        if not 0 <= proc_id < proc_count:
            raise ValueError(f"proc_id must be in 0..{proc_count - 1} for {proc_count} addresses, got {proc_id}")
        if type(workers_per_proc) is not int or workers_per_proc < 1:
            raise ValueError(f"worker_count_per_proc must be a positive int, got {workers_per_proc!r}")
        # Read here, where every process of every entry point passes (cluster_main, a process
        # of spawn_cluster, a pod), before connecting: a malformed value fails at start.
        credit_window: int = read(os.environ, CREDIT_WINDOW_ENV)
        link = None
        if proc_count > 1:
            link = ZmqLink(
                addresses, proc_id, workers_per_proc, secret, connect_timeout, cluster_id, listener, encrypt=encrypt
            )
    except BaseException:
        if listener is not None:
            listener.close()
        raise
    exchange = Exchange(
        proc_count * workers_per_proc,
        first=proc_id * workers_per_proc,
        local_count=workers_per_proc,
        remote=link,
        credit_window=credit_window,
    )
    if metrics is not None:
        metrics.start_run(proc_id, exchange, link.counters if link is not None else None)
    if link is not None:
        try:
            link.start(exchange)
            link.wait_ready()
        except BaseException:
            link.close(clean=False)
            raise
    if on_formed is not None:
        on_formed()
    flow_start: datetime = clock.now()
    errors: list[tuple[int, BaseException]] = []

    installed = telemetry.current()
    attributes = {
        "millrace.proc_id": proc_id,
        "millrace.proc_count": proc_count,
        "millrace.worker.count": proc_count * workers_per_proc,
    }
    name = "millrace.process" if trace_parent else "millrace.run"
    with telemetry.run_span(name, attributes, trace_parent) as parent:
        # Set by each worker thread as it begins and as it leaves: what the main thread waits
        # on, never a join (see _supervise).
        began = [threading.Event() for _ in range(workers_per_proc)]
        finished = [threading.Event() for _ in range(workers_per_proc)]

        def work(index: int) -> None:
            slot = index - exchange.first
            began[slot].set()
            try:
                if exchange.stopping.is_set():
                    return  # stopped (Ctrl-C) while the threads started: _join may not wait for it
                telemetry.new_worker(
                    installed,
                    parent,
                    flow,
                    index,
                    exchange,
                    epoch_policy(epoch_config, clock),
                    flow_start,
                    stores,
                    clock,
                    metrics,
                ).run()
            except Stopped:
                pass
            except BaseException as exc:
                errors.append((index, exc))
                exchange.fail(failure_reason(exc, index, proc_id))
            finally:
                finished[slot].set()

        threads = [
            threading.Thread(
                target=work, args=(exchange.first + t,), name=f"millrace-worker-{exchange.first + t}", daemon=True
            )
            for t in range(workers_per_proc)
        ]
        try:
            # Started inside the try: a Ctrl-C in the middle of a Thread.start must stop the
            # threads already running too (raised outside, it ended the process under them).
            for thread in threads:
                thread.start()
            _supervise(threads, began, finished, exchange, abandoned)
        except KeyboardInterrupt as exc:
            exchange.fail(f"process {proc_id} was stopped ({exc or 'Ctrl-C'})", peer_lost=True)
            _join(threads, began, finished, _STOP_GRACE)
            if link is not None:
                link.close(clean=False)
            raise
        failed = bool(errors) or exchange.stopping.is_set()
        if link is not None:
            link.close(clean=not failed)
        if errors:
            raise errors[0][1]
        if exchange.stopping.is_set():
            raise (PeerLost if exchange.peer_lost else ClusterError)(exchange.reason or "the cluster stopped")


def _supervise(
    threads: list[threading.Thread],
    began: list[threading.Event],
    finished: list[threading.Event],
    exchange: Exchange,
    abandoned: Callable[[], str | None] | None,
) -> None:
    """Wait for the workers; once the cluster is failing, give them a grace period.

    Waits on the workers' ``finished`` events, not ``Thread.join``: a Ctrl-C raised inside
    CPython's ``join`` (before 3.13) can mark a running thread as ended (bpo-45274's handler
    releases the lock the running thread holds), and the stop would not wait for it."""
    for done in finished:
        while not done.wait(0.1):
            if abandoned is not None and (reason := abandoned()):
                log.warning("%s; stopping", reason)  # no one else is left to say it
                exchange.fail(reason)
            if exchange.stopping.is_set():
                _join(threads, began, finished, _STOP_GRACE)
                return


def _join(
    threads: list[threading.Thread], began: list[threading.Event], finished: list[threading.Event], timeout: float
) -> None:
    """Wait up to ``timeout`` for the workers that began; the cluster is stopping, so one that
    begins only now leaves at once (see ``work``), and one that never started never will."""
    # Real time, whatever clock the flow reads: this waits for real threads.
    monotonic = SYSTEM_CLOCK.monotonic
    deadline = monotonic() + timeout
    running = [(t, done) for t, start, done in zip(threads, began, finished, strict=True) if start.is_set()]
    for _, done in running:
        done.wait(max(0.0, deadline - monotonic()))
    stuck = [t.name for t, done in running if not done.is_set()]
    if stuck:
        log.warning("workers %s are still inside user code; leaving them behind", stuck)

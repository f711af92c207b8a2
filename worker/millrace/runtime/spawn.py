"""Supervising the local processes of :func:`millrace.execution.spawn_cluster`: each binds a
port before it learns the others', so the addresses are handed out only once all are bound;
a failing process stops the others, and its exception is raised in the caller; the processes
stop by themselves once that caller is gone."""

from __future__ import annotations

import importlib
import multiprocessing
import queue
import secrets
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import cloudpickle

from ..common import clock as clocks
from ..common.clock import SYSTEM_CLOCK, Clock
from ..common.errors import ClusterError
from ..transport.listener import Listener
from ..transport.security import Security
from . import cluster, telemetry
from .errors import RemoteTraceback
from .metrics_server import serving
from .payload import dumps

if TYPE_CHECKING:
    from ..common.epoch_config import EpochConfig
    from ..dataflow import Dataflow
    from ..recovery import RecoveryConfig


def run(
    flow: Dataflow,
    epoch_config: EpochConfig | None,
    recovery_config: RecoveryConfig | None,
    *,
    ctx: Any,
    proc_count: int,
    worker_count_per_proc: int,
    connect_timeout: float,
    cluster_id: str,
    trace_parent: dict[str, str] | None = None,
    encrypt: bool = False,
    metrics_port: int | None = None,
) -> None:
    """Run ``flow`` on ``proc_count`` processes of ``ctx`` (a :mod:`multiprocessing` context,
    or :data:`millrace.testing.doctest_ctx`) and return when all have finished; raise the
    failure of any. The arguments are checked already. ``trace_parent``: the trace context
    of the caller's run span (:func:`.telemetry.carrier`), which the processes' spans join.
    ``metrics_port``: process ``i`` serves its metrics on ``metrics_port + i``."""
    shares_memory = getattr(ctx, "shares_memory", False)
    # A real process sets up the tracing installed here again (thread "processes" share it).
    installed = telemetry.current()
    handoff = None if installed is None or shares_memory else installed.handoff
    # The clock installed in the caller travels with the flow, in the same pickle: functions
    # of the flow that hold a ManualClock then hold the very copy their process runs on.
    payload: Any = (flow, epoch_config, recovery_config, clocks.current(), handoff, trace_parent)
    if not shares_memory:
        # Real processes get the flow as cloudpickle bytes, so lambdas and closures travel;
        # thread "processes" share it as it is, plain output lists included. Code keeps its
        # file names (see .payload), so a traceback from a child says where in your script.
        payload = dumps(payload)
    secret = secrets.token_bytes(32)
    # Thread "processes" are this process, and have its keys already.
    authkeys = {} if shares_memory else _authkeys()
    errors, ports = ctx.Queue(), ctx.Queue()
    inboxes = [ctx.Queue() for _ in range(proc_count)]
    procs = [
        ctx.Process(
            target=_spawned_main,
            args=(
                payload,
                proc_id,
                proc_count,
                worker_count_per_proc,
                secret,
                errors,
                ports,
                inboxes[proc_id],
                connect_timeout,
                cluster_id,
                authkeys,
                encrypt,
                None if metrics_port is None else metrics_port + proc_id,
            ),
            name=f"millrace-proc-{proc_id}",
            daemon=False,
        )
        for proc_id in range(proc_count)
    ]
    for proc in procs:
        proc.start()
    try:
        if proc_count > 1:
            _hand_out_addresses(procs, ports, inboxes)
        _wait_all(procs)
    except BaseException:
        _stop_all(procs)
        raise
    _raise_failure(procs, _reports(procs, errors))


def _spawned_main(
    payload: bytes | tuple[Dataflow, Any, Any, Clock, Any, dict[str, str] | None],
    proc_id: int,
    proc_count: int,
    worker_count_per_proc: int,
    secret: bytes,
    errors: Any,
    ports: Any,
    inbox: Any,
    connect_timeout: float,
    cluster_id: str,
    authkeys: dict[str, bytes],
    encrypt: bool = False,
    metrics_port: int | None = None,
) -> None:
    """The body of each process :func:`~millrace.execution.spawn_cluster` starts: take the
    caller's authentication keys (:func:`_authkeys`), bind a port, report it on ``ports``, take
    the cluster's addresses from ``inbox`` (``None``: the start was called off), and run. A
    failure goes to ``errors`` with its traceback as text; the spans of a traced run are
    exported before the process reports (``flush``). With ``metrics_port``, the process serves
    its metrics there (bound first: a port in use fails the start)."""
    flush: Callable[[], object] | None = None
    try:
        _adopt_authkeys(authkeys)  # before the flow is loaded: its Manager proxies read them
        loaded = cloudpickle.loads(payload) if isinstance(payload, bytes) else payload
        flow, epoch_config, recovery_config, clock, handoff, trace_parent = cast(
            "tuple[Dataflow, EpochConfig | None, RecoveryConfig | None, Clock, Any, dict[str, str] | None]", loaded
        )
        flush = telemetry.continue_in_child(handoff)
        with serving(metrics_port) as metrics:
            addresses: list[str] = []
            listener = None
            parent_gone = _parent_gone(proc_id)
            if proc_count > 1:
                listener = Listener.any_port(proc_id, Security(secret, encrypt))
                ports.put((proc_id, listener.port))
                addresses = _addresses_from(inbox, listener, parent_gone)
            cluster.run_process(
                flow,
                addresses,
                proc_id,
                workers_per_proc=worker_count_per_proc,
                epoch_config=epoch_config,
                recovery_config=recovery_config,
                secret=secret,
                connect_timeout=connect_timeout,
                cluster_id=cluster_id,
                listener=listener,
                abandoned=parent_gone,
                clock=clock,
                trace_parent=trace_parent,
                encrypt=encrypt,
                metrics=metrics,
            )
    except BaseException as exc:
        if flush is not None:
            flush()
        # A traceback does not pickle: it travels as text, with the user's files and lines.
        text = "".join(traceback.format_exception(exc))
        try:
            blob = cloudpickle.dumps((exc, text))
        except Exception:
            blob = cloudpickle.dumps((ClusterError(f"process {proc_id}: {type(exc).__name__}: {exc}"), text))
        errors.put((proc_id, blob))
        raise SystemExit(1) from None
    if flush is not None:
        flush()


#: The packages whose Manager proxies a flow may hold: the standard library's, and
#: ``multiprocess`` (dill's fork of it, which Bytewax 0.15 programs use).
_PROXY_PACKAGES = ("multiprocessing", "multiprocess")


def _authkeys() -> dict[str, bytes]:
    """This process's authentication key in each of :data:`_PROXY_PACKAGES` it has imported.

    A Manager proxy that is unpickled connects to its manager with the key of the process it
    is in (``current_process().authkey``), and the manager, started here, knows this process's
    key. A spawned child gets a key of its own from every package but the one whose context
    started it (each package keeps its own ``current_process()``): so a ``multiprocess``
    proxy in a child of ``multiprocessing`` (or the other way round) is refused with
    "digest sent was rejected". The children take these keys over, whatever the context.
    A package not imported here has made no proxy, and needs no key."""
    keys: dict[str, bytes] = {}
    for name in _PROXY_PACKAGES:
        module = sys.modules.get(name)
        if module is not None:
            keys[name] = bytes(module.current_process().authkey)
    return keys


def _adopt_authkeys(keys: dict[str, bytes]) -> None:
    """In a spawned process: authenticate as the caller of spawn_cluster does (see
    :func:`_authkeys`)."""
    for name, key in keys.items():
        importlib.import_module(name).current_process().authkey = key


def _parent_gone(proc_id: int) -> Callable[[], str | None] | None:
    """For a spawned process: the reason to stop once the process that ran spawn_cluster is
    gone (killed, say), as nobody is left to take the results or a failure. ``None`` for a
    process that is a thread of the caller (:data:`~millrace.testing.doctest_ctx`)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return None

    def check() -> str | None:
        if parent.is_alive():
            return None
        return (
            f"process {proc_id}: the process that ran spawn_cluster (pid {parent.pid}) exited, "
            "so nothing waits for this cluster any more"
        )

    return check


def _addresses_from(inbox: Any, listener: Any, parent_gone: Callable[[], str | None] | None) -> list[str]:
    """The address list :func:`~millrace.execution.spawn_cluster` sends once every process has
    bound its port."""
    while True:
        try:
            addresses = inbox.get(timeout=1.0)
            break
        except queue.Empty:
            if parent_gone is not None and parent_gone():
                addresses = None
                break
    if addresses is None:
        listener.close()
        raise ClusterError("spawn_cluster called off the start: another process failed first")
    return cast("list[str]", addresses)


def _reports(procs: list[Any], errors: Any) -> list[tuple[int, bytes]]:
    """The errors the processes that failed reported. Only those report (and then exit with
    code 1), so a clean run returns at once; one killed by a signal never does, so waiting for
    it is bounded."""
    failed = sum(1 for proc in procs if proc.exitcode != 0)
    failures: list[tuple[int, bytes]] = []
    while len(failures) < failed:
        try:
            failures.append(errors.get(timeout=0.2 if failures else 1.0))
        except queue.Empty:
            break
    return failures


def _hand_out_addresses(procs: list[Any], ports: Any, inboxes: list[Any]) -> None:
    """Once every process has bound a port, send each the whole address list; if one fails
    before that, call the start off (each inbox gets ``None``)."""
    bound: dict[int, int] = {}
    while len(bound) < len(procs):
        try:
            proc_id, port = ports.get(timeout=0.1)
            bound[proc_id] = port
        except queue.Empty:
            if any(proc.exitcode is not None for proc in procs):
                for inbox in inboxes:
                    inbox.put(None)
                return
    addresses = [f"127.0.0.1:{bound[proc_id]}" for proc_id in range(len(procs))]
    for inbox in inboxes:
        inbox.put(addresses)


def _wait_all(procs: list[Any]) -> None:
    """Wait for every process; when one fails, give the others a moment to stop on their own
    (they are told through the cluster), then stop them."""
    # Real time, whatever clock the flow reads: this supervises real processes.
    monotonic = SYSTEM_CLOCK.monotonic
    failed_at: float | None = None
    while any(proc.is_alive() for proc in procs):
        for proc in procs:
            proc.join(0.05)
        if failed_at is None and any(proc.exitcode not in (None, 0) for proc in procs):
            failed_at = monotonic()
        if failed_at is not None and monotonic() - failed_at > 15.0:
            _stop_all(procs)
            return


def _stop_all(procs: list[Any]) -> None:
    for proc in procs:
        if proc.is_alive() and hasattr(proc, "terminate"):
            proc.terminate()
    for proc in procs:
        proc.join(5.0)
        if proc.is_alive() and hasattr(proc, "kill"):
            proc.kill()
            proc.join(5.0)


def _raise_failure(procs: list[Any], failures: list[tuple[int, bytes]]) -> None:
    excs: list[tuple[BaseException, str]] = [cloudpickle.loads(blob) for _, blob in sorted(failures)]
    # The process where the error happened raises it with its own type; the others raise
    # ClusterError about it. Prefer the original. Its traceback in the child, which did not
    # travel, is its cause, as multiprocessing.Pool does it: the user's file and line show.
    for exc, text in excs:
        if not isinstance(exc, ClusterError):
            raise exc from RemoteTraceback(text)
    if excs:
        exc, text = excs[0]
        raise exc from RemoteTraceback(text)
    bad = [(i, proc.exitcode) for i, proc in enumerate(procs) if proc.exitcode not in (0, None)]
    if bad:
        raise ClusterError("spawn_cluster: " + ", ".join(f"process {i} exited with code {code}" for i, code in bad))

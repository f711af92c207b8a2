"""Running a flow: on one worker (:func:`run_main`), on local processes (:func:`spawn_cluster`),
or as one process of a cluster whose members are given by address (:func:`cluster_main`).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import secrets
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import cloudpickle

from .common.epoch_config import EpochConfig, PeriodicEpochConfig, TestingEpochConfig
from .dataflow import Dataflow
from .recovery import RecoveryConfig
from .runtime import cluster, engine
from .runtime.errors import ClusterError

__all__ = [
    "EpochConfig",
    "PeriodicEpochConfig",
    "TestingEpochConfig",
    "run_main",
    "cluster_main",
    "spawn_cluster",
]


def run_main(
    flow: Dataflow,
    *,
    epoch_config: EpochConfig | None = None,
    recovery_config: RecoveryConfig | None = None,
) -> None:
    """Run ``flow`` on one worker in the calling thread; return when it has finished.

    An exception raised by your code leaves ``run_main`` with its own type, with a note that
    names the step.

    >>> from millrace.dataflow import Dataflow
    >>> from millrace.inputs import TestingInputConfig
    >>> from millrace.outputs import StdOutputConfig
    >>> flow = Dataflow()
    >>> flow.input("inp", TestingInputConfig(range(3)))
    >>> flow.map(lambda x: x + 1)
    >>> flow.capture(StdOutputConfig())
    >>> run_main(flow)
    1
    2
    3
    """
    engine.run_single(flow, epoch_config=epoch_config, recovery_config=recovery_config)


#: Environment variables read by :func:`cluster_main` when no secret is passed.
SECRET_ENV = "MILLRACE_CLUSTER_SECRET"
SECRET_FILE_ENV = "MILLRACE_CLUSTER_SECRET_FILE"
CONNECT_TIMEOUT_ENV = "MILLRACE_CONNECT_TIMEOUT"
CLUSTER_ID_ENV = "MILLRACE_CLUSTER_ID"
DEFAULT_CONNECT_TIMEOUT = 60.0


def _secret_bytes(secret: bytes | str | None) -> bytes | None:
    if secret is None:
        if os.environ.get(SECRET_ENV):
            secret = os.environ[SECRET_ENV]
        elif os.environ.get(SECRET_FILE_ENV):
            path = Path(os.environ[SECRET_FILE_ENV])
            try:
                secret = path.read_bytes().strip()
            except OSError as exc:
                raise ValueError(f"cannot read the cluster secret file {path}: {exc}") from None
        else:
            return None
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not isinstance(secret, bytes) or not secret:
        raise TypeError(f"the cluster secret must be non-empty bytes or str, got {type(secret).__name__}")
    return secret


def _seconds(value: timedelta | float | None) -> float:
    if value is None:
        value = float(os.environ.get(CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT))
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"connect_timeout must be a positive duration, got {value!r}")
    return float(value)


def cluster_main(
    flow: Dataflow,
    addresses: Sequence[str] | None,
    proc_id: int,
    *,
    epoch_config: EpochConfig | None = None,
    recovery_config: RecoveryConfig | None = None,
    worker_count_per_proc: int = 1,
    secret: bytes | str | None = None,
    connect_timeout: timedelta | float | None = None,
) -> None:
    """Run process ``proc_id`` of a cluster whose processes listen at ``addresses``.

    Every process gets the same address list (itself included): it listens on its own entry and
    connects to the others, retrying until all are up or ``connect_timeout`` (default 60 s, or
    ``$MILLRACE_CONNECT_TIMEOUT``) has passed. Worker ``proc_id * worker_count_per_proc + t`` is
    thread ``t`` of this process. Empty or ``None`` addresses mean a single process.

    Frames between processes are authenticated with ``secret`` (bytes or str; by default
    ``$MILLRACE_CLUSTER_SECRET`` or the contents of the file named by
    ``$MILLRACE_CLUSTER_SECRET_FILE``). Without one the cluster still runs, with a warning.
    Processes whose ``$MILLRACE_CLUSTER_ID`` differ refuse each other (the operator sets it to
    the pod template's hash, so old and new pods never form one cluster).

    A failure anywhere stops every process: the one where it happened raises the original
    exception, the others a :class:`~millrace.runtime.errors.ClusterError` naming the worker,
    the step and the error.

    >>> from millrace.dataflow import Dataflow
    >>> from millrace.inputs import TestingInputConfig
    >>> from millrace.outputs import StdOutputConfig
    >>> flow = Dataflow()
    >>> flow.input("inp", TestingInputConfig(["x", "y"]))
    >>> flow.capture(StdOutputConfig())
    >>> cluster_main(flow, [], 0, worker_count_per_proc=2)
    x
    y
    """
    address_list = list(addresses or [])
    if type(proc_id) is not int:
        raise TypeError(f"proc_id must be an int, got {proc_id!r}")
    key = _secret_bytes(secret)
    if key is None and len(address_list) > 1:
        warnings.warn(
            "cluster_main runs without a cluster secret, so its traffic is unauthenticated and "
            f"anyone who can reach {address_list[proc_id] if 0 <= proc_id < len(address_list) else 'its port'} "
            f"can inject data; set {SECRET_ENV} or pass secret=",
            RuntimeWarning,
            stacklevel=2,
        )
    cluster.run_process(
        flow,
        address_list,
        proc_id,
        workers_per_proc=worker_count_per_proc,
        epoch_config=epoch_config,
        recovery_config=recovery_config,
        secret=key,
        connect_timeout=_seconds(connect_timeout),
        cluster_id=os.environ.get(CLUSTER_ID_ENV, ""),
    )


def _spawned_main(
    payload: bytes | tuple[Dataflow, Any, Any],
    proc_id: int,
    proc_count: int,
    worker_count_per_proc: int,
    secret: bytes,
    errors: Any,
    ports: Any,
    inbox: Any,
) -> None:
    """The body of each process :func:`spawn_cluster` starts: bind a port, report it on
    ``ports``, take the cluster's addresses from ``inbox`` (``None``: the start was called
    off), and run."""
    from .transport.link import Listener

    try:
        loaded = cloudpickle.loads(payload) if isinstance(payload, bytes) else payload
        flow, epoch_config, recovery_config = cast(
            "tuple[Dataflow, EpochConfig | None, RecoveryConfig | None]", loaded
        )
        addresses: list[str] = []
        listener = None
        parent_gone = _parent_gone(proc_id)
        if proc_count > 1:
            listener = Listener.any_port(proc_id)
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
            connect_timeout=_seconds(None),
            cluster_id=os.environ.get(CLUSTER_ID_ENV, ""),
            listener=listener,
            abandoned=parent_gone,
        )
    except BaseException as exc:
        try:
            blob = cloudpickle.dumps(exc)
        except Exception:
            blob = cloudpickle.dumps(ClusterError(f"process {proc_id}: {type(exc).__name__}: {exc}"))
        errors.put((proc_id, blob))
        raise SystemExit(1) from None


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
    """The address list :func:`spawn_cluster` sends once every process has bound its port."""
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


def spawn_cluster(
    flow: Dataflow,
    *,
    epoch_config: EpochConfig | None = None,
    recovery_config: RecoveryConfig | None = None,
    proc_count: int = 1,
    worker_count_per_proc: int = 1,
    mp_ctx: Any = None,
) -> None:
    """Run ``flow`` on ``proc_count`` local processes of ``worker_count_per_proc`` workers each;
    return when all have finished.

    Each process binds a port the system picks before it learns the others', so clusters run
    side by side and never race another program for a port; a fresh secret authenticates
    the cluster's traffic. The flow travels with cloudpickle, so lambdas and closures work. A
    failing process stops the others, and its exception is raised here.

    ``mp_ctx`` is a :mod:`multiprocessing` context (``spawn`` by default), or
    :data:`millrace.testing.doctest_ctx` to run the processes as threads.

    >>> from millrace.dataflow import Dataflow
    >>> from millrace.inputs import TestingInputConfig
    >>> from millrace.outputs import TestingOutputConfig
    >>> from millrace.testing import doctest_ctx
    >>> out = []
    >>> flow = Dataflow()
    >>> flow.input("inp", TestingInputConfig([("a", 1), ("b", 2), ("a", 3)]))
    >>> flow.reduce("sum", lambda acc, x: acc + x, lambda acc: acc > 3)
    >>> flow.capture(TestingOutputConfig(out))
    >>> spawn_cluster(flow, proc_count=2, mp_ctx=doctest_ctx)
    >>> out
    [('a', 4)]
    """
    if type(proc_count) is not int or proc_count < 1:
        raise ValueError(f"proc_count must be a positive int, got {proc_count!r}")
    if type(worker_count_per_proc) is not int or worker_count_per_proc < 1:
        raise ValueError(
            f"worker_count_per_proc must be a positive int, got {worker_count_per_proc!r}"
        )
    ctx = mp_ctx if mp_ctx is not None else multiprocessing.get_context("spawn")
    # Fail here, not in every child, on a flow or config that cannot run.
    from .runtime.worker import check_flow

    check_flow(flow)
    engine.epoch_policy(epoch_config)
    engine.check_recovery(recovery_config)
    payload: Any = (flow, epoch_config, recovery_config)
    if not getattr(ctx, "shares_memory", False):
        # Real processes get the flow as cloudpickle bytes, so lambdas and closures travel;
        # thread "processes" share it as it is, plain output lists included.
        payload = cloudpickle.dumps(payload)
    secret = secrets.token_bytes(32)
    errors, ports = ctx.Queue(), ctx.Queue()
    inboxes = [ctx.Queue() for _ in range(proc_count)]
    procs = [
        ctx.Process(
            target=_spawned_main,
            args=(payload, proc_id, proc_count, worker_count_per_proc, secret, errors, ports,
                  inboxes[proc_id]),
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
    failed_at: float | None = None
    while any(proc.is_alive() for proc in procs):
        for proc in procs:
            proc.join(0.05)
        if failed_at is None and any(proc.exitcode not in (None, 0) for proc in procs):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > 15.0:
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
    excs = [(proc_id, cloudpickle.loads(blob)) for proc_id, blob in sorted(failures)]
    # The process where the error happened raises it with its own type; the others raise
    # ClusterError about it. Prefer the original.
    for _, exc in excs:
        if not isinstance(exc, ClusterError):
            raise exc
    if excs:
        raise excs[0][1]
    bad = [(i, proc.exitcode) for i, proc in enumerate(procs) if proc.exitcode not in (0, None)]
    if bad:
        raise ClusterError(
            "spawn_cluster: "
            + ", ".join(f"process {i} exited with code {code}" for i, code in bad)
        )

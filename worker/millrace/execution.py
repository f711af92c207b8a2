"""Running a flow: on one worker (:func:`run_main`), on local processes (:func:`spawn_cluster`),
or as one process of a cluster whose members are given by address (:func:`cluster_main`).
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from .common.epoch_config import EpochConfig, PeriodicEpochConfig, TestingEpochConfig
from .common.errors import ClusterError as ClusterError  # importable from here, as it was
from .common.errors import MetricsServerError as MetricsServerError
from .common.settings import read
from .dataflow import Dataflow
from .recovery import RecoveryConfig
from .runtime import cluster, engine, spawn, telemetry
from .runtime.metrics_server import check_port, serving

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
    metrics_port: int | None = None,
) -> None:
    """Run ``flow`` on one worker in the calling thread; return when it has finished.

    An exception raised by your code leaves ``run_main`` with its own type, with a note that
    names the step.

    With ``metrics_port``, Prometheus metrics are served at ``http://HOST:PORT/metrics`` while
    the flow runs (see the README's "Metrics"); a port that is taken raises
    :class:`~millrace.common.errors.MetricsServerError` before anything runs.

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
    if metrics_port is not None:
        check_port(metrics_port)
    engine.run_single(flow, epoch_config=epoch_config, recovery_config=recovery_config, metrics_port=metrics_port)


#: Environment variables read by :func:`cluster_main` (see millrace.common.settings).
SECRET_ENV = "MILLRACE_CLUSTER_SECRET"
SECRET_FILE_ENV = "MILLRACE_CLUSTER_SECRET_FILE"
CONNECT_TIMEOUT_ENV = "MILLRACE_CONNECT_TIMEOUT"
CLUSTER_ID_ENV = "MILLRACE_CLUSTER_ID"
ENCRYPT_ENV = "MILLRACE_CLUSTER_ENCRYPT"


def _secret_bytes(secret: bytes | str | None) -> bytes | None:
    if secret is None:
        secret = read(os.environ, SECRET_ENV)
    if secret is None and (path := read(os.environ, SECRET_FILE_ENV)) is not None:
        try:
            secret = path.read_bytes().strip()
        except OSError as exc:
            raise ValueError(f"cannot read the cluster secret file {path}: {exc}") from None
    if secret is None:
        return None
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not isinstance(secret, bytes) or not secret:
        raise TypeError(f"the cluster secret must be non-empty bytes or str, got {type(secret).__name__}")
    return secret


def _seconds(value: timedelta | float | None) -> float:
    if value is None:
        return float(read(os.environ, CONNECT_TIMEOUT_ENV))
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
    metrics_port: int | None = None,
) -> None:
    """Run process ``proc_id`` of a cluster whose processes listen at ``addresses``.

    Every process gets the same address list (itself included): it listens on its own entry and
    connects to the others, retrying until all are up or ``connect_timeout`` (default 60 s, or
    ``$MILLRACE_CONNECT_TIMEOUT``) has passed. Worker ``proc_id * worker_count_per_proc + t`` is
    thread ``t`` of this process. Empty or ``None`` addresses mean a single process.

    Frames between processes are authenticated with ``secret`` (bytes or str; by default
    ``$MILLRACE_CLUSTER_SECRET`` or the contents of the file named by
    ``$MILLRACE_CLUSTER_SECRET_FILE``); with ``$MILLRACE_CLUSTER_ENCRYPT`` on, the traffic is
    encrypted too (ZeroMQ CURVE, keys derived from the secret). Without a secret the cluster
    still runs, with a warning, and accepts connections only from the hosts of ``addresses``.
    Processes whose ``$MILLRACE_CLUSTER_ID`` differ refuse each other (the operator sets it to
    the pod template's hash, so old and new pods never form one cluster).

    With ``metrics_port``, this process serves Prometheus metrics at
    ``http://HOST:PORT/metrics`` while it runs; a port that is taken raises
    :class:`~millrace.common.errors.MetricsServerError` before the cluster forms.

    A failure anywhere stops every process: the one where it happened raises the original
    exception, the others a :class:`~millrace.common.errors.ClusterError` naming the worker,
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
    if metrics_port is not None:
        check_port(metrics_port)
    key = _secret_bytes(secret)
    encrypt = bool(read(os.environ, ENCRYPT_ENV))
    if encrypt and key is None:
        raise ValueError(f"{ENCRYPT_ENV} is on, but there is no cluster secret to derive the keys from")
    if key is None and len(address_list) > 1:
        hosts = sorted({address.rpartition(":")[0] for address in address_list})
        warnings.warn(
            "cluster_main runs without a cluster secret, so its traffic is unauthenticated: it "
            f"accepts connections only from the hosts of its address list ({', '.join(hosts)}), "
            "but any process on those hosts can inject data and run code in it (data is "
            f"unpickled); set {SECRET_ENV} or pass secret=",
            RuntimeWarning,
            stacklevel=2,
        )
    timeout = _seconds(connect_timeout)
    with serving(metrics_port) as metrics:
        cluster.run_process(
            flow,
            address_list,
            proc_id,
            workers_per_proc=worker_count_per_proc,
            epoch_config=epoch_config,
            recovery_config=recovery_config,
            secret=key,
            connect_timeout=timeout,
            cluster_id=read(os.environ, CLUSTER_ID_ENV),
            encrypt=encrypt,
            metrics=metrics,
        )


def spawn_cluster(
    flow: Dataflow,
    *,
    epoch_config: EpochConfig | None = None,
    recovery_config: RecoveryConfig | None = None,
    proc_count: int = 1,
    worker_count_per_proc: int = 1,
    mp_ctx: Any = None,
    metrics_port: int | None = None,
) -> None:
    """Run ``flow`` on ``proc_count`` local processes of ``worker_count_per_proc`` workers each;
    return when all have finished.

    Each process binds a port the system picks before it learns the others', so clusters run
    side by side and never race another program for a port; a fresh secret authenticates
    the cluster's traffic. The flow travels with cloudpickle, so lambdas and closures work. A
    failing process stops the others, and its exception is raised here, caused by a
    :class:`~millrace.runtime.errors.RemoteTraceback` that shows where in your code it happened.

    ``mp_ctx`` is a :mod:`multiprocessing` context (``spawn`` by default), a ``multiprocess``
    one (Bytewax 0.15's default), or :data:`millrace.testing.doctest_ctx` to run the processes as
    threads. Whichever starts them, the processes authenticate as this one does, so the
    ``Manager()`` proxies of either package work in the flow (an output list, say). Spawned
    processes import your script as ``__mp_main__``: guard its entry point with
    ``if __name__ == "__main__":``.

    With ``metrics_port``, process ``i`` serves Prometheus metrics at
    ``http://127.0.0.1:{metrics_port + i}/metrics`` while it runs; a port that is taken fails
    the run with :class:`~millrace.common.errors.MetricsServerError`.

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
        raise ValueError(f"worker_count_per_proc must be a positive int, got {worker_count_per_proc!r}")
    if metrics_port is not None:
        check_port(metrics_port, count=proc_count)
    ctx = mp_ctx if mp_ctx is not None else multiprocessing.get_context("spawn")
    # Fail here, not in every child, on a flow or config that cannot run.
    from .runtime.worker import check_flow

    check_flow(flow)
    engine.epoch_policy(epoch_config)
    engine.check_recovery(recovery_config, flow)
    # The settings from the environment are read here, as cluster_main reads them: the
    # processes inherit this environment, so they would read the same.
    attributes = {"millrace.proc_count": proc_count, "millrace.worker.count": proc_count * worker_count_per_proc}
    with telemetry.run_span("millrace.run", attributes) as parent:
        spawn.run(
            flow,
            epoch_config,
            recovery_config,
            ctx=ctx,
            proc_count=proc_count,
            worker_count_per_proc=worker_count_per_proc,
            connect_timeout=_seconds(None),
            cluster_id=read(os.environ, CLUSTER_ID_ENV),
            trace_parent=telemetry.carrier(parent),
            encrypt=bool(read(os.environ, ENCRYPT_ENV)),
            metrics_port=metrics_port,
        )

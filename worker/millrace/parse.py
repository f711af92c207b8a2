"""Arguments for the entry points from a command line or the environment.

:func:`cluster_args` gives :func:`~millrace.execution.spawn_cluster` keyword arguments from
``-w``/``-n``; :func:`proc_args` and :func:`proc_env` give
:func:`~millrace.execution.cluster_main` keyword arguments from ``-w``/``-p``/``-a`` or from
environment variables (``MILLRACE_*``, with the reference engine's ``BYTEWAX_*`` names
accepted as well).
"""

from __future__ import annotations

import os
import re
from argparse import ArgumentParser
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["cluster_args", "proc_args", "proc_env"]


def cluster_args(args: Iterable[str] | None = None) -> dict[str, Any]:
    """Keyword arguments for ``spawn_cluster`` from ``-w`` (workers per process, default 1)
    and ``-n`` (processes, default 1).

    >>> cluster_args(["-w", "2", "-n", "3"])
    {'proc_count': 3, 'worker_count_per_proc': 2}
    """
    parser = ArgumentParser(description="Run a dataflow on local processes.")
    parser.add_argument(
        "-w", dest="worker_count_per_proc", type=int, default=1, help="worker threads per process (default 1)"
    )
    parser.add_argument("-n", dest="proc_count", type=int, default=1, help="processes to start (default 1)")
    parsed = parser.parse_args(None if args is None else list(args))
    return {"proc_count": parsed.proc_count, "worker_count_per_proc": parsed.worker_count_per_proc}


def proc_args(args: Iterable[str] | None = None) -> dict[str, Any]:
    """Keyword arguments for ``cluster_main`` from ``-w`` (workers per process), ``-p``
    (this process's id) and ``-a host:port`` once per process of the cluster, in order.

    >>> proc_args(["-w", "2", "-p", "1", "-a", "a:2101", "-a", "b:2101"])
    {'proc_id': 1, 'addresses': ['a:2101', 'b:2101'], 'worker_count_per_proc': 2}
    """
    parser = ArgumentParser(description="Run one process of a dataflow cluster.")
    parser.add_argument(
        "-w", dest="worker_count_per_proc", type=int, default=1, help="worker threads per process (default 1)"
    )
    parser.add_argument("-p", dest="proc_id", type=int, required=True, help="the id of this process, from 0")
    parser.add_argument(
        "-a",
        dest="addresses",
        action="append",
        default=[],
        help="host:port of every process of the cluster, this one included",
    )
    parsed = parser.parse_args(None if args is None else list(args))
    return {
        "proc_id": parsed.proc_id,
        "addresses": parsed.addresses,
        "worker_count_per_proc": parsed.worker_count_per_proc,
    }


def _lookup(env: Mapping[str, str], name: str) -> str | None:
    for prefix in ("MILLRACE_", "BYTEWAX_"):
        value = env.get(prefix + name)
        if value:
            return value
    return None


def _int(env: Mapping[str, str], name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"MILLRACE_{name} must be an integer, got {text!r}") from None


def proc_env(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments for ``cluster_main`` from the environment:

    - addresses: ``MILLRACE_ADDRESSES`` (``;``-separated ``host:port``) or the lines of the file
      named by ``MILLRACE_HOSTFILE_PATH``;
    - process id: ``MILLRACE_PROCESS_ID``, or the ordinal at the end of ``MILLRACE_POD_NAME``
      (``MILLRACE_STATEFULSET_NAME-<i>``);
    - ``MILLRACE_WORKERS_PER_PROCESS`` (default 1).

    >>> proc_env({"MILLRACE_ADDRESSES": "df-0.df:2101;df-1.df:2101",
    ...           "MILLRACE_POD_NAME": "df-1", "MILLRACE_STATEFULSET_NAME": "df",
    ...           "MILLRACE_WORKERS_PER_PROCESS": "2"})
    {'proc_id': 1, 'addresses': ['df-0.df:2101', 'df-1.df:2101'], 'worker_count_per_proc': 2}
    """
    env = os.environ if env is None else env
    if (joined := _lookup(env, "ADDRESSES")) is not None:
        addresses = [a.strip() for a in joined.split(";") if a.strip()]
    elif (hostfile := _lookup(env, "HOSTFILE_PATH")) is not None:
        try:
            lines = Path(hostfile).read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"cannot read the host file {hostfile}: {exc}") from None
        addresses = [line.strip() for line in lines if line.strip()]
    else:
        raise ValueError("set MILLRACE_ADDRESSES or MILLRACE_HOSTFILE_PATH")
    if (proc_id_text := _lookup(env, "PROCESS_ID")) is not None:
        proc_id = _int(env, "PROCESS_ID", proc_id_text)
    else:
        pod = _lookup(env, "POD_NAME")
        if pod is None:
            raise ValueError("set MILLRACE_PROCESS_ID or MILLRACE_POD_NAME")
        statefulset = _lookup(env, "STATEFULSET_NAME")
        pattern = rf"{re.escape(statefulset)}-(\d+)" if statefulset else r".*-(\d+)"
        match = re.fullmatch(pattern, pod)
        if match is None:
            raise ValueError(f"cannot read a process id from the pod name {pod!r}")
        proc_id = int(match.group(1))
    workers = _lookup(env, "WORKERS_PER_PROCESS")
    return {
        "proc_id": proc_id,
        "addresses": addresses,
        "worker_count_per_proc": 1 if workers is None else _int(env, "WORKERS_PER_PROCESS", workers),
    }

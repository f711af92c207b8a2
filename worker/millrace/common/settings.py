"""Every ``MILLRACE_`` environment variable, in one table, read in one way.

The entry points (:func:`millrace.execution.cluster_main` and ``spawn_cluster``, the helpers
of :mod:`millrace.parse`, the pod entrypoint :mod:`millrace.pod`) read their environment only
through :func:`read`, so each variable has one type, one default and one error message wherever
it is read. ``docs/environment.md`` lists the same table; a test keeps the two equal.

Plain functions over a ``Mapping`` rather than a settings library: every cluster process reads
these at start, and a library such as pydantic-settings costs more to import (about 150 ms)
than the whole engine.

>>> read({"MILLRACE_PROCESSES": "3"}, "MILLRACE_PROCESSES")
3
>>> read({}, "MILLRACE_CONNECT_TIMEOUT")
60.0
>>> read({"MILLRACE_PORT": "http"}, "MILLRACE_PORT")
Traceback (most recent call last):
...
millrace.common.settings.SettingsError: MILLRACE_PORT must be an integer, got 'http'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["VARIABLES", "SettingsError", "Variable", "markdown_table", "ordinal", "read"]


class SettingsError(ValueError):
    """An environment variable is missing or malformed; the message names it."""


def _integer(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {text!r}") from None


def _positive_integer(name: str, text: str) -> int:
    value = _integer(name, text)
    if value < 1:
        raise SettingsError(f"{name} must be at least 1, got {value}")
    return value


def _positive_number(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {text!r}") from None
    if not value > 0:
        raise SettingsError(f"{name} must be positive, got {text!r}")
    return value


def _credit_window(name: str, text: str) -> int:
    value = _integer(name, text)
    if value < 2:
        raise SettingsError(f"{name} must be at least 2 (credit is paid back half a window at a time), got {value}")
    return value


def _port(name: str, text: str) -> int:
    value = _integer(name, text)
    if not 1 <= value <= 65535:
        raise SettingsError(f"{name} must be a port number (1-65535), got {value}")
    return value


def _boolean(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false (1/0, yes/no, on/off), got {text!r}")


def _text(name: str, text: str) -> str:
    return text


def _path(name: str, text: str) -> Path:
    return Path(text)


@dataclass(frozen=True)
class Variable:
    """One environment variable: how its text becomes a value, its default (``None``: unset
    means absent), and who reads it."""

    name: str
    parse: Callable[[str, str], Any]
    default: Any
    read_by: str
    meaning: str
    #: Also accepted under this name (the reference engine's ``BYTEWAX_`` variables).
    alias: str | None = None


_CLUSTER, _POD, _PARSE = "cluster_main, spawn_cluster", "millrace-worker (pods)", "millrace.parse.proc_env"

VARIABLES: dict[str, Variable] = {
    v.name: v
    for v in (
        Variable(
            "MILLRACE_CLUSTER_SECRET",
            _text,
            None,
            _CLUSTER,
            "the cluster secret that authenticates every frame (HMAC-SHA256)",
        ),
        Variable(
            "MILLRACE_CLUSTER_SECRET_FILE",
            _path,
            None,
            f"{_CLUSTER}, {_POD}",
            "a file holding the cluster secret (the pods' mounted Secret)",
        ),
        Variable(
            "MILLRACE_CLUSTER_ENCRYPT",
            _boolean,
            None,
            f"{_CLUSTER}, {_POD}",
            "encrypt traffic with CURVE, keys derived from the secret (unset: on in pods, off elsewhere)",
        ),
        Variable(
            "MILLRACE_CONNECT_TIMEOUT",
            _positive_number,
            60.0,
            f"{_CLUSTER}, {_POD}",
            "seconds to wait for every peer's HELLO (a pod then tries again), or for a peer that reads nothing",
        ),
        Variable(
            "MILLRACE_CREDIT_WINDOW",
            _credit_window,
            64,
            f"{_CLUSTER}, {_POD}",
            "batches a worker sends a peer per stateful step that the peer has not handled yet (then it waits)",
        ),
        Variable(
            "MILLRACE_CLUSTER_ID",
            _text,
            "",
            f"{_CLUSTER}, {_POD}",
            "processes of different ids refuse each other (the operator: N-<template hash>)",
        ),
        Variable(
            "MILLRACE_ADDRESSES",
            _text,
            None,
            _PARSE,
            "`;`-separated host:port of every process",
            alias="BYTEWAX_ADDRESSES",
        ),
        Variable(
            "MILLRACE_HOSTFILE_PATH",
            _path,
            None,
            _PARSE,
            "a file with one host:port per line",
            alias="BYTEWAX_HOSTFILE_PATH",
        ),
        Variable("MILLRACE_PROCESS_ID", _integer, None, _PARSE, "this process's id", alias="BYTEWAX_PROCESS_ID"),
        Variable(
            "MILLRACE_STATEFULSET_NAME",
            _text,
            None,
            _PARSE,
            "the pod name's prefix before -<ordinal>",
            alias="BYTEWAX_STATEFULSET_NAME",
        ),
        Variable("MILLRACE_POD_INDEX", _integer, None, _POD, "this pod's process id"),
        Variable(
            "MILLRACE_POD_NAME",
            _text,
            None,
            f"{_POD}, {_PARSE}",
            "fallback for the process id: the ordinal at the end of the name",
            alias="BYTEWAX_POD_NAME",
        ),
        Variable("MILLRACE_NAMESPACE", _text, None, _POD, "namespace of the peers' DNS names"),
        Variable("MILLRACE_SERVICE", _text, None, _POD, "the headless Service: the peers' subdomain"),
        Variable("MILLRACE_CLUSTER_DOMAIN", _text, "cluster.local", _POD, "the cluster's DNS domain"),
        Variable("MILLRACE_PROCESSES", _positive_integer, None, _POD, "processes in the cluster"),
        Variable("MILLRACE_PORT", _integer, 2101, _POD, "the port every process listens on"),
        Variable(
            "MILLRACE_WORKERS_PER_PROCESS",
            _positive_integer,
            1,
            f"{_POD}, {_PARSE}",
            "worker threads per process",
            alias="BYTEWAX_WORKERS_PER_PROCESS",
        ),
        Variable("MILLRACE_FLOW", _text, None, _POD, "module:attribute of the flow"),
        Variable("MILLRACE_FLOW_FILE", _path, None, _POD, "a Python file defining `flow`"),
        Variable("MILLRACE_EPOCH_SECONDS", _positive_number, 10.0, _POD, "epoch length in seconds"),
        Variable("MILLRACE_RECOVERY_DIR", _path, None, _POD, "recovery stores' directory (recovery on)"),
        Variable("MILLRACE_STATE_DIR", _path, None, _POD, "the completion marker and the readiness file (an emptyDir)"),
        Variable(
            "MILLRACE_HEALTH_PORT",
            _integer,
            None,
            _POD,
            "where GET /ready answers the readiness probe (200 only while in a formed cluster)",
        ),
        Variable(
            "MILLRACE_METRICS_PORT",
            _port,
            None,
            f"{_POD}, millrace run",
            "serve Prometheus metrics at :PORT/metrics (unset: off; the operator sets 9102; "
            "`millrace run -p N` uses PORT..PORT+N-1)",
        ),
        Variable(
            "MILLRACE_DNS_TIMEOUT",
            _positive_number,
            300.0,
            _POD,
            "seconds between reports of peer names that do not resolve yet",
        ),
        Variable(
            "MILLRACE_TERMINATION_LOG",
            _path,
            Path("/dev/termination-log"),
            _POD,
            "where the outcome is written for the operator",
        ),
        # Read by the operator itself (which imports nothing of millrace): listed here so that
        # the one table is complete.
        Variable(
            "MILLRACE_WORKER_IMAGE",
            _text,
            None,
            "millrace-operator",
            "image of Dataflows that name none (the chart sets it)",
        ),
    )
}


def read(env: Mapping[str, str], name: str, *, required: bool = False) -> Any:
    """The value of variable ``name`` in ``env`` (empty counts as unset, then its alias), its
    default when unset, or :class:`SettingsError` naming it when it is malformed, or unset
    and ``required``."""
    variable = VARIABLES[name]
    for source in (name, variable.alias):
        if source and (text := env.get(source, "")):
            return variable.parse(name, text)
    if required and variable.default is None:
        raise SettingsError(f"{name} is not set")
    return variable.default


def ordinal(name: str, prefix: str | None = None) -> int | None:
    """The ordinal at the end of a pod name or hostname, ``<prefix>-<i>`` when ``prefix`` is
    given (the first label of a DNS name counts).

    >>> ordinal("wordcount-12"), ordinal("wordcount-2.wordcount.ns.svc.cluster.local"), ordinal("x")
    (12, 2, None)
    >>> ordinal("wc-3", "wc"), ordinal("other-3", "wc")
    (3, None)
    """
    pattern = rf"{re.escape(prefix)}-(\d+)" if prefix else r".*-(\d+)"
    match = re.fullmatch(pattern, name.split(".", 1)[0])
    return int(match.group(1)) if match else None


def markdown_table() -> str:
    """The table of :data:`VARIABLES` as ``docs/environment.md`` shows it."""
    rows = ["| variable | default | read by | meaning |", "|---|---|---|---|"]
    for v in VARIABLES.values():
        default = "—" if v.default is None else f"`{v.default}`" if v.default != "" else '`""`'
        name = f"`{v.name}`" + (f" (or `{v.alias}`)" if v.alias else "")
        rows.append(f"| {name} | {default} | {v.read_by} | {v.meaning} |")
    return "\n".join(rows) + "\n"

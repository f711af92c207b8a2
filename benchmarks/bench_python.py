"""The ceiling: a hand-written Python loop calling the same user functions, no engine at all.

Any engine that calls the user's functions once per item, as both millrace and Bytewax do,
runs at most this fast; ``vs_bytewax.py`` prints it beside the engines so that a target above
it reads as what it is. One process only (``stateless`` and ``wordcount``).
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable
from typing import Any

import workloads_data as wd

NAME = "python"


def version() -> str:
    return platform.python_version()


def stateless(source: wd.Source, sink: wd.Sink) -> Callable[[], None]:
    def run() -> None:
        one = sink(0).one
        for x in source(0, 1):
            y = wd.inc(x)
            if wd.is_even(y):
                one(y)

    return run


def wordcount(source: wd.Source, sink: wd.Sink) -> Callable[[], None]:
    def run() -> None:
        one = sink(0).one
        counts: dict[str, int] = {}
        for word in source(0, 1):
            key, value = wd.to_pair(word)
            counts[key] = wd.add(counts[key], value) if key in counts else value
        for pair in counts.items():
            one(pair)

    return run


FLOWS: dict[str, Callable[[wd.Source, wd.Sink], Callable[[], None]]] = {
    "stateless": stateless,
    "wordcount": wordcount,
}


def build(flow: str, source: wd.Source, sink: wd.Sink) -> Callable[[], None]:
    return FLOWS[flow](source, sink)


def run(flow: Callable[[], None], *, epoch_s: float | None, recovery_dir: str | None) -> None:
    flow()


def run_cluster(flow: str, source: wd.Source, sink: wd.Sink, procs: int) -> Any:
    raise NotImplementedError("the plain loop is one process")


if __name__ == "__main__":
    wd.bench_main(sys.modules[__name__])  # type: ignore[arg-type]

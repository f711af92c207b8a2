"""The ceiling: a hand-written Python loop calling the same user functions, no engine at all.

Any engine that calls the user's functions once per item, as both millrace and Bytewax do,
runs at most this fast; ``vs_bytewax.py`` prints it beside the engines so that a target above
it reads as what it is. One process only (``stateless``, ``wordcount`` and ``windowed``).
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable
from itertools import count, islice
from typing import Any

import workloads_data as wd

NAME = "python"


def version() -> str:
    return platform.python_version()


def stateless(source: wd.Source, sink: wd.Sink) -> Callable[[], None]:
    if source.variant == "pairs":
        return stateless_pairs(source, sink)
    if source.variant == "checked":
        return stateless_checked(source, sink)
    if source.variant == "batch":
        return stateless_batches(source, sink)
    if source.variant == "batch-checked":
        return stateless_batches_checked(source, sink)

    def run() -> None:
        one = sink(0).one
        for x in source(0, 1):
            y = wd.inc(x)
            if wd.is_even(y):
                one(y)

    return run


def stateless_pairs(source: wd.Source, sink: wd.Sink) -> Callable[[], None]:
    """The same, consuming the ``(state, item)`` pairs that millrace's input builder
    (``bench_millrace._Input``) yields: the most an engine reading that API can reach."""

    def run() -> None:
        one = sink(0).one
        for _state, x in zip(count(1), source(0, 1)):
            y = wd.inc(x)
            if wd.is_even(y):
                one(y)

    return run


def stateless_batches(source: wd.Source, sink: wd.Sink) -> Callable[[], None]:
    """The batched engines' ceiling: lists of 1,000 items read as millrace's batched builder
    and Bytewax's batch source read them, the same two functions called per item, what
    passes written a list at a time, as their batched sinks are."""

    def run() -> None:
        write = sink(0).batch
        inc, is_even = wd.inc, wd.is_even
        data = source(0, 1)
        while batch := list(islice(data, wd.BATCH)):
            out = []
            for x in batch:
                y = inc(x)
                if is_even(y):
                    out.append(y)
            write(out)

    return run


def stateless_batches_checked(source: wd.Source, sink: wd.Sink) -> Callable[[], None]:
    """The batched loop with what an engine owes millrace's batched API on top: it reads the
    ``(state, list)`` pairs the batched builder yields (``workloads_data.batches``), refuses a
    yield that is not such a pair, and a filter verdict that is not a bool. A hand-written
    program doing the batched engine's work."""

    def run() -> None:
        write = sink(0).batch
        inc, is_even = wd.inc, wd.is_even
        for pair in wd.batches(source(0, 1)):
            if type(pair) is not tuple or len(pair) != 2 or type(pair[1]) is not list:
                raise TypeError(f"not a (state, list) tuple: {pair!r}")
            _state, batch = pair
            out = []
            for x in batch:
                y = inc(x)
                keep = is_even(y)
                if keep is not True:
                    if keep is False:
                        continue
                    raise TypeError(f"filter must return a bool, got {keep!r}")
                out.append(y)
            write(out)

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


def stateless_checked(source: wd.Source, sink: wd.Sink) -> Callable[[], None]:
    """The pairs again, with what an engine owes the 0.15 API on top: it stops every 1,024
    items (to look at the clock, its messages, Ctrl-C), refuses a first yield of those that is
    not a tuple (the others must unpack into two), and a filter verdict that is not a bool. A
    hand-written program doing the engine's work."""

    inc, is_even = wd.inc, wd.is_even

    def carry(pairs: Any, one: Callable[[Any], None]) -> None:
        for _state, x in pairs:
            y = inc(x)
            keep = is_even(y)
            if keep is not True:
                if keep is False:
                    continue
                raise TypeError(f"filter must return a bool, got {keep!r}")
            one(y)

    def run() -> None:
        one = sink(0).one
        pairs = zip(count(1), source(0, 1))
        ahead: Any = None
        while True:
            size = 1024
            if ahead is not None:
                carry((ahead,), one)
                ahead, size = None, 1023  # zip reuses its tuple when nobody holds the last one
            carry(islice(pairs, size), one)
            ahead = next(pairs, None)  # one ahead: is the input over?
            if ahead is None:
                return
            if type(ahead) is not tuple or len(ahead) != 2:
                raise TypeError(f"not a (state, item) tuple: {ahead!r}")

    return run


def windowed(source: wd.Source, sink: wd.Sink) -> Callable[[], None]:
    """1-second tumbling windows of event time counting per key, with the same functions
    (``event_time``, ``zero``, ``count_one``) per event; every window's count written at the
    end (an engine writes each as its window closes, which only costs more)."""

    def run() -> None:
        one = sink(0).one
        start, width = wd.EVENT_START, wd.WINDOW
        event_time, zero, count_one = wd.event_time, wd.zero, wd.count_one
        windows: dict[tuple[str, int], int] = {}
        for key, value in source(0, 1):
            slot = (key, (event_time(value) - start) // width)
            acc = windows.get(slot)
            windows[slot] = count_one(zero() if acc is None else acc, value)
        for (key, _window), tally in windows.items():
            one((key, tally))

    return run


FLOWS: dict[str, Callable[[wd.Source, wd.Sink], Callable[[], None]]] = {
    "stateless": stateless,
    "wordcount": wordcount,
    "windowed": windowed,
}


def build(flow: str, source: wd.Source, sink: wd.Sink) -> Callable[[], None]:
    return FLOWS[flow](source, sink)


def run(flow: Callable[[], None], *, epoch_s: float | None, recovery_dir: str | None) -> None:
    flow()


def run_cluster(flow: str, source: wd.Source, sink: wd.Sink, procs: int) -> Any:
    raise NotImplementedError("the plain loop is one process")


if __name__ == "__main__":
    wd.bench_main(sys.modules[__name__])  # type: ignore[arg-type]

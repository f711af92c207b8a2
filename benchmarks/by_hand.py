"""What two processes can do on this machine with no engine at all.

The multi-process figures of ``ratios.py`` (2 processes against 1; items crossing between
processes) depend on the machine as much as on millrace. This module holds hand-written
programs that do exactly the per-item work of those flows, calling the same user functions,
with nothing but a loop, :mod:`marshal` (what millrace encodes such batches with) and a
ZeroMQ PUSH/PULL pair: one thread per process, no authentication, no flow control. Each is
measured as ``ratios.py`` measures millrace: items over the longest single process's span,
each process timing itself from when both are connected. ``ratios.py`` runs them beside the
engine, so every multi-process figure comes with what the machine gave a simple program doing
the same work in the same run. They are references, not ceilings: millrace's generated loops
and its batching can beat them.

- ``parallel``: two processes that never talk, each running the same CPU-bound loop, against
  one alone: how much a second process adds here at all (2.0 on two idle cores).
- ``wordcount``: ``ratios.py``'s scaling word count (each process makes its own share of the
  words, ``to_pair``, a running count per word, a sink called per item), on 1 process and on
  2 that send each other the words the other one counts (from batches of 1,024 words).
- ``crossing``: ``ratios.py``'s exchange flow: every item goes to the other process, into a
  ``stateful_map`` whose mapper keeps no state, then a sink called per item.

Each figure is the best of :data:`ROUNDS` runs, the sides of a ratio taking turns. Run alone:
``.venv/bin/python benchmarks/by_hand.py`` (median of 3, a few minutes).
"""

from __future__ import annotations

import argparse
import marshal
import multiprocessing as mp
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any
from zlib import crc32

import zmq

from millrace.transport.addresses import free_ports
from workloads_data import to_pair

BATCH = 1024
VOCABULARY = 10_000
_END = b"END"
_READY = b"READY"


# -- the user functions of ratios.py's multi-process flows --------------------------------------


def word_share(worker_index: int, worker_count: int, total: int) -> Iterator[str]:
    """A worker's share of ``total`` words; each worker makes only its own."""
    for i in range(worker_index, total, worker_count):
        yield f"word{(i * 7919) % VOCABULARY}"


def crossing_items(total: int) -> list[tuple[str, int]]:
    """``(str, int)`` items that all cross: ``TestingInputConfig`` gives item i to worker
    i % 2, and its key belongs to the other worker (millrace routes a ``str`` key by the CRC-32
    of its UTF-8 bytes)."""
    keys: tuple[list[str], list[str]] = ([], [])
    for j in range(VOCABULARY):
        key = f"key{j}"
        keys[crc32(key.encode()) & 1].append(key)
    return [(keys[1 - i % 2][(i // 2) % len(keys[1 - i % 2])], i) for i in range(total)]


def zero() -> int:
    return 0


def running_total(total: int, one: int) -> tuple[int, int]:
    return total + one, total + one


def no_state() -> None:
    return None


def pass_on(state: None, value: int) -> tuple[None, int]:
    return None, value


# -- one process's part ---------------------------------------------------------------------------


class _Peer:
    """One process's end of a two-process PUSH/PULL pair."""

    def __init__(self, me: int, ports: list[int]) -> None:
        self.ctx = zmq.Context()
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.bind(f"tcp://127.0.0.1:{ports[me]}")
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.connect(f"tcp://127.0.0.1:{ports[1 - me]}")
        self.other_done = False

    def meet(self) -> None:
        """Return once the other process is connected too, so both clocks start together."""
        self.push.send(_READY)
        if self.pull.recv() != _READY:
            raise RuntimeError("the other process sent data before saying it was ready")

    def send(self, items: list[Any]) -> None:
        self.push.send(marshal.dumps(items))

    def receive(self, apply: Callable[[list[Any]], None], block: bool) -> None:
        """Apply what has arrived (everything, until the other's END, when ``block``)."""
        while not self.other_done:
            try:
                frame = self.pull.recv(0 if block else zmq.NOBLOCK)
            except zmq.Again:
                return
            if frame == _END:
                self.other_done = True
            else:
                apply(marshal.loads(frame))

    def finish(self, apply: Callable[[list[Any]], None]) -> None:
        self.push.send(_END)
        self.receive(apply, block=True)
        self.ctx.destroy(linger=1000)


class _Keyed:
    """A ``stateful_map`` step and the per-item sink after it, written out by hand."""

    def __init__(self, builder: Callable[[], Any], mapper: Callable[[Any, Any], tuple[Any, Any]]) -> None:
        self.builder = builder
        self.mapper = mapper
        self.state: dict[Any, Any] = {}
        self.count = 0

    def sink(self, item: Any) -> None:
        self.count += 1

    def apply(self, pairs: Iterable[tuple[Any, Any]]) -> None:
        state, builder, mapper, sink = self.state, self.builder, self.mapper, self.sink
        for key, value in pairs:
            current = state.get(key)
            if current is None:
                current = builder()
            current, out = mapper(current, value)
            if current is None:
                state.pop(key, None)
            else:
                state[key] = current
            sink((key, out))


def _batches(items: Iterable[Any]) -> Iterator[list[Any]]:
    it = iter(items)
    while batch := list(islice(it, BATCH)):
        yield batch


def _wordcount_part(me: int, procs: int, ports: list[int], total: int) -> tuple[int, float]:
    step = _Keyed(zero, running_total)
    peer = _Peer(me, ports) if procs == 2 else None
    if peer is not None:
        peer.meet()
    # Each word's process, as an engine caches it; one loop per batch takes each word through
    # to_pair and either into the count or into the other process's batch, as millrace's
    # generated loop does.
    owners: dict[str, int] = {}
    state, sink = step.state, step.sink
    start = time.perf_counter()
    for words in _batches(word_share(me, procs, total)):
        if peer is None:
            step.apply(map(to_pair, words))
            continue
        theirs: list[tuple[str, int]] = []
        for word in words:
            pair = to_pair(word)
            key, value = pair
            owner = owners.get(key)
            if owner is None:
                owner = owners[key] = crc32(key.encode()) & 1
            if owner != me:
                theirs.append(pair)
                continue
            current = state.get(key)
            if current is None:
                current = zero()
            current, out = running_total(current, value)
            state[key] = current
            sink((key, out))
        peer.send(theirs)
        peer.receive(step.apply, block=False)
    if peer is not None:
        peer.finish(step.apply)
    return step.count, time.perf_counter() - start


def _crossing_part(me: int, procs: int, ports: list[int], total: int) -> tuple[int, float]:
    items = crossing_items(total)[me::2]
    step = _Keyed(no_state, pass_on)
    peer = _Peer(me, ports)
    peer.meet()
    start = time.perf_counter()
    for batch in _batches(items):
        peer.send(batch)
        peer.receive(step.apply, block=False)
    peer.finish(step.apply)
    return step.count, time.perf_counter() - start


def _spin_part(me: int, procs: int, ports: list[int], total: int) -> tuple[int, float]:
    peer = _Peer(me, ports) if procs == 2 else None
    if peer is not None:
        peer.meet()
    counts: dict[int, int] = {}
    start = time.perf_counter()
    for i in range(total):
        key = i % VOCABULARY
        counts[key] = counts.get(key, 0) + 1
    span = time.perf_counter() - start
    if peer is not None:
        peer.finish(lambda _: None)
    return total, span


_PARTS = {"wordcount": _wordcount_part, "crossing": _crossing_part, "spin": _spin_part}


def _child(part: str, me: int, ports: list[int], total: int, results: Any) -> None:
    results.put(_PARTS[part](me, 2, ports, total))


def _rate(part: str, procs: int, total: int, expected: int) -> float:
    """Items per second of ``part`` on ``procs`` processes: all their items (which must come
    to ``expected``) over the longest single process's span."""
    if procs == 1:
        spans = [_PARTS[part](0, 1, [], total)]
    else:
        spans = _two(part, total)
    done = sum(count for count, _ in spans)
    if done != expected:
        raise RuntimeError(f"{part} on {procs} processes handled {done} items, expected {expected}")
    return done / max(span for _, span in spans)


def _two(part: str, total: int) -> list[tuple[int, float]]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    ports = free_ports(2)
    children = [ctx.Process(target=_child, args=(part, me, ports, total, results)) for me in range(2)]
    for child in children:
        child.start()
    try:
        return [results.get(timeout=300) for _ in children]
    finally:
        for child in children:
            child.join(timeout=60)
            if child.is_alive():
                child.kill()


# -- what ratios.py reports beside its own figures --------------------------------------------------

# This machine's speed drifts by tens of percent from one second to the next, so each figure
# is the best of this many runs, the two sides of a ratio taking turns.
ROUNDS = 3


def best_rates(*rates: Callable[[], float], rounds: int = ROUNDS) -> list[float]:
    """The highest result of each of ``rates`` (items/s), run in turn ``rounds`` times."""
    best = [0.0] * len(rates)
    for _ in range(rounds):
        for index, rate in enumerate(rates):
            best[index] = max(best[index], rate())
    return best


def parallel(total: int = 6_000_000) -> float:
    """Throughput of two independent CPU-bound processes over one: this machine's second core."""
    half = total // 2
    one, two = best_rates(lambda: _rate("spin", 1, half, half), lambda: _rate("spin", 2, half, total))
    return two / one


def wordcount_scaling(total: int) -> dict[str, float]:
    one, two = best_rates(lambda: _rate("wordcount", 1, total, total), lambda: _rate("wordcount", 2, total, total))
    return {"one_process": one, "two_processes": two, "scaling": two / one}


def crossing_rate(total: int) -> float:
    """Items/s of the exchange flow's work, every item crossing (one run)."""
    return _rate("crossing", 2, total, total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    cores = statistics.median(parallel() for _ in range(args.repeat))
    runs = [wordcount_scaling(int(2_000_000 * args.scale)) for _ in range(args.repeat)]
    med = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    moved = statistics.median(
        best_rates(lambda: crossing_rate(int(3_000_000 * args.scale)))[0] for _ in range(args.repeat)
    )
    print(f"hand-written programs, no engine; median of {args.repeat}")
    print(f"  parallel   two independent processes: {cores:.2f}x one")
    print(
        f"  wordcount  1 process {med['one_process']:,.0f}/s, 2 processes {med['two_processes']:,.0f}/s: "
        f"{med['scaling']:.2f}x"
    )
    print(f"  crossing   {moved:,.0f} items/s")


if __name__ == "__main__":
    main()

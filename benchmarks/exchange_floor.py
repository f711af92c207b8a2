"""What two processes can gain on this machine, with no engine at all.

The multi-process targets of ``ratios.py`` (keyed word count on 2 processes >= 1.3x one
process; >= 3,000,000 (str, int) items/s crossing between processes) depend on the machine as
much as on millrace. This script measures the floor any Python engine that moves items between
processes as pickled batches over ZeroMQ stands on: hand-written programs with nothing but a
loop, ``pickle`` and a PUSH/PULL socket pair, run side by side with millrace in the same run.

- ``wordcount``: 2,000,000 words from a 10,000-word vocabulary counted in a dict, by one
  process, and by two processes that each count their own words' half and send the other half
  (batches of 512) to the other process: the best scaling a keyed word count can show here.
- ``crossing``: every item goes to the other process; items/s with nothing done per item, and
  with the work ``stateful_map`` must do per item (a state lookup and store, an output tuple)
  written inline: the ceiling of the ``exchange`` figure of ``ratios.py``.

Run: ``.venv/bin/python benchmarks/exchange_floor.py`` (median of 3, about a minute).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import pickle
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import zmq

from millrace.transport.addresses import free_ports

BATCH = 512
END = b"END"


def _words(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    vocab = [f"word{i}" for i in range(10_000)]
    return [rng.choice(vocab) for _ in range(n)]


def _count(state: dict[str, int], pairs: list[tuple[str, int]]) -> None:
    for key, value in pairs:
        try:
            state[key] = state[key] + value
        except KeyError:
            state[key] = value


def _stateful(state: dict[Any, Any], pairs: list[tuple[Any, Any]]) -> None:
    out = []
    for key, value in pairs:
        current = state.get(key)
        state[key] = current
        out.append((key, value))


class _Peer:
    """One process's end of a two-process PUSH/PULL pair."""

    def __init__(self, me: int, ports: list[int]) -> None:
        self.ctx = zmq.Context()
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.bind(f"tcp://127.0.0.1:{ports[me]}")
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.connect(f"tcp://127.0.0.1:{ports[1 - me]}")
        self.other_done = False

    def send(self, items: list[Any]) -> None:
        self.push.send(pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL))

    def receive(self, apply: Callable[[list[Any]], None], block: bool) -> int:
        """Apply what has arrived (everything, until the peer's END, when ``block``)."""
        got = 0
        while not self.other_done:
            try:
                frame = self.pull.recv(0 if block else zmq.NOBLOCK)
            except zmq.Again:
                break
            if frame == END:
                self.other_done = True
            else:
                items = pickle.loads(frame)
                apply(items)
                got += len(items)
        return got

    def finish(self, apply: Callable[[list[Any]], None]) -> int:
        self.push.send(END)
        got = self.receive(apply, block=True)
        self.ctx.destroy(linger=1000)
        return got


def _wordcount_half(me: int, ports: list[int], n: int, results: Any) -> None:
    from zlib import crc32

    words = _words(me, n // 2)
    # Each word's owner, looked up as an engine would from its cache.
    owners = {w: crc32(w.encode()) & 1 for w in set(words)}
    peer = _Peer(me, ports)
    time.sleep(0.3)  # both ends connected before the clock starts
    state: dict[str, int] = {}
    start = time.perf_counter()
    for i in range(0, len(words), BATCH):
        mine: list[tuple[str, int]] = []
        theirs: list[tuple[str, int]] = []
        for w in words[i : i + BATCH]:
            (mine if owners[w] == me else theirs).append((w, 1))
        peer.send(theirs)
        _count(state, mine)
        peer.receive(lambda b: _count(state, b), block=False)
    peer.finish(lambda b: _count(state, b))
    results.put((start, time.perf_counter()))


def _crossing_half(me: int, ports: list[int], n: int, step: str, results: Any) -> None:
    items = [(i + 1, "v") for i in range(me, n, 2)]
    peer = _Peer(me, ports)
    time.sleep(0.3)
    state: dict[Any, Any] = {}
    apply = (lambda b: _stateful(state, b)) if step == "stateful" else (lambda b: None)
    got = 0
    start = time.perf_counter()
    for i in range(0, len(items), BATCH):
        peer.send(items[i : i + BATCH])
        got += peer.receive(apply, block=False)
    got += peer.finish(apply)
    results.put((start, time.perf_counter(), got))


def _two(target: Callable[..., None], *args: Any) -> list[tuple[Any, ...]]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    ports = free_ports(2)
    procs = [ctx.Process(target=target, args=(me, ports, *args, results)) for me in range(2)]
    for proc in procs:
        proc.start()
    out = [results.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    return out


def wordcount(n: int) -> dict[str, float]:
    words = _words(0, n)
    state: dict[str, int] = {}
    start = time.perf_counter()
    for i in range(0, len(words), BATCH):
        _count(state, [(w, 1) for w in words[i : i + BATCH]])
    one = n / (time.perf_counter() - start)
    spans = _two(_wordcount_half, n)
    two = n / (max(end for _, end in spans) - min(start for start, _ in spans))
    return {"one_process": one, "two_processes": two, "scaling": two / one}


def crossing(n: int, step: str) -> float:
    spans = _two(_crossing_half, n, step)
    moved = sum(got for _, _, got in spans)
    assert moved == n, (moved, n)
    return moved / (max(end for _, end, _ in spans) - min(start for start, _, _ in spans))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    runs = [wordcount(int(2_000_000 * args.scale)) for _ in range(args.repeat)]
    med = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    bare = statistics.median(crossing(int(3_000_000 * args.scale), "none") for _ in range(args.repeat))
    stateful = statistics.median(crossing(int(3_000_000 * args.scale), "stateful") for _ in range(args.repeat))
    print(f"hand-written programs, no engine; median of {args.repeat}")
    print(f"  wordcount  1 process {med['one_process']:,.0f}/s, 2 processes {med['two_processes']:,.0f}/s: "
          f"{med['scaling']:.2f}x")
    print(f"  crossing   bare {bare:,.0f} items/s, with stateful_map's per-item work {stateful:,.0f} items/s")


if __name__ == "__main__":
    main()

"""One cluster_main process of a fast sender meeting a slow receiver:
``python fanout_proc.py SCENARIO --addresses A,B --proc-id N --out PATH``.

Every worker reads ``--count`` numbers, a few at a time (so there are many batches); a
``flat_map`` fans each item out to ``--fan`` keyed items, which a slow step sums per key: in
process 1 it sleeps a moment every few items. What fans out, and when, is the scenario:

- ``peer``: a ``stateful_map`` in front of the fan-out, so items fan out while a worker
  handles the batches its peers send it;
- ``eof``: a window in front of it that closes only at the end of input, so everything fans
  out at once, while the workers flush;
- ``timer``: the same with windows of 20 ms, which close on the clock as the input goes on.

The sums go to ``OUT.<worker_index>``, one ``repr`` per line. The link logs (INFO) how many
messages it sent and how many waited at most in its outbound queue; the test reads that.

``--stuck``: the slow step of process 1 never returns from its first item (it touches
``OUT.stuck`` first), and process 0 touches ``OUT.waiting`` once one of its workers waits for
credit: the test then kills or freezes process 1 and sees what process 0 does.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from millrace.dataflow import Dataflow
from millrace.execution import cluster_main
from millrace.outputs import ManualOutputConfig
from millrace.runtime.worker import Worker
from millrace.window import SystemClockConfig, TumblingWindowConfig
from support.flows import keyed_numbers

#: Keys of the numbers each worker reads.
KEYS = 97
HOUR = TumblingWindowConfig(timedelta(hours=1))
SHORT = TumblingWindowConfig(timedelta(milliseconds=20))


def fan(width: int):
    def spread(kv: tuple[str, int]) -> list[tuple[str, int]]:
        key, value = kv
        return [(f"{key}/{j}", value) for j in range(width)]

    return spread


def slow_sum(proc_id: int, stuck: Path | None = None):
    calls = 0

    def add(a: int, b: int) -> int:
        nonlocal calls
        calls += 1
        if proc_id == 1 and stuck is not None:
            stuck.touch()
            while True:  # stuck in user code: its peers wait for credit, as they should
                time.sleep(1)
        if proc_id == 1 and calls % 20 == 0:
            time.sleep(0.002)
        return a + b

    return add


def expected(workers: int, count: int, width: int) -> Counter[tuple[str, int]]:
    """The sums both scenarios give, for ``workers`` workers in all."""
    sums: Counter[str] = Counter()
    for w in range(workers):
        for i in range(count):
            key = f"k{i % KEYS}"
            for j in range(width):
                sums[f"{key}/{j}"] += w * 1_000_000 + i
    return Counter(sums.items())


def build(scenario: str, out: str, count: int, width: int, proc_id: int, stuck: bool = False) -> Dataflow:
    def output(worker_index: int, worker_count: int):
        handle = open(f"{out}.{worker_index}", "a", buffering=1)
        return lambda item: handle.write(f"{item!r}\n")

    flow = Dataflow()
    flow.input("inp", keyed_numbers(count, KEYS))
    if scenario == "peer":
        # Emits every item as it comes: on the worker that owns its key, mostly a peer.
        flow.stateful_map("own", lambda: None, lambda state, value: (state, value))
    else:
        # Every item its own key: emits them as its windows close (at the end of input, or
        # on the clock).
        flow.map(lambda kv: (f"{kv[0]}@{kv[1]}", kv[1]))
        window = HOUR if scenario == "eof" else SHORT
        flow.reduce_window("gather", SystemClockConfig(), window, lambda a, b: a + b)
        flow.map(lambda kv: (kv[0].split("@")[0], kv[1]))
    flow.flat_map(fan(width))
    flow.reduce_window("slow", SystemClockConfig(), HOUR, slow_sum(proc_id, Path(f"{out}.stuck") if stuck else None))
    flow.capture(ManualOutputConfig(output))
    return flow


def mark_credit_wait(marker: Path) -> None:
    """Touch ``marker`` when a worker of this process starts waiting for credit."""
    wait = Worker._await_credit

    def waiting(self: Worker, dest: int, step: int) -> None:
        marker.touch()
        wait(self, dest, step)

    Worker._await_credit = waiting  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["peer", "eof", "timer"])
    parser.add_argument("--addresses", required=True)
    parser.add_argument("--proc-id", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", required=True)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--fan", type=int, default=20)
    parser.add_argument("--stuck", action="store_true", help="process 1's slow step never returns")
    args = parser.parse_args()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a stack dump, should it hang
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    logging.getLogger("millrace.transport").setLevel(logging.INFO)
    if args.stuck and args.proc_id == 0:
        mark_credit_wait(Path(f"{args.out}.waiting"))
    flow = build(args.scenario, args.out, args.count, args.fan, args.proc_id, args.stuck)
    cluster_main(flow, args.addresses.split(","), args.proc_id, worker_count_per_proc=args.workers)


if __name__ == "__main__":
    main()

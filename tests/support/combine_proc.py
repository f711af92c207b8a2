"""One cluster_main process of a combining flow whose partials go to a slow owner:
``python combine_proc.py SCENARIO --addresses A,B --proc-id N --out PATH``.

Every worker reads ``--count`` numbers, a few at a time (so there are many batches), each with
one of ``--keys`` keys, so that a run of consecutive items holds no key twice and combining
saves nothing: every key a worker read crosses as a partial. The windowed step keeps a
``(count, sum)`` per key; in process 1 its merger (what folds a peer's partial in) sleeps a
moment every few calls. Partials go in chunks of ``combine.CHUNK`` (2 here), so a drain is
many messages; when they go is the scenario:

- ``reduce-full`` / ``fold-full``: ``reduce_window(..., combine=True)`` / ``fold_window(...,
  merger=...)`` in one long epoch, drained each time ``combine.LIMIT`` (256 here) keys are held;
- ``reduce-epochs``: ``reduce_window(..., combine=True)`` with epochs of 20 ms and the default
  ``LIMIT``, drained at each epoch's end.

The results go to ``OUT.<worker_index>``, one ``repr`` per line. The link logs (INFO) how many
messages it sent and how many waited at most in its outbound queue; process 1 also prints how
many partial messages of process 0's workers it handled, and how many of one of them
(per sending and receiving worker) had arrived at most and were not handled yet.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from millrace.dataflow import Dataflow
from millrace.execution import PeriodicEpochConfig, cluster_main
from millrace.outputs import ManualOutputConfig
from millrace.runtime import combine
from millrace.runtime.exchange import DATA, Exchange, Message
from millrace.runtime.worker import Worker
from millrace.window import SystemClockConfig, TumblingWindowConfig
from support.flows import keyed_numbers

DAY = TumblingWindowConfig(timedelta(days=1))
SCENARIOS = ["reduce-full", "fold-full", "reduce-epochs"]


def expected(workers: int, count: int, keys: int) -> dict[str, tuple[int, int]]:
    """Per key, how many values and their sum, for ``workers`` workers in all."""
    totals: dict[str, tuple[int, int]] = {}
    for w in range(workers):
        for i in range(count):
            n, total = totals.get(f"k{i % keys}", (0, 0))
            totals[f"k{i % keys}"] = (n + 1, total + w * 1_000_000 + i)
    return totals


def add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    return a[0] + b[0], a[1] + b[1]


def slow(proc_id: int):
    calls = 0

    def merge(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
        nonlocal calls
        calls += 1
        if proc_id == 1 and calls % 4 == 0:
            time.sleep(0.001)
        return add(a, b)

    return merge


def build(scenario: str, out: str, count: int, keys: int, proc_id: int) -> Dataflow:
    def output(worker_index: int, worker_count: int):
        handle = open(f"{out}.{worker_index}", "a", buffering=1)
        return lambda item: handle.write(f"{item!r}\n")

    flow = Dataflow()
    flow.input("inp", keyed_numbers(count, keys))
    if scenario.startswith("fold"):
        flow.fold_window(
            "slow",
            SystemClockConfig(),
            DAY,
            lambda: (0, 0),
            lambda acc, value: (acc[0] + 1, acc[1] + value),
            merger=slow(proc_id),
        )
    else:
        flow.map(lambda kv: (kv[0], (1, kv[1])))
        flow.reduce_window("slow", SystemClockConfig(), DAY, slow(proc_id), combine=True)
    flow.capture(ManualOutputConfig(output))
    return flow


class Unhandled:
    """Counts the partial messages of another process's workers that arrived at a worker of
    this one (the link's receiver thread) and that it handled (its own thread), per sending
    and receiving worker, and the most that had arrived and were not handled yet."""

    def __init__(self) -> None:
        self.arrived: Counter[tuple[int, int]] = Counter()
        self.handled: Counter[tuple[int, int]] = Counter()
        self.peak = 0
        self.lock = threading.Lock()

    def install(self) -> None:
        deliver, handle = Exchange.deliver, Worker._handle
        unhandled = self

        def delivering(self: Exchange, dest: int, msg: Message, sender: int | None = None) -> None:
            if sender is not None and msg[0] == DATA and msg[1] < 0:
                with unhandled.lock:
                    channel = (msg[4], dest)
                    unhandled.arrived[channel] += 1  # counted before the worker can see it
                    waiting = unhandled.arrived[channel] - unhandled.handled[channel]
                    unhandled.peak = max(unhandled.peak, waiting)
            deliver(self, dest, msg, sender)

        def handling(self: Worker, msg: Message) -> None:
            if msg[0] == DATA and msg[1] < 0 and not self.exchange.is_local(msg[4]):
                with unhandled.lock:
                    unhandled.handled[(msg[4], self.index)] += 1
            handle(self, msg)

        Exchange.deliver = delivering  # type: ignore[method-assign]
        Worker._handle = handling  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--addresses", required=True)
    parser.add_argument("--proc-id", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", required=True)
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--keys", type=int, default=600)
    args = parser.parse_args()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a stack dump, should it hang
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    logging.getLogger("millrace.transport").setLevel(logging.INFO)
    combine.CHUNK = 2
    epochs = None
    if args.scenario.endswith("-full"):
        combine.LIMIT = 256
    else:
        epochs = PeriodicEpochConfig(timedelta(milliseconds=20))
    unhandled = Unhandled()
    unhandled.install()
    flow = build(args.scenario, args.out, args.count, args.keys, args.proc_id)
    cluster_main(flow, args.addresses.split(","), args.proc_id, epoch_config=epochs, worker_count_per_proc=args.workers)
    handled = sum(unhandled.handled.values())
    print(f"handled {handled} partial messages of peers; at most {unhandled.peak} arrived unhandled", file=sys.stderr)


if __name__ == "__main__":
    main()

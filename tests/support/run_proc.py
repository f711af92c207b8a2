"""Run one cluster_main process of a test scenario: ``python run_proc.py SCENARIO ...``.

Each worker writes what it captures to ``OUT.<worker_index>``, one ``repr`` per line. With
``--running PATH`` the process creates ``PATH`` when its first item flows: the test's sign
that the cluster has formed and is computing, which it waits for instead of sleeping.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from millrace.dataflow import Dataflow
from millrace.execution import PeriodicEpochConfig, cluster_main
from millrace.outputs import ManualOutputConfig
from millrace.window import SystemClockConfig, TumblingWindowConfig
from support.flows import slow_numbers


def file_output(out: str) -> ManualOutputConfig:
    def build(worker_index: int, worker_count: int):
        handle = open(f"{out}.{worker_index}", "a", buffering=1)
        return lambda item: handle.write(f"{item!r}\n")

    return ManualOutputConfig(build)


def explode_on(worker: int, item: int):
    def check(kv: tuple[int, int]) -> tuple[int, int]:
        if kv[1] == worker * 1_000_000 + item:
            raise ZeroDivisionError(f"boom at {kv!r}")
        return kv

    return check


def announce_running(path: str) -> Callable[[Any], None]:
    """An inspect step that creates ``path`` at the first item of this process. Workers start
    only once every process has joined, so by then the cluster has formed."""
    announced = threading.Event()

    def inspect(item: Any) -> None:
        if not announced.is_set():
            announced.set()
            Path(path).touch()

    return inspect


def build(scenario: str, out: str, count: int, delay: float, running: str | None = None) -> Dataflow:
    flow = Dataflow()
    if scenario == "forever":
        flow.input("inp", slow_numbers(10**9, delay))
    else:
        flow.input("inp", slow_numbers(count, delay))
    if scenario == "boom":
        flow.map(explode_on(1, count // 2))
    if running is not None:  # after the map, whose name (map #1) the tests expect in errors
        flow.inspect(announce_running(running))
    flow.reduce_window("sum", SystemClockConfig(), TumblingWindowConfig(timedelta(hours=1)), lambda a, b: a + b)
    flow.capture(file_output(out))
    return flow


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["sum", "boom", "forever"])
    parser.add_argument("--addresses", required=True)
    parser.add_argument("--proc-id", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", required=True)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--connect-timeout", type=float, default=20.0)
    parser.add_argument("--running", help="a file to create once items flow in this process")
    args = parser.parse_args(argv)
    flow = build(args.scenario, args.out, args.count, args.delay, args.running)
    cluster_main(
        flow,
        args.addresses.split(","),
        args.proc_id,
        worker_count_per_proc=args.workers,
        epoch_config=PeriodicEpochConfig(timedelta(seconds=0.2)),
        connect_timeout=args.connect_timeout,
    )
    print(f"process {args.proc_id} finished", flush=True)


if __name__ == "__main__":
    main()

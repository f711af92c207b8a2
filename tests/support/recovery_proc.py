"""One cluster_main process of the recovery fault-injection test.

Worker w reads ``count`` items ``(f"{w}-{i % 5}", i)``; a stateful_map keeps running sums per key;
each worker appends ``(epoch, item)`` lines to ``OUT.<worker>``.
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta
from typing import Any

from millrace.dataflow import Dataflow
from millrace.execution import PeriodicEpochConfig, cluster_main
from millrace.inputs import ManualInputConfig
from millrace.outputs import ManualEpochOutputConfig
from millrace.recovery import SqliteRecoveryConfig


def build(out: str, count: int, delay: float) -> Dataflow:
    def numbers(worker_index: int, worker_count: int, resume_state: Any):
        start = 0 if resume_state is None else resume_state
        for i in range(start, count):
            time.sleep(delay)
            yield i + 1, (f"{worker_index}-{i % 5}", i)

    def output(worker_index: int, worker_count: int):
        handle = open(f"{out}.{worker_index}", "a", buffering=1)
        return lambda epoch_item: handle.write(f"{epoch_item!r}\n")

    flow = Dataflow()
    flow.input("numbers", ManualInputConfig(numbers))
    flow.stateful_map("sums", lambda: 0, lambda total, i: (total + i, total + i))
    flow.capture(ManualEpochOutputConfig(output))
    return flow


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addresses", required=True)
    parser.add_argument("--proc-id", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--db-dir", required=True)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--delay", type=float, default=0.002)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    cluster_main(
        build(args.out, args.count, args.delay),
        args.addresses.split(","),
        args.proc_id,
        worker_count_per_proc=args.workers,
        epoch_config=PeriodicEpochConfig(timedelta(seconds=0.1)),
        recovery_config=SqliteRecoveryConfig(args.db_dir),
        secret="recovery-test",
        connect_timeout=30,
    )


if __name__ == "__main__":
    main()

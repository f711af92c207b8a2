"""One cluster_main process of the Kafka fault-injection tests: 2 workers read a topic with
``tail=False``, tag every payload with ``!`` and write it to another topic; recovery in SQLite
(``--db-dir``). ``--delay`` seconds per item keep the run long enough to be killed mid-way.
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta
from typing import Any

from millrace.dataflow import Dataflow
from millrace.execution import PeriodicEpochConfig, cluster_main
from millrace.inputs import KafkaInputConfig
from millrace.outputs import KafkaOutputConfig
from millrace.recovery import SqliteRecoveryConfig


def build(broker: str, source: str, sink: str, delay: float) -> Dataflow:
    def tag(kv: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
        time.sleep(delay)
        return kv[0], kv[1] + b"!"

    flow = Dataflow()
    flow.input("in", KafkaInputConfig([broker], source, tail=False))
    flow.map(tag)
    flow.capture(KafkaOutputConfig([broker], sink))
    return flow


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addresses", required=True)
    parser.add_argument("--proc-id", type=int, required=True)
    parser.add_argument("--broker", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--sink", required=True)
    parser.add_argument("--db-dir", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    recovery: Any = SqliteRecoveryConfig(args.db_dir)
    cluster_main(
        build(args.broker, args.source, args.sink, args.delay),
        args.addresses.split(","),
        args.proc_id,
        worker_count_per_proc=2,
        epoch_config=PeriodicEpochConfig(timedelta(seconds=0.1)),
        recovery_config=recovery,
        secret="kafka-test",
        connect_timeout=30,
    )


if __name__ == "__main__":
    main()

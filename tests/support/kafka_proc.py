"""One cluster_main process of the Kafka fault-injection tests: 2 workers read a topic with
``tail=False``, tag every payload with ``!`` and write it to another topic; recovery in SQLite
in a SQLite directory (``--recovery sqlite:DIR``) or in Kafka topics
(``--recovery kafka:PREFIX``). With ``--pause-after N --go-file PATH`` the process holds its items once it has tagged N
of them until PATH exists: a test kills a process while the run is surely mid-way.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from datetime import timedelta
from typing import Any

from millrace.dataflow import Dataflow
from millrace.execution import PeriodicEpochConfig, cluster_main
from millrace.inputs import KafkaInputConfig
from millrace.outputs import KafkaOutputConfig
from millrace.recovery import KafkaRecoveryConfig, SqliteRecoveryConfig


def build(broker: str, source: str, sink: str, pause_after: int | None, go_file: str | None) -> Dataflow:
    tagged = itertools.count(1)

    def tag(kv: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
        if pause_after is not None and next(tagged) >= pause_after:
            assert go_file is not None
            deadline = time.monotonic() + 60
            while not os.path.exists(go_file) and time.monotonic() < deadline:
                time.sleep(0.01)
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
    parser.add_argument("--recovery", required=True)
    parser.add_argument("--pause-after", type=int, default=None)
    parser.add_argument("--go-file", default=None)
    args = parser.parse_args()
    kind, _, where = args.recovery.partition(":")
    recovery: Any = SqliteRecoveryConfig(where) if kind == "sqlite" else KafkaRecoveryConfig([args.broker], where)
    cluster_main(
        build(args.broker, args.source, args.sink, args.pause_after, args.go_file),
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

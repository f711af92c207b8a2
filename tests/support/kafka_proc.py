"""One cluster_main process of the Kafka fault-injection tests: 2 workers read a topic with
``tail=False``, tag every payload with ``!`` and write it to another topic; recovery in SQLite
in a SQLite directory (``--recovery sqlite:DIR``) or in Kafka topics
(``--recovery kafka:PREFIX``). With ``--pause-after N --go-file PATH`` the process holds its items once it has tagged N
of them until PATH exists (and makes ``PATH.<pid>`` then): a test kills a process while the
run is surely mid-way.

For the exactly-once tests: ``--exactly-once`` makes the output transactional, ``--workers``
sets the workers per process, ``--slow`` spreads the run over more epochs, and
``--crash POINT:EPOCH`` kills this process with SIGKILL at the exactly-once writer's test hook
``POINT`` (``commit``, ``in-transaction``, ``committed``) of the first commit of ``EPOCH`` or
later (at ``in-transaction`` the transaction's records have reached the broker).
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from millrace.dataflow import Dataflow
from millrace.execution import PeriodicEpochConfig, cluster_main
from millrace.inputs import KafkaInputConfig
from millrace.outputs import KafkaOutputConfig
from millrace.recovery import KafkaRecoveryConfig, SqliteRecoveryConfig


def build(
    broker: str,
    source: str,
    sink: str,
    pause_after: int | None,
    go_file: str | None,
    exactly_once: bool = False,
    slow: bool = False,
) -> Dataflow:
    tagged = itertools.count(1)
    seen = itertools.count(1)

    def tag(kv: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
        if slow and next(seen) % 50 == 0:
            time.sleep(0.005)
        if pause_after is not None and next(tagged) >= pause_after:
            assert go_file is not None
            # Says this process holds its items now (so it is not inside a commit).
            Path(f"{go_file}.{os.getpid()}").touch()
            deadline = time.monotonic() + 60
            while not os.path.exists(go_file) and time.monotonic() < deadline:
                time.sleep(0.01)
        return kv[0], kv[1] + b"!"

    flow = Dataflow()
    flow.input("in", KafkaInputConfig([broker], source, tail=False))
    flow.map(tag)
    flow.capture(KafkaOutputConfig([broker], sink, exactly_once=exactly_once))
    return flow


def install_crash(at: str, from_epoch: int) -> None:
    """Kill this process at the exactly-once writer's hook ``at`` of epoch ``from_epoch`` or later."""
    from millrace.runtime import kafka_transactions

    def hook(point: str, transactional_id: str, epoch: int) -> None:
        if point == at and epoch >= from_epoch:
            print(f"crash at {point} of epoch {epoch} ({transactional_id})", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    kafka_transactions.test_hook = hook


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
    parser.add_argument("--exactly-once", action="store_true")
    parser.add_argument("--slow", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--crash", default=None)
    args = parser.parse_args()
    if args.crash:
        point, _, epoch = args.crash.partition(":")
        install_crash(point, int(epoch))
    kind, _, where = args.recovery.partition(":")
    recovery: Any = SqliteRecoveryConfig(where) if kind == "sqlite" else KafkaRecoveryConfig([args.broker], where)
    cluster_main(
        build(args.broker, args.source, args.sink, args.pause_after, args.go_file, args.exactly_once, args.slow),
        args.addresses.split(","),
        args.proc_id,
        worker_count_per_proc=args.workers,
        epoch_config=PeriodicEpochConfig(timedelta(seconds=0.1)),
        recovery_config=recovery,
        secret="kafka-test",
        connect_timeout=30,
    )


if __name__ == "__main__":
    main()

"""Topic to topic through millrace, beside the Kafka client's own rates, in one run.

    python benchmarks/bench_kafka.py --records 300000 --repeat 3

Starts a tansu broker (scripts/kafka-broker installs it into .venv/bin), fills a 3-partition
topic with ``--records`` records, then measures, ``--repeat`` times each, one after the other:

* the client alone: one confluent-kafka producer writing the records to a topic (produce,
  then flush), and one consumer reading a topic's 3 partitions by assignment to their EOF;
* millrace: ``KafkaInputConfig(tail=False)`` -> ``KafkaOutputConfig`` into a fresh topic, on 1
  process of 1 worker (``run_main``) and on 2 processes of 1 worker (``spawn_cluster``; the
  time includes starting the processes). Every run's output topic is read back and must hold
  every record exactly once;
* exactly-once output on vs off: the 1-process flow with a SQLite recovery store (in a fresh
  temporary directory per run), once with ``KafkaOutputConfig`` as it is and once with
  ``exactly_once=True`` (read back with ``read_committed``), one after the other in each
  repeat; the ratio of the two is printed.

Figures are records per second (median of the repeats, and the range); millrace's are also a
share of the client's consume rate, the ceiling a reader of the same broker can reach. Every
figure depends on tansu as much as on the client or on millrace: use them side by side.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition  # noqa: E402

from millrace.dataflow import Dataflow  # noqa: E402
from millrace.execution import PeriodicEpochConfig, run_main, spawn_cluster  # noqa: E402
from millrace.inputs import KafkaInputConfig  # noqa: E402
from millrace.outputs import KafkaOutputConfig  # noqa: E402
from millrace.recovery import SqliteRecoveryConfig  # noqa: E402
from tests.support.kafka import create_topic, produce, read_all, tansu_broker  # noqa: E402

PARTITIONS = 3


def records(n: int) -> list[tuple[bytes, bytes, int]]:
    return [(b"k%d" % i, b"payload-%08d" % i, i % PARTITIONS) for i in range(n)]


def consume_all(broker: str, topic: str) -> int:
    """Read every record of ``topic`` by assignment to each partition's EOF; the count."""
    consumer = Consumer(
        {"bootstrap.servers": broker, "group.id": "bench", "enable.partition.eof": True, "enable.auto.commit": False}
    )
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        open_partitions, seen = set(range(PARTITIONS)), 0
        while open_partitions:
            # What the client has fetched, at once (as millrace's reader asks): a timeout would
            # wait for a full batch of 10,000 that a partition's end never brings.
            messages = consumer.consume(10_000, 0)
            if not messages:
                time.sleep(0.0005)
            for message in messages:
                error = message.error()
                if error is None:
                    seen += 1
                elif error.code() == KafkaError._PARTITION_EOF:
                    open_partitions.discard(message.partition())
                else:
                    raise RuntimeError(str(error))
        return seen
    finally:
        consumer.close()


def flow(broker: str, source: str, sink: str, exactly_once: bool = False) -> Dataflow:
    f = Dataflow()
    f.input("in", KafkaInputConfig([broker], source, tail=False))
    f.capture(KafkaOutputConfig([broker], sink, exactly_once=exactly_once))
    return f


def recovered(broker: str, sink: str, exactly_once: bool, epochs: PeriodicEpochConfig) -> None:
    with tempfile.TemporaryDirectory() as db:
        run_main(
            flow(broker, "source", sink, exactly_once),
            epoch_config=epochs,
            recovery_config=SqliteRecoveryConfig(db),
        )


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n = args.records
    data = records(n)
    rates: dict[str, list[float]] = {}
    epochs = PeriodicEpochConfig()
    with tansu_broker() as broker:
        create_topic(broker, "source", PARTITIONS)
        produce(broker, "source", data)
        runs = 0

        def fresh_topic() -> str:
            nonlocal runs
            runs += 1
            create_topic(broker, f"out-{runs}", PARTITIONS)
            return f"out-{runs}"

        for _ in range(args.repeat):
            topic = fresh_topic()
            rates.setdefault("client: produce", []).append(n / timed(lambda t=topic: produce(broker, t, data)))
            rates.setdefault("client: consume", []).append(n / timed(lambda: consume_all(broker, "source")))
            for label, run in (
                ("millrace: 1 process", lambda f: run_main(f, epoch_config=epochs)),
                ("millrace: 2 processes", lambda f: spawn_cluster(f, epoch_config=epochs, proc_count=2)),
            ):
                topic = fresh_topic()
                seconds = timed(lambda r=run, t=topic: r(flow(broker, "source", t)))
                out = read_all(broker, topic)
                if len(out) != n or len({key for _, _, key, _ in out}) != n:
                    raise SystemExit(f"{label}: {len(out)} records out of {n}, or some twice")
                rates.setdefault(label, []).append(n / seconds)
            for label, once in (("recovery, at-least-once", False), ("recovery, exactly-once", True)):
                label = f"millrace: 1 process, {label}"
                topic = fresh_topic()
                seconds = timed(lambda t=topic, o=once: recovered(broker, t, o, epochs))
                out = read_all(broker, topic, "read_committed")
                if len(out) != n or len({key for _, _, key, _ in out}) != n:
                    raise SystemExit(f"{label}: {len(out)} records out of {n}, or some twice")
                rates.setdefault(label, []).append(n / seconds)
    ceiling = statistics.median(rates["client: consume"])
    print(f"{n:,} records, {PARTITIONS} partitions, tansu in memory; median of {args.repeat} (range)\n")
    print("| measurement | records/s | share of the client's consume rate |")
    print("|---|---:|---:|")
    for label, values in rates.items():
        median = statistics.median(values)
        print(f"| {label} | {median:,.0f} ({min(values):,.0f}–{max(values):,.0f}) | {median / ceiling:.0%} |")
    on = rates["millrace: 1 process, recovery, exactly-once"]
    off = rates["millrace: 1 process, recovery, at-least-once"]
    ratios = [a / b for a, b in zip(on, off, strict=True)]
    print(
        f"\nexactly-once / at-least-once, per repeat: {', '.join(f'{r:.2f}' for r in ratios)} "
        f"(median {statistics.median(ratios):.2f})"
    )


if __name__ == "__main__":
    main()

"""A real Kafka-protocol broker for the tests: tansu (scripts/kafka-broker installs it into
.venv/bin), in memory, on a free port of 127.0.0.1, and helpers to fill and read topics.

tansu 0.6.0 quirks the tests know of (see docs/kafka.md): ListOffsets answers a stale high
watermark, consumer groups deliver nothing, and it ignores SIGTERM for seconds (its store is in
memory, so it is killed).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from millrace.transport.addresses import free_ports

TANSU = Path(sys.executable).parent / "tansu"
START_TIMEOUT = 20.0


@contextmanager
def tansu_broker() -> Iterator[str]:
    """A broker for the block; yields its bootstrap address ``127.0.0.1:PORT``."""
    if not TANSU.exists():
        raise RuntimeError(f"{TANSU} is missing: run scripts/kafka-broker (scripts/setup does)")
    (port,) = free_ports(1)
    url = f"tcp://127.0.0.1:{port}"
    args = [str(TANSU), "broker", "--listener-url", url, "--advertised-listener-url", url]
    args += ["--storage-engine", "memory://tansu/"]
    # Its log goes to a file, not a pipe nobody reads (a full pipe would stall the broker).
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        address = f"127.0.0.1:{port}"
        try:
            _wait_ready(proc, address, log)
            yield address
        finally:
            proc.kill()
            proc.wait(timeout=10)


def _wait_ready(proc: subprocess.Popen[bytes], address: str, log: IO[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    host, port = address.split(":")
    while True:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"tansu exited with {proc.returncode}: {log.read().decode(errors='replace')[-2000:]}")
        try:
            socket.create_connection((host, int(port)), timeout=0.2).close()
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"tansu did not listen on {address} within {START_TIMEOUT} s") from None
            time.sleep(0.02)
            continue
        AdminClient({"bootstrap.servers": address}).list_topics(timeout=START_TIMEOUT)
        return


def create_topic(broker: str, name: str, partitions: int, config: dict[str, str] | None = None) -> None:
    admin = AdminClient({"bootstrap.servers": broker})
    for future in admin.create_topics([NewTopic(name, partitions, 1, config=config or {})]).values():
        future.result(timeout=30)


def produce(broker: str, topic: str, records: Iterable[tuple[bytes | None, bytes, int]]) -> None:
    """Write ``(key, value, partition)`` records and wait until every one is acknowledged."""
    failures: list[KafkaError] = []
    producer = Producer({"bootstrap.servers": broker, "linger.ms": 5, "enable.idempotence": True})

    def delivered(error: KafkaError | None, _message: object) -> None:
        if error is not None:
            failures.append(error)

    for key, value, partition in records:
        while True:
            try:
                producer.produce(topic, value, key, partition=partition, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0, "records left unsent"
    assert not failures, failures[:3]


def read_all(
    broker: str, topic: str, isolation: str = "read_uncommitted", timeout: float = 60.0
) -> list[tuple[int, int, bytes | None, bytes | None]]:
    """Every record of ``topic`` as ``(partition, offset, key, value)``, read by assignment to
    each partition's EOF (consumer groups deliver nothing on tansu)."""
    consumer = Consumer(
        {
            "bootstrap.servers": broker,
            "group.id": "tests-read-all",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
            "isolation.level": isolation,
        }
    )
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=30).topics[topic].partitions)
        # Offset 0, not OFFSET_BEGINNING: after processes were killed mid-transaction, tansu
        # 0.6.0 once answered the earliest-offset lookup with 296, and the reader skipped the
        # records before it (seen by the exactly-once tests; nothing here deletes records).
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        open_partitions = set(partitions)
        records = []
        deadline = time.monotonic() + timeout
        while open_partitions:
            assert time.monotonic() < deadline, f"{topic}: no EOF of partitions {sorted(open_partitions)}"
            for message in consumer.consume(10_000, 0.5):
                error = message.error()
                if error is None:
                    records.append((message.partition(), message.offset(), message.key(), message.value()))
                elif error.code() == KafkaError._PARTITION_EOF:
                    open_partitions.discard(message.partition())
                else:
                    raise RuntimeError(f"reading {topic}: {error}")
        return records
    finally:
        consumer.close()

"""Kafka in, Kafka out, against a real Kafka-protocol broker (tansu, tests/support/kafka.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from millrace.dataflow import Dataflow
from millrace.execution import run_main, spawn_cluster
from millrace.inputs import KafkaInputConfig
from millrace.outputs import KafkaOutputConfig, TestingOutputConfig

from .support.kafka import create_topic, produce, read_all, tansu_broker

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    with tansu_broker() as address:
        yield address


def _numbers(n: int, partitions: int) -> list[tuple[bytes, bytes, int]]:
    return [(f"k{i}".encode(), f"v{i}".encode(), i % partitions) for i in range(n)]


def test_an_empty_partition_ends_at_its_eof(broker):
    create_topic(broker, "empty-part", 2)
    produce(broker, "empty-part", [(b"a", b"1", 0)])
    out: list = []
    flow = Dataflow()
    flow.input("in", KafkaInputConfig([broker], "empty-part", tail=False))
    flow.capture(TestingOutputConfig(out))
    run_main(flow)
    assert out == [(b"a", b"1")]


def test_one_worker_reads_every_record_and_writes_them(broker):
    create_topic(broker, "one-in", 3)
    create_topic(broker, "one-out", 2)
    produce(broker, "one-in", _numbers(1000, 3))
    flow = Dataflow()
    flow.input("in", KafkaInputConfig([broker], "one-in", tail=False))
    flow.map(lambda kv: (kv[0].decode(), kv[1].decode().upper()))  # str items are written as UTF-8
    flow.capture(KafkaOutputConfig([broker], "one-out"))
    run_main(flow)
    got = Counter((key, value) for _, _, key, value in read_all(broker, "one-out"))
    assert got == Counter((f"k{i}".encode(), f"V{i}".encode()) for i in range(1000))


RECORDS = 100_000


@pytest.fixture(scope="module")
def big_topic(broker) -> str:
    """A 3-partition topic of RECORDS records, key ``k<i>`` and value ``v<i>``."""
    create_topic(broker, "big", 3)
    produce(broker, "big", _numbers(RECORDS, 3))
    return "big"


def _tag(kv):
    key, value = kv
    return key, value + b"!"


def test_a_2x2_cluster_moves_every_record_exactly_once(broker, big_topic):
    create_topic(broker, "big-out", 3)
    flow = Dataflow()
    flow.input("in", KafkaInputConfig([broker], big_topic, tail=False))
    flow.map(_tag)
    flow.capture(KafkaOutputConfig([broker], "big-out"))
    spawn_cluster(flow, proc_count=2, worker_count_per_proc=2)
    got = Counter((key, value) for _, _, key, value in read_all(broker, "big-out"))
    assert len(got) == RECORDS and set(got.values()) == {1}
    assert set(got) == {(f"k{i}".encode(), f"v{i}!".encode()) for i in range(RECORDS)}

"""Kafka in, Kafka out, against a real Kafka-protocol broker (tansu, tests/support/kafka.py)."""

from __future__ import annotations

import dataclasses
import signal
import sqlite3
import time
from collections import Counter
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka.admin import AdminClient

from millrace import plan
from millrace.dataflow import Dataflow
from millrace.execution import TestingEpochConfig, run_main, spawn_cluster
from millrace.inputs import KafkaInputConfig, TestingInputConfig, distribute
from millrace.outputs import KafkaOutputConfig, ManualOutputConfig, TestingOutputConfig
from millrace.recovery import KafkaRecoveryConfig, RecoveryConfig, SqliteRecoveryConfig
from millrace.runtime import store
from millrace.runtime.kafka_sink import KafkaSink
from millrace.runtime.kafka_source import build_kafka_reader
from millrace.runtime.kafka_store import KafkaStores
from millrace.runtime.store import Chunk, RecoveryError
from millrace.runtime.stores import stores_of
from millrace.transport.addresses import free_ports

from .conftest import SUPPORT, Procs
from .support.kafka import create_topic, produce, read_all

pytestmark = pytest.mark.timeout(300)

T0 = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture
def broker(kafka_broker: str) -> str:
    return kafka_broker


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


@pytest.fixture(scope="session")
def big_topic(kafka_broker) -> str:
    """A 3-partition topic of RECORDS records, key ``k<i>`` and value ``v<i>``."""
    create_topic(kafka_broker, "big", 3)
    produce(kafka_broker, "big", _numbers(RECORDS, 3))
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


KAFKA_PROC = str(SUPPORT / "kafka_proc.py")


def _start(procs: Procs, broker: str, sink: str, recovery: str, *pause: str) -> list:
    addresses = ",".join(f"127.0.0.1:{port}" for port in free_ports(2))
    return [
        procs.start(
            KAFKA_PROC,
            *("--addresses", addresses, "--proc-id", str(proc_id), "--broker", broker),
            *("--source", "big", "--sink", sink, "--recovery", recovery, *pause),
        )
        for proc_id in range(2)
    ]


def _resume_offsets(recovery: RecoveryConfig, workers: int) -> dict[int, int]:
    """Per input partition, the offset a restart resumes at: the input states the stores hold
    for the last epoch every worker finished."""
    stores = stores_of(recovery)
    assert stores is not None
    infos = [stores.inspect(w) for w in range(workers)]
    last = min(-1 if info is None or info.progress is None else info.progress for info in infos)
    offsets: dict[int, int] = {}
    for w in range(workers):
        if isinstance(stores, KafkaStores):
            generation = stores.progress()[w]["generation"]
            image = stores.state_of(w).get(generation, {})
            blobs = [blob for (kind, _, epoch), blob in image.items() if kind == "i" and epoch == last]
        else:
            path = store.store_path(stores.db_dir, w)
            if not path.exists():
                continue
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
                blobs = [blob for (blob,) in conn.execute("SELECT state FROM inputs WHERE epoch = ?", (last,))]
        for blob in blobs:
            offsets.update(store.load_state(blob))
    return offsets


@pytest.mark.parametrize("kind", ["sqlite", "kafka"])
def test_a_killed_process_of_a_2x2_cluster_resumes_losing_nothing(procs, tmp_path, broker, big_topic, kind):
    """SIGKILL to one of two processes mid-run, recovery in SQLite or in Kafka: the restart
    writes every record, and again only those of the epochs it runs again."""
    sink = f"killed-out-{kind}"
    create_topic(broker, sink, 3)
    if kind == "sqlite":
        (tmp_path / "db").mkdir()
        spec, recovery = f"sqlite:{tmp_path / 'db'}", SqliteRecoveryConfig(tmp_path / "db")
    else:
        spec, recovery = "kafka:killed", KafkaRecoveryConfig([broker], "killed")
    # Each process holds its items after 15,000 until the go file exists: the kill comes once
    # a fifth of the output is in the broker, and surely before the end.
    go = tmp_path / "go"
    cluster = _start(procs, broker, sink, spec, "--pause-after", "15000", "--go-file", str(go))
    while len(read_all(broker, sink)) < RECORDS // 5:
        assert cluster[1].poll() is None, cluster[1].communicate()
    cluster[1].kill()
    go.touch()
    for proc in cluster:
        proc.communicate(timeout=60)
    assert cluster[1].returncode == -signal.SIGKILL
    assert cluster[0].returncode != 0, "the surviving process went on without its peer"
    first = Counter((key, value) for _, _, key, value in read_all(broker, sink))
    assert len(first) < RECORDS, "the run was over before the kill"
    resume = _resume_offsets(recovery, 4)

    for proc in _start(procs, broker, sink, spec):
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr

    got = Counter((key, value) for _, _, key, value in read_all(broker, sink))
    expected = {(f"k{i}".encode(), f"v{i}!".encode()) for i in range(RECORDS)}
    assert set(got) == expected, "records were lost or invented"
    # A record is written twice at most, and only when the restart read it again: at or after
    # its partition's resume offset (record i is at offset i // 3 of partition i % 3).
    twice = [int(key[1:]) for (key, _), count in got.items() if count > 1]
    assert set(got.values()) <= {1, 2}
    assert all(i // 3 >= resume.get(i % 3, 0) for i in twice), "a record before the resume point came again"


# -- errors: named, and within the connect timeout --------------------------------------------


def _copy_flow(broker: str, source: str, sink: str, properties: dict[str, str] | None = None) -> Dataflow:
    flow = Dataflow()
    flow.input("kafka-in", KafkaInputConfig([broker], source, tail=False, additional_properties=properties))
    flow.capture(KafkaOutputConfig([broker], sink))
    return flow


def test_an_unreachable_broker_is_named(broker):
    (port,) = free_ports(1)  # nothing listens there
    flow = Dataflow()
    flow.input("kafka-in", KafkaInputConfig([f"127.0.0.1:{port}"], "t", tail=False))
    flow.capture(TestingOutputConfig([]))
    with pytest.raises(
        ConnectionError, match=rf"input 'kafka-in': cannot reach the Kafka brokers 127.0.0.1:{port} within"
    ):
        run_main(flow)


def test_a_missing_topic_is_named_and_not_created(broker):
    create_topic(broker, "present", 1)
    with pytest.raises(LookupError, match="input 'kafka-in': Kafka topic 'absent' does not exist on the Kafka brokers"):
        run_main(_copy_flow(broker, "absent", "present"))
    with pytest.raises(LookupError, match=r"capture #1 \(KafkaOutputConfig\): Kafka topic 'absent-out' does not exist"):
        run_main(_copy_flow(broker, "present", "absent-out"))
    topics = AdminClient({"bootstrap.servers": broker}).list_topics(timeout=10).topics
    assert "absent" not in topics and "absent-out" not in topics


def test_a_property_the_client_refuses_is_named(broker):
    create_topic(broker, "props", 1)
    with pytest.raises(ValueError, match=r"input 'kafka-in': the Kafka client refuses .*no.such.property"):
        run_main(_copy_flow(broker, "props", "props", {"no.such.property": "1"}))


def test_a_writer_that_fails_to_build_lets_go_of_the_ones_built_before(broker, monkeypatch):
    """A Kafka producer built for the first capture is closed when a later capture's builder
    fails: nobody else holds it."""
    create_topic(broker, "first-out", 1)
    closed: list[str] = []
    monkeypatch.setattr(KafkaSink, "close", lambda sink: closed.append(sink.step_name))

    def refuse(worker_index: int, worker_count: int) -> Any:
        raise OSError("no such file")

    flow = Dataflow()
    flow.input("inp", TestingInputConfig([(b"k", b"v")]))
    flow.capture(KafkaOutputConfig([broker], "first-out"))
    flow.capture(ManualOutputConfig(refuse))
    with pytest.raises(OSError, match="no such file"):
        run_main(flow)
    assert closed == ["capture #1 (KafkaOutputConfig)"]


def test_additional_properties_reach_the_client(broker):
    """A client id travels to the broker (and a wrong security protocol would fail)."""
    create_topic(broker, "props2", 1)
    with pytest.raises(ValueError, match=r"security.protocol"):
        run_main(_copy_flow(broker, "props2", "props2", {"security.protocol": "carrier-pigeon"}))


@pytest.mark.parametrize("case, item", list(enumerate([b"no-key", (b"k", b"v", b"extra"), (b"k", 3)])))
def test_an_item_the_output_cannot_write_is_named(broker, case, item):
    create_topic(broker, f"shape-{case}", 1)
    flow = Dataflow()
    flow.input("inp", TestingInputConfig([item]))
    flow.capture(KafkaOutputConfig([broker], f"shape-{case}"))
    with pytest.raises(
        TypeError, match=r"capture #1 \(KafkaOutputConfig\): KafkaOutputConfig writes \(key, payload\) 2-tuples"
    ) as info:
        run_main(flow)
    assert repr(item)[:20] in str(info.value)


# -- where reading starts and ends ---------------------------------------------------------------


def test_starting_at_the_end_reads_only_what_comes_after(broker):
    create_topic(broker, "late", 2)
    produce(broker, "late", _numbers(50, 2))
    config = KafkaInputConfig([broker], "late", tail=True, starting_offset="end")
    reader = build_kafka_reader(config, "in", 0, 1, None)
    try:
        # Up to the end, nothing: what was there before the reader is skipped.
        items = _read_until(reader, lambda: not reader._skipping)
        assert items == []
        produce(broker, "late", [(b"new", b"1", 0), (b"new", b"2", 1)])
        items = _read_until(reader, lambda: len(got) == 2, got := [])
        assert sorted(items) == [(b"new", b"1"), (b"new", b"2")]
        assert reader.state == {0: 26, 1: 26} and not reader.exhausted  # tail=True goes on
    finally:
        reader.close()


def _read_until(reader, done, got=None) -> list:
    got = [] if got is None else got
    deadline = time.monotonic() + 30
    while not done():
        assert time.monotonic() < deadline, "the reader did not get there"
        got += reader.read(1000)
        time.sleep(0.01)
    return got


def test_starting_at_the_end_with_tail_false_reads_nothing(broker):
    create_topic(broker, "late2", 2)
    produce(broker, "late2", _numbers(50, 2))
    out: list = []
    flow = Dataflow()
    flow.input("in", KafkaInputConfig([broker], "late2", tail=False, starting_offset="end"))
    flow.capture(TestingOutputConfig(out))
    run_main(flow)
    assert out == []


def test_a_recovered_flow_continues_after_a_finished_run(broker, tmp_path):
    """The resume state is the per-partition offset: a second run reads only what came since."""
    create_topic(broker, "cont", 3)
    produce(broker, "cont", _numbers(30, 3))
    recovery = SqliteRecoveryConfig(tmp_path)

    def run() -> list:
        out: list = []
        flow = Dataflow()
        flow.input("in", KafkaInputConfig([broker], "cont", tail=False))
        flow.capture(TestingOutputConfig(out))
        run_main(flow, recovery_config=recovery)
        return out

    assert sorted(run()) == sorted((k, v) for k, v, _ in _numbers(30, 3))
    assert run() == []
    produce(broker, "cont", [(b"more", b"x", 2)])
    assert run() == [(b"more", b"x")]


def test_a_resume_state_must_be_offsets(broker):
    create_topic(broker, "grown", 3)
    config = KafkaInputConfig([broker], "grown", tail=False)
    with pytest.raises(ValueError, match="in: a Kafka input's resume state maps partitions to offsets, got 17"):
        build_kafka_reader(config, "in", 0, 2, 17)


def test_a_kafka_to_kafka_flow_grown_from_2_to_4_workers_reads_on_exactly(broker, tmp_path):
    """Recovery in Kafka; the first run reads the records there are, the grown run (4 workers,
    partitions assigned anew) reads only those written since: each partition's offset went
    to its new reader."""
    create_topic(broker, "grow-in", 3)
    create_topic(broker, "grow-out", 3)
    produce(broker, "grow-in", _numbers(300, 3))
    recovery = KafkaRecoveryConfig([broker], "grow")

    def run(procs: int, workers: int) -> None:
        flow = Dataflow()
        flow.input("in", KafkaInputConfig([broker], "grow-in", tail=False))
        flow.map(_tag)
        flow.capture(KafkaOutputConfig([broker], "grow-out"))
        spawn_cluster(flow, proc_count=procs, worker_count_per_proc=workers, recovery_config=recovery)

    run(1, 2)
    produce(broker, "grow-in", [(f"k{i}".encode(), f"v{i}".encode(), i % 3) for i in range(300, 450)])
    run(2, 2)
    got = Counter((key, value) for _, _, key, value in read_all(broker, "grow-out"))
    assert got == Counter((f"k{i}".encode(), f"v{i}!".encode()) for i in range(450))
    assert KafkaStores(recovery).inspect(3).worker_count == 4


def test_partitions_are_spread_over_workers_each_read_by_one():
    assert [list(distribute(range(3), w, 4)) for w in range(4)] == [[0], [1], [2], []]
    assert [list(distribute(range(5), w, 2)) for w in range(2)] == [[0, 2, 4], [1, 3]]


# -- the recovery store in Kafka -----------------------------------------------------------------


def _sums_flow(out: list) -> Dataflow:
    flow = Dataflow()
    flow.input("inp", TestingInputConfig([("a", 1), ("b", 2), ("a", 3)]))
    flow.stateful_map("sums", lambda: 0, lambda total, v: (total + v, total + v))
    flow.capture(TestingOutputConfig(out))
    return flow


def test_the_recovery_topics_are_made_compacted_and_hold_the_progress(broker):
    recovery = KafkaRecoveryConfig([broker], "made")
    run_main(_sums_flow([]), epoch_config=TestingEpochConfig(), recovery_config=recovery)
    admin = AdminClient({"bootstrap.servers": broker})
    topics = admin.list_topics(timeout=10).topics
    assert {"made-progress", "made-state"} <= set(topics)
    stores = KafkaStores(recovery)
    info = stores.inspect(0)
    assert info is not None and (info.worker_count, info.progress, info.step_ids) == (1, 2, ("inp", "sums"))
    assert stores.inspect(1) is None and stores.snapshotted() == [0]


def test_an_unreachable_recovery_broker_is_named():
    (port,) = free_ports(1)
    recovery = KafkaRecoveryConfig([f"127.0.0.1:{port}"], "nowhere")
    with pytest.raises(RecoveryError, match=rf"'nowhere-progress'.*127.0.0.1:{port}: cannot reach the brokers within"):
        run_main(_sums_flow([]), recovery_config=recovery)


def test_the_recovery_store_passes_its_properties_to_its_clients(broker):
    """A broker that takes only SASL or TLS can hold the recovery topics: the store's clients
    take the user's properties, and one librdkafka refuses is named with the store."""
    recovery = KafkaRecoveryConfig([broker], "props-store", {"no.such.property": "1"})
    with pytest.raises(
        ValueError, match=r"recovery store Kafka recovery topics 'props-store-progress'.*no.such.property"
    ):
        run_main(_sums_flow([]), recovery_config=recovery)
    out: list = []
    recovery = KafkaRecoveryConfig([broker], "props-store", {"client.id": "millrace-test-store"})
    run_main(_sums_flow(out), epoch_config=TestingEpochConfig(), recovery_config=recovery)
    assert out and KafkaStores(recovery).inspect(0) is not None


def test_a_staged_rescale_stays_beside_the_kafka_store_until_it_is_swapped_in(broker):
    """The two halves of a rescale in the topics: staged, the store still loads what it held
    (also when opened anew, as after a kill); swapped in, it loads the new content, and the old
    generation's records are gone."""
    stores = KafkaStores(KafkaRecoveryConfig([broker], "halves"))
    stores.check()
    worker = stores.open(0, 1, ["inp", "sums"], T0)
    assert stores.snapshotted() == []
    worker.snapshot(0, {"inp": 1}, {"sums": Chunk({"a": 1}, [], full=True)})
    assert stores.snapshotted() == [0]
    worker.snapshot(1, {"inp": 2}, {"sums": Chunk({"b": 2}, [], full=False)})
    assert worker.load(2) == ({"inp": 2}, {"sums": {"a": 1, "b": 2}})
    worker.stage_rescale(2, 1, {"inp": 2}, {"sums": {"a": 1}})
    worker.close()

    again = stores.open(0, 1, ["inp", "sums"], T0)
    assert stores.inspect(0).staged == (2, 1)
    assert again.load(2) == ({"inp": 2}, {"sums": {"a": 1, "b": 2}})
    again.commit_rescale()
    info = stores.inspect(0)
    assert (info.worker_count, info.progress, info.staged) == (2, 1, None)
    assert again.load(2) == ({"inp": 2}, {"sums": {"a": 1}})
    assert set(stores.state_of(0)) == {1}, "generation 0's records were not deleted"
    assert stores.state_of(0)[1] == again.image
    again.close()
    assert stores.open(0, 2, ["inp", "sums"], T0).load(2) == ({"inp": 2}, {"sums": {"a": 1}})


def test_a_kafka_store_forgets_what_a_restart_no_longer_needs(broker):
    stores = KafkaStores(KafkaRecoveryConfig([broker], "collect"))
    stores.check()
    worker = stores.open(0, 1, ["sums"], T0)
    for epoch in range(5):
        worker.snapshot(epoch, {}, {"sums": Chunk({"k": epoch}, [], full=epoch % 2 == 0)})
    worker.rewind(4)  # epoch 4 runs again
    worker.close()
    image = stores.state_of(0)[0]
    # Epoch 2's full chunk and epoch 3's change are what a resume at 4 needs; 4 was rewound.
    assert sorted(epoch for (_, _, epoch) in image) == [2, 3]
    assert stores.open(0, 1, ["sums"], T0).load(4) == ({}, {"sums": {"k": 3}})


def test_the_kafka_example_moves_every_record(broker, monkeypatch):
    """examples/dataflow-kafka.yaml's flow, with its brokers from the env as a pod gets them,
    run here to the end of its topic (the example tails it)."""
    example = yaml.safe_load((Path(__file__).resolve().parents[1] / "examples" / "dataflow-kafka.yaml").read_text())
    create_topic(broker, "orders", 3)
    create_topic(broker, "orders-upper", 3)
    produce(broker, "orders", _numbers(300, 3))
    monkeypatch.setenv("KAFKA_BROKERS", broker)
    monkeypatch.delenv("KAFKA_PASSWORD", raising=False)  # no Secret: no SASL
    scope: dict = {}
    exec(compile(example["spec"]["flow"]["code"], "dataflow-kafka.yaml", "exec"), scope)
    flow = scope["flow"]
    first = flow.steps[0]
    assert isinstance(first, plan.Input) and first.config.tail
    flow.steps[0] = dataclasses.replace(first, config=dataclasses.replace(first.config, tail=False))
    spawn_cluster(flow, proc_count=2, worker_count_per_proc=2)
    got = Counter((key, value) for _, _, key, value in read_all(broker, "orders-upper"))
    assert got == Counter((f"k{i}".encode(), f"V{i}".encode()) for i in range(300))


def test_an_unreachable_output_broker_is_named():
    (port,) = free_ports(1)
    flow = Dataflow()
    flow.input("inp", TestingInputConfig([(b"k", b"v")]))
    flow.capture(KafkaOutputConfig([f"127.0.0.1:{port}"], "t"))
    with pytest.raises(ConnectionError, match=rf"capture #1 .*cannot reach the Kafka brokers 127.0.0.1:{port} within"):
        run_main(flow)


def test_without_the_client_a_kafka_flow_says_which_extra_to_install(monkeypatch):
    import importlib
    import sys

    for name in [m for m in sys.modules if m.startswith("millrace.runtime.kafka")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'millrace\[kafka\]'"):
        importlib.import_module("millrace.runtime.kafka_client")
    flow = Dataflow()
    flow.input("k", KafkaInputConfig(["127.0.0.1:9"], "t"))
    flow.capture(TestingOutputConfig([]))
    with pytest.raises(ImportError, match=r"millrace\[kafka\]"):
        run_main(flow)

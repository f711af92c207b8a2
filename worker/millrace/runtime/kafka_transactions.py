"""The exactly-once writer of a :class:`~millrace.outputs.KafkaOutputConfig` (``exactly_once``):
a write-ahead sink whose records reach the topic in a Kafka transaction, committed only once
the epoch they belong to can never run again.

Why then, and not at the worker's own snapshot: a cluster resumes at the lowest epoch *every*
worker finished, so an epoch one worker snapshotted may still run again. It never does once
every worker has snapshotted it, which is what :class:`.progress.Ended` says (a worker
snapshots an epoch before it sends its ``DONE``). So:

* during epoch ``e`` the writer produces nothing; it keeps ``e``'s records, and the worker's
  snapshot of ``e`` holds them (:meth:`TransactionalKafkaSink.snapshot_state`);
* at ``Ended(e)`` it writes every epoch kept up to ``e`` in ONE transaction, which also writes
  a *commit marker* (key: the producer's ``transactional.id``, value: the run and the last
  epoch written) to the compacted topic ``{topic}-millrace-commits``; Kafka commits both or
  neither, so a ``read_committed`` reader sees the marker exactly when it sees the records;
* a restart loads the records its snapshot kept, reads its marker, and commits the epochs the
  marker does not cover (a process killed between ``Ended`` and its commit). Its
  ``init_transactions`` first aborts a transaction a killed predecessor left open, and fences
  that predecessor should it still be alive.

The ``run`` in the state and the marker tells a run from an earlier one that wrote the same
topic with the same ``transactional.id`` (a flow started again from an empty store).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from ..outputs import KafkaOutputConfig
from .errors import describe
from .kafka_client import (
    CONNECT_TIMEOUT,
    client_properties,
    confluent_kafka,
    describe_brokers,
    ensure_topics,
    read_to_end,
    refused_properties,
    topic_partitions,
    with_logger,
)
from .kafka_sink import producer_properties
from .sinks import Sink, capture_state_key

#: The marker topic of output topic ``T`` is ``T`` + this.
COMMITS_SUFFIX = "-millrace-commits"
# Seconds a commit may take before it fails the run (a broker gone mid-commit must not hang it).
COMMIT_TIMEOUT = 60.0
# A commit the broker asks to abort (a transient error) is tried this many times in all.
_ATTEMPTS = 3

#: Test-only: called as ``hook(point, transactional_id, epoch)`` at ``"commit"`` (before a
#: transaction begins), ``"in-transaction"`` (its records are sent, its marker not yet) and
#: ``"committed"``; the fault-injection tests kill the process there. ``None`` in production.
test_hook: Callable[[str, str, int], None] | None = None

# The records of one epoch, as the items came: (key, payload).
Records = list[tuple[Any, Any]]


def transactional_id(config: KafkaOutputConfig, position: int, worker_index: int) -> str:
    """The producer's ``transactional.id``: stable for a flow's capture on a worker index, so a
    restart's producer fences its predecessor and finds its marker.

    >>> transactional_id(KafkaOutputConfig(["k:9092"], "totals", exactly_once=True), 3, 1)
    'millrace-totals-3-1'
    >>> transactional_id(KafkaOutputConfig(["k:9092"], "t", {"transactional.id": "billing"}), 3, 1)
    'billing-1'
    """
    base = (config.additional_properties or {}).get("transactional.id") or f"millrace-{config.topic}-{position}"
    return f"{base}-{worker_index}"


class TransactionalKafkaSink(Sink):
    """Keeps each epoch's ``(key, payload)`` items and writes them in a transaction once every
    worker has snapshotted the epoch (module docstring)."""

    def __init__(
        self,
        step_name: str,
        config: KafkaOutputConfig,
        producer: confluent_kafka.Producer,
        txn_id: str,
        position: int,
        read_markers: Callable[[], list[tuple[bytes, bytes | None]]],
    ) -> None:
        self.step_name = step_name
        self.config = config
        self.producer = producer
        self.transactional_id = txn_id
        self.state_key = capture_state_key(position)
        self.commits_topic = config.topic + COMMITS_SUFFIX
        self.read_markers = read_markers
        self.run = uuid.uuid4().hex
        self.pending: dict[int, Records] = {}
        self.in_transaction = False

    # -- the Sink protocol -------------------------------------------------------------------

    def write(self, batch: list[Any], epoch: int) -> None:
        for item in batch:
            # Checked now: a record the producer refused at the commit would be in the
            # snapshot already, and fail every restart.
            if (
                type(item) is not tuple
                or len(item) != 2
                or not isinstance(item[0], (bytes, str, type(None)))
                or not isinstance(item[1], (bytes, str))
            ):
                raise TypeError(
                    f"{self.step_name}: KafkaOutputConfig writes (key, payload) 2-tuples of bytes or "
                    f"str (the key may be None), got {describe(item)}"
                )
        self.pending.setdefault(epoch, []).extend(batch)

    def snapshot_state(self, epoch: int) -> dict[str, Any]:
        # Only epochs up to the snapshot's: a faster peer's items of the next epoch may arrive
        # before it (progress.py), and that epoch runs again after a restart from this one.
        return {"run": self.run, "pending": {e: records for e, records in self.pending.items() if e <= epoch}}

    def resume(self, state: Any) -> None:
        if state is None:
            return
        self.run = state["run"]
        pending: dict[int, Records] = state["pending"]
        if not pending:
            return
        committed = self._committed()
        due = {e: records for e, records in pending.items() if e > committed}
        if due:
            self._commit(due)

    def ended(self, epoch: int) -> None:
        due = {e: records for e, records in self.pending.items() if e <= epoch}
        if due:
            self._commit(due)
        for e in due:
            del self.pending[e]

    def close(self) -> None:
        # A transaction left open by a failure is aborted (a restart's init would anyway).
        if self.in_transaction:
            with suppress(Exception):
                self.producer.abort_transaction(CONNECT_TIMEOUT)
        self.producer.purge()
        self.producer.flush(0)

    # -- committing --------------------------------------------------------------------------

    def _committed(self) -> int:
        """The last epoch this run's marker says was committed; -1 for none."""
        last = None
        key = self.transactional_id.encode()
        for found, value in self.read_markers():
            if found == key:
                last = value
        if last is None:
            return -1
        marker = json.loads(last)
        return int(marker["epoch"]) if marker.get("run") == self.run else -1

    def _commit(self, due: dict[int, Records]) -> None:
        """Write the records of ``due`` and the marker of its last epoch in one transaction."""
        last = max(due)
        self._hook("commit", last)
        marker = json.dumps({"run": self.run, "epoch": last}).encode()
        for attempt in range(_ATTEMPTS):
            try:
                self.producer.begin_transaction()
                self.in_transaction = True
                for epoch in sorted(due):
                    self._produce_all(due[epoch])
                # The records reach the brokers before the marker is sent. Kafka needs no such
                # order (the commit is atomic), but a broker that shows aborted records (tansu
                # 0.6.0, docs/kafka.md) would otherwise show a killed transaction's marker
                # without all its records, and the restart would not write them again.
                self._flush_all()
                self._hook("in-transaction", last)
                self._produce(self.commits_topic, marker, self.transactional_id.encode())
                self.producer.commit_transaction(COMMIT_TIMEOUT)
                self.in_transaction = False
                break
            except confluent_kafka.KafkaException as exc:
                error = exc.args[0]
                if attempt + 1 < _ATTEMPTS and error.txn_requires_abort():
                    self.producer.abort_transaction(COMMIT_TIMEOUT)
                    self.in_transaction = False
                    continue
                raise RuntimeError(
                    f"{self.step_name}: committing the output of epochs {sorted(due)} to Kafka topic "
                    f"{self.config.topic!r} on the {describe_brokers(self.config.brokers)} in "
                    f"transaction {self.transactional_id!r} failed: {error.str()}"
                ) from None
        self._hook("committed", last)

    def _flush_all(self) -> None:
        if self.producer.flush(COMMIT_TIMEOUT) > 0:
            raise confluent_kafka.KafkaException(
                confluent_kafka.KafkaError(confluent_kafka.KafkaError._TIMED_OUT, "records not sent in time")
            )

    def _produce_all(self, records: Records) -> None:
        topic = self.config.topic
        for key, value in records:
            self._produce(topic, value, key)

    def _produce(self, topic: str, value: Any, key: Any) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key)
                return
            except BufferError:
                # The producer's queue is full: let it send, then try again.
                self.producer.poll(0.05)

    def _hook(self, point: str, epoch: int) -> None:
        if test_hook is not None:
            test_hook(point, self.transactional_id, epoch)


def build_transactional_sink(
    config: KafkaOutputConfig, step_name: str, worker_index: int, position: int
) -> TransactionalKafkaSink:
    """The exactly-once writer of ``config`` for worker ``worker_index``: the brokers, the topic
    and the properties are checked, the marker topic made when missing, and the producer's
    transactions initialised (fencing a predecessor) before any item is written."""
    txn_id = transactional_id(config, position, worker_index)
    commits_topic = config.topic + COMMITS_SUFFIX

    def fail(reason: str) -> RuntimeError:
        return RuntimeError(f"{step_name}: exactly-once output to Kafka topic {config.topic!r}: {reason}")

    properties = {**producer_properties(config), "transactional.id": txn_id, "enable.idempotence": True}
    try:
        producer = confluent_kafka.Producer(with_logger(properties))
        admin = confluent_kafka.admin.AdminClient(with_logger(_admin_properties(config)))
    except confluent_kafka.KafkaException as exc:
        raise refused_properties(step_name, config.brokers, exc) from None
    topic_partitions(producer, config.brokers, config.topic, step_name)
    ensure_topics(admin, [commits_topic], fail)
    try:
        producer.init_transactions(CONNECT_TIMEOUT)
    except confluent_kafka.KafkaException as exc:
        raise fail(
            f"the {describe_brokers(config.brokers)} refuse transactions "
            f"(transactional.id {txn_id!r}): {exc.args[0].str()}"
        ) from None

    def read_markers() -> list[tuple[bytes, bytes | None]]:
        consumer = confluent_kafka.Consumer(with_logger(_marker_reader_properties(config, txn_id)))
        try:
            return read_to_end(consumer, commits_topic, fail)
        finally:
            consumer.close()

    return TransactionalKafkaSink(step_name, config, producer, txn_id, position, read_markers)


def _admin_properties(config: KafkaOutputConfig) -> dict[str, Any]:
    return client_properties(config.brokers, {}, _client_only(config), {})


def _marker_reader_properties(config: KafkaOutputConfig, txn_id: str) -> dict[str, Any]:
    return client_properties(
        config.brokers,
        # At the end of a partition the broker answers at once, not after half a second.
        {"fetch.wait.max.ms": 10},
        _client_only(config),
        {
            # A marker of a transaction not committed is not a marker.
            "isolation.level": "read_committed",
            "group.id": f"millrace-commits-{txn_id}",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
            "allow.auto.create.topics": False,
        },
    )


def _client_only(config: KafkaOutputConfig) -> dict[str, str]:
    """The user's properties a consumer or an admin client takes (the producer's own ones,
    such as ``transactional.id`` or ``linger.ms``, would be refused or warned about)."""
    producer_only = {"transactional.id", "linger.ms", "acks", "compression.type", "batch.size"}
    return {k: v for k, v in (config.additional_properties or {}).items() if k not in producer_only}

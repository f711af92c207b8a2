"""Recovery stores in Kafka (:class:`~millrace.recovery.KafkaRecoveryConfig`): two compacted
topics hold what a directory of SQLite files holds (:mod:`.store`), with the same guarantees.

``{prefix}-progress`` holds one record per worker, keyed ``worker-<index>``: its store's
metadata (format, worker count, step ids, flow start), the last epoch it finished, the
*generation* its state records belong to, and a staged rescale. ``{prefix}-state`` holds the
state records, keyed ``[worker, generation, kind, step id, epoch]`` (JSON): input states
(``"i"``) and chunks (``"c"``, see :class:`~.store.Chunk`). A record that is gone is a
tombstone (no value), which compaction eventually drops.

The progress record is the commit point, as SQLite's transaction is for a file:

* a snapshot writes its state records, waits until the brokers have them, then writes the
  progress record; a worker killed in between leaves records of an epoch its progress does not
  count, which are never loaded and which the restart's rewind deletes;
* a rescale writes the worker's new state under the next generation, then a progress record
  naming it staged; swapping it in is one progress record naming the new generation; the old
  generation's records are deleted after.

Each worker reads the topics when its store is opened (and keeps an image of its own records),
so a start costs a read of both topics from the beginning.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from ..recovery import KafkaRecoveryConfig
from .kafka_client import (
    CONNECT_TIMEOUT,
    Properties,
    client_properties,
    confluent_kafka,
    describe_brokers,
    ensure_topics,
    read_to_end,
    refused_properties,
    with_logger,
)
from .store import Chunk, RecoveryError, StoreInfo, dump_state, load_state

FORMAT_VERSION = 1
_FULL = b"F"
_PARTIAL = b"P"

Client = TypeVar("Client")

# (kind, step id, epoch) -> value, of one worker and generation.
Image = dict[tuple[str, str, int], bytes]


class KafkaStores:
    """The stores of every worker of a flow, in the topics of ``config``."""

    def __init__(self, config: KafkaRecoveryConfig) -> None:
        self.config = config
        self.brokers = config.brokers
        self.progress_topic = f"{config.topic_prefix}-progress"
        self.state_topic = f"{config.topic_prefix}-state"
        self.where = (
            f"Kafka recovery topics {self.progress_topic!r} and {self.state_topic!r} "
            f"on the {describe_brokers(self.brokers)}"
        )

    def client(self, kind: Callable[[dict[str, Any]], Client], defaults: Properties, forced: Properties) -> Client:
        """A client of ``kind`` configured with ``defaults``, the user's properties, then
        ``forced`` ones; properties librdkafka refuses are named."""
        properties = client_properties(self.brokers, defaults, self.config.additional_properties, forced)
        try:
            return kind(with_logger(properties))
        except confluent_kafka.KafkaException as exc:
            raise refused_properties(f"recovery store {self.where}", self.brokers, exc) from None

    # -- the Stores protocol -----------------------------------------------------------------

    def check(self) -> None:
        """Create the topics (compacted, one partition) unless they exist."""
        admin = self.client(confluent_kafka.admin.AdminClient, {}, {})
        ensure_topics(admin, [self.progress_topic, self.state_topic], self._failure)

    def _failure(self, reason: str) -> RecoveryError:
        return RecoveryError(f"{self.where}: {reason}")

    def inspect(self, worker_index: int) -> StoreInfo | None:
        meta = self.progress().get(worker_index)
        return None if meta is None else self._info(worker_index, meta)

    def left_empty(self, worker_index: int) -> bool:
        return False  # no progress record, nothing: the progress record is the commit point

    def snapshotted(self) -> list[int]:
        return sorted(w for w, meta in self.progress().items() if _holds_a_snapshot(meta))

    def store_name(self, worker_index: int) -> str:
        return f"worker-{worker_index}"

    def open(
        self,
        worker_index: int,
        worker_count: int,
        step_ids: Sequence[str],
        flow_start: datetime,
        run: str | None = None,
    ) -> KafkaWorkerStore:
        return KafkaWorkerStore(self, worker_index, worker_count, step_ids, flow_start, run)

    # -- reading the topics ------------------------------------------------------------------

    def progress(self) -> dict[int, dict[str, Any]]:
        """Every worker's progress record, as the topic has it now."""
        found: dict[int, dict[str, Any]] = {}
        for key, value in self._read(self.progress_topic):
            worker = _worker_of(key)
            if worker is None:
                continue
            if value is None:
                found.pop(worker, None)
            else:
                try:
                    found[worker] = json.loads(value)
                except ValueError:
                    raise RecoveryError(f"{self.where}: the progress record of worker {worker} is damaged") from None
        return found

    def state_of(self, worker_index: int) -> dict[int, Image]:
        """Worker ``worker_index``'s state records, per generation."""
        found: dict[int, Image] = {}
        for key, value in self._read(self.state_topic):
            try:
                worker, generation, kind, step_id, epoch = json.loads(key)
            except (TypeError, ValueError):
                continue  # not a record of millrace's
            if worker != worker_index:
                continue
            image = found.setdefault(generation, {})
            if value is None:
                image.pop((kind, step_id, epoch), None)
            else:
                image[(kind, step_id, epoch)] = value
        return {generation: image for generation, image in found.items() if image}

    def _read(self, topic: str) -> list[tuple[bytes, bytes | None]]:
        """Every record of ``topic`` from the beginning to the end of each partition (learnt
        from the partition EOF, not from watermarks)."""
        consumer = self.client(
            confluent_kafka.Consumer,
            # At the end of a partition the broker answers at once, not after the default
            # half second: a start reads both topics to their ends.
            {"fetch.wait.max.ms": 10},
            {
                "group.id": f"millrace-recovery-{self.config.topic_prefix}",
                "enable.partition.eof": True,
                "enable.auto.commit": False,
                "allow.auto.create.topics": False,
            },
        )
        try:
            return read_to_end(consumer, topic, self._failure)
        finally:
            consumer.close()

    def _info(self, worker_index: int, meta: dict[str, Any]) -> StoreInfo:
        where = f"{self.where}, {self.store_name(worker_index)}"
        version = meta.get("format")
        if version != FORMAT_VERSION:
            raise RecoveryError(
                f"recovery store {where} has format version {version}, but this millrace reads "
                f"version {FORMAT_VERSION}; it was left as it is"
            )
        try:
            staged = meta["staged"]
            return StoreInfo(
                path=where,
                worker_count=int(meta["worker_count"]),
                step_ids=tuple(meta["step_ids"]),
                flow_start=datetime.fromisoformat(meta["flow_start"]),
                progress=None if meta["progress"] is None else int(meta["progress"]),
                staged=None if staged is None else (int(staged[0]), int(staged[1])),
                run=None if meta.get("run") is None else str(meta["run"]),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise RecoveryError(f"recovery store {where} has damaged metadata ({exc!r})") from None


def _holds_a_snapshot(meta: dict[str, Any]) -> bool:
    """Whether a progress record counts a finished epoch (epoch 0 is one).

    >>> [_holds_a_snapshot({"progress": p}) for p in (None, -1, 0, 3)]
    [False, False, True, True]
    """
    progress = meta.get("progress")
    return progress is not None and progress >= 0


def _worker_of(key: bytes) -> int | None:
    """The worker of a progress record's key ``worker-<index>``.

    >>> _worker_of(b"worker-3"), _worker_of(b"other")
    (3, None)
    """
    prefix, _, number = key.decode(errors="replace").partition("-")
    return int(number) if prefix == "worker" and number.isdigit() else None


class KafkaWorkerStore:
    """A worker's store in the topics, open for writing; what :class:`~.store.WorkerStore`
    does for a SQLite file, with an image of its own records in memory."""

    def __init__(
        self,
        stores: KafkaStores,
        worker_index: int,
        worker_count: int,
        step_ids: Sequence[str],
        flow_start: datetime,
        run: str | None = None,
    ) -> None:
        self.stores = stores
        self.worker_index = worker_index
        self.where = f"{stores.where}, {stores.store_name(worker_index)}"
        self.failure: confluent_kafka.KafkaError | None = None
        self.producer = stores.client(
            confluent_kafka.Producer,
            {"linger.ms": 1},
            {"acks": "all", "enable.idempotence": True, "allow.auto.create.topics": False},
        )
        meta = stores.progress().get(worker_index)
        if meta is None:
            meta = {
                "format": FORMAT_VERSION,
                "worker_count": worker_count,
                "step_ids": list(step_ids),
                "flow_start": flow_start.isoformat(),
                "progress": None,
                "generation": 0,
                "staged": None,
                "run": run,
            }
            self._put_meta(meta)
        else:
            stores._info(worker_index, meta)  # checks the format
            if run is not None and meta.get("run") != run:
                # It joins this run (resume refuses stores of two runs that hold a snapshot).
                meta["run"] = run
                self._put_meta(meta)
        self.meta = meta
        images = stores.state_of(worker_index)
        self.image: Image = images.pop(self._generation(), {})
        self.staged: Image = images.pop(self._staged_generation(), {}) if meta["staged"] else {}
        # Records of other generations: a swap or a drop stopped before it deleted them.
        for generation, image in images.items():
            self._delete(generation, image)
        self._flush()

    # -- the WorkerStore protocol ------------------------------------------------------------

    def close(self) -> None:
        try:
            self._flush()
        except RecoveryError:
            pass  # only deletions can be left; the next start deletes them again

    def load(self, resume_epoch: int) -> tuple[dict[str, Any], dict[str, dict[Any, Any]]]:
        """Input states and keyed states as of the end of epoch ``resume_epoch - 1``."""
        last = resume_epoch - 1
        inputs = {
            step_id: load_state(v) for (kind, step_id, epoch), v in self.image.items() if kind == "i" and epoch == last
        }
        chunks: dict[str, list[tuple[int, bytes]]] = {}
        for (kind, step_id, epoch), value in self.image.items():
            if kind == "c" and epoch <= last:
                chunks.setdefault(step_id, []).append((epoch, value))
        keyed: dict[str, dict[Any, Any]] = {}
        for step_id, entries in chunks.items():
            entries.sort()
            fulls = [i for i, (_, value) in enumerate(entries) if value[:1] == _FULL]
            states: dict[Any, Any] = {}
            for _, value in entries[fulls[-1] if fulls else 0 :]:
                changed, forgotten = load_state(value[1:])
                if value[:1] == _FULL:
                    states = dict(changed)
                    continue
                states.update(changed)
                for key in forgotten:
                    states.pop(key, None)
            if states:
                keyed[step_id] = states
        return inputs, keyed

    def rewind(self, resume_epoch: int) -> None:
        """Forget what this worker wrote for ``resume_epoch`` and later (see
        :meth:`.store.WorkerStore.rewind`)."""
        if self.meta["progress"] is not None and self.meta["progress"] >= resume_epoch:
            self.meta = {**self.meta, "progress": resume_epoch - 1}
            self._put_meta(self.meta)
            self._flush()
        stale = {name: value for name, value in self.image.items() if name[2] >= resume_epoch}
        self._delete(self._generation(), stale)
        for name in stale:
            del self.image[name]
        self._flush()

    def snapshot(self, epoch: int, inputs: dict[str, Any], chunks: dict[str, Chunk]) -> int:
        """Record the end of ``epoch``: the state records, then (once the brokers have them)
        the progress record; then delete what no restart needs (see
        :meth:`.store.WorkerStore.snapshot`). Returns the size of the state records, in bytes."""
        records = _records(epoch, inputs, chunks)
        self._put(self._generation(), records)
        self._flush()
        self.image.update(records)
        self.meta = {**self.meta, "progress": epoch}
        self._put_meta(self.meta)
        self._flush()
        self._collect(epoch - 1)
        return sum(len(value) for value in records.values())

    def rescale(self, worker_count: int, epoch: int, inputs: dict[str, Any], keyed: dict[str, dict[Any, Any]]) -> None:
        self.stage_rescale(worker_count, epoch, inputs, keyed)
        self.commit_rescale()

    def stage_rescale(
        self, worker_count: int, epoch: int, inputs: dict[str, Any], keyed: dict[str, dict[Any, Any]]
    ) -> None:
        """Write this worker's store for ``worker_count`` workers as of ``epoch`` under the next
        generation, then a progress record naming it staged."""
        self._delete(self._generation() + 1, self.staged)
        chunks = {step_id: Chunk(states, [], full=True) for step_id, states in keyed.items()}
        self.staged = _records(epoch, inputs, chunks)
        self._put(self._generation() + 1, self.staged)
        self._flush()
        self.meta = {**self.meta, "staged": [worker_count, epoch, self._generation() + 1]}
        self._put_meta(self.meta)
        self._flush()

    def commit_rescale(self) -> None:
        """Swap the staged generation in: one progress record; the old one is deleted after."""
        staged = self.meta.get("staged")
        if staged is None:
            raise RecoveryError(f"recovery store {self.where} holds no staged rescale to commit")
        count, epoch, generation = staged
        old_generation, old_image = self._generation(), self.image
        self.meta = {**self.meta, "worker_count": count, "progress": epoch, "generation": generation, "staged": None}
        self._put_meta(self.meta)
        self._flush()
        self.image, self.staged = self.staged, {}
        self._delete(old_generation, old_image)
        self._flush()

    def drop_rescale(self) -> None:
        """Forget a staged rescale; the store's content stays as it is."""
        if self.meta.get("staged") is None:
            return
        staged_generation = self._staged_generation()
        self.meta = {**self.meta, "staged": None}
        self._put_meta(self.meta)
        self._flush()
        self._delete(staged_generation, self.staged)
        self.staged = {}
        self._flush()

    # -- writing -----------------------------------------------------------------------------

    def _generation(self) -> int:
        return int(self.meta["generation"])

    def _staged_generation(self) -> int:
        return int(self.meta["staged"][2])

    def _collect(self, settled: int) -> None:
        """Delete the chunks older than each step's newest full chunk up to ``settled`` and the
        input states before ``settled``: no restart resumes before ``settled + 1``."""
        newest_full: dict[str, int] = {}
        for (kind, step_id, epoch), value in self.image.items():
            if kind == "c" and value[:1] == _FULL and epoch <= settled:
                newest_full[step_id] = max(epoch, newest_full.get(step_id, -1))
        gone = {
            name: value
            for name, value in self.image.items()
            if (name[0] == "c" and name[2] < newest_full.get(name[1], -1)) or (name[0] == "i" and name[2] < settled)
        }
        self._delete(self._generation(), gone)
        for name in gone:
            del self.image[name]

    def _key(self, generation: int, name: tuple[str, str, int]) -> bytes:
        kind, step_id, epoch = name
        return json.dumps([self.worker_index, generation, kind, step_id, epoch]).encode()

    def _put(self, generation: int, records: Image) -> None:
        for name, value in records.items():
            self._produce(self.stores.state_topic, self._key(generation, name), value)

    def _delete(self, generation: int, records: Iterable[tuple[str, str, int]]) -> None:
        for name in records:
            self._produce(self.stores.state_topic, self._key(generation, name), None)

    def _put_meta(self, meta: dict[str, Any]) -> None:
        key = self.stores.store_name(self.worker_index).encode()
        self._produce(self.stores.progress_topic, key, json.dumps(meta).encode())

    def _produce(self, topic: str, key: bytes, value: bytes | None) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, on_delivery=self._delivered)
                return
            except BufferError:
                self.producer.poll(0.05)

    def _delivered(self, error: confluent_kafka.KafkaError | None, _message: Any) -> None:
        if error is not None and self.failure is None:
            self.failure = error

    def _flush(self) -> None:
        """Wait until the brokers have every record written so far."""
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while self.producer.flush(1.0) > 0:
            if self.failure is None and time.monotonic() > deadline:
                raise RecoveryError(
                    f"recovery store {self.where}: the brokers took no record for {CONNECT_TIMEOUT:g} s"
                )
        if self.failure is not None:
            raise RecoveryError(f"recovery store {self.where}: a write failed: {self.failure.str()}")


def _records(epoch: int, inputs: dict[str, Any], chunks: dict[str, Chunk]) -> Image:
    records: Image = {("i", step_id, epoch): dump_state(state) for step_id, state in inputs.items()}
    for step_id, chunk in chunks.items():
        flag = _FULL if chunk.full else _PARTIAL
        records[("c", step_id, epoch)] = flag + dump_state((chunk.changed, chunk.forgotten))
    return records

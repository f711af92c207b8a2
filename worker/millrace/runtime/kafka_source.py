"""The reader of a :class:`~millrace.inputs.KafkaInputConfig`: one worker's share of a topic's
partitions, read through one assigned consumer.

Partitions are assigned, never joined through a consumer group: partition ``p`` of the topic's
sorted partitions is read by worker ``p``-th mod the worker count (:func:`~millrace.inputs.distribute`),
so each is read by exactly one worker, and where every worker is comes from the recovery store,
not from committed group offsets. The resume state is ``{partition: next offset}``.

Where a partition ends is learnt from the client's partition EOF, not from the brokers'
watermarks (some brokers answer ListOffsets with a stale high watermark; tansu 0.6.0 does): with
``tail=False`` a partition is done at its first EOF, and a partition that starts at ``"end"``
skips what comes before its first EOF.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..inputs import KafkaInputConfig, distribute
from .errors import describe
from .kafka_client import (
    client_properties,
    confluent_kafka,
    describe_brokers,
    refused_properties,
    topic_partitions,
    with_logger,
)
from .sources import Reader

_PARTITION_EOF = confluent_kafka.KafkaError._PARTITION_EOF
# The client retries these by itself: a broker that went away for a while, a leader moving.
_TRANSIENT = frozenset(
    (
        confluent_kafka.KafkaError._TRANSPORT,
        confluent_kafka.KafkaError._ALL_BROKERS_DOWN,
        confluent_kafka.KafkaError.NOT_LEADER_FOR_PARTITION,
        confluent_kafka.KafkaError.LEADER_NOT_AVAILABLE,
    )
)


def consumer_properties(config: KafkaInputConfig) -> dict[str, Any]:
    """The consumer's configuration for ``config`` (see :func:`.kafka_client.client_properties`)."""
    return client_properties(
        config.brokers,
        {
            # librdkafka wants a group id even when nothing joins the group.
            "group.id": f"millrace-{config.topic}",
            # An offset the broker no longer holds is an error, not a silent jump.
            "auto.offset.reset": "error",
        },
        config.additional_properties,
        {
            "enable.partition.eof": True,
            # Offsets live in the recovery store; the group is never joined.
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # Asking for a missing topic's metadata must not create it.
            "allow.auto.create.topics": False,
        },
    )


class KafkaReader(Reader):
    """Reads the partitions ``offsets`` names, each from its offset (``None``: from
    ``starting_offset``); the state is the next offset of every partition that has one."""

    def __init__(
        self,
        name: str,
        config: KafkaInputConfig,
        consumer: confluent_kafka.Consumer,
        offsets: dict[int, int | None],
    ) -> None:
        self.name = name
        self._config = config
        self._consumer = consumer
        self._tail = config.tail
        self._offsets: dict[int, int] = {p: o for p, o in offsets.items() if o is not None}
        # Partitions that start at "end" and drop what comes before their first EOF.
        self._skipping = {p for p, o in offsets.items() if o is None and config.starting_offset == "end"}
        self._open = set(offsets)
        if not offsets:
            self.exhausted = True
            return
        start = confluent_kafka.OFFSET_END if config.starting_offset == "end" else confluent_kafka.OFFSET_BEGINNING
        consumer.assign(
            [
                confluent_kafka.TopicPartition(config.topic, p, start if o is None else o)
                for p, o in sorted(offsets.items())
            ]
        )

    @property
    def state(self) -> dict[int, int]:
        return dict(self._offsets)

    def read(self, limit: int) -> list[Any]:
        if self.exhausted:
            return []
        # Never blocks: what the client has fetched in the background, up to ``limit``.
        messages = self._consumer.consume(num_messages=max(1, limit), timeout=0)
        items: list[Any] = []
        offsets = self._offsets
        for message in messages:
            error = message.error()
            partition = message.partition()
            if error is not None:
                self._on_error(error, partition, message.offset())
                continue
            if partition in self._skipping or partition not in self._open:
                continue
            items.append((message.key(), message.value()))
            offsets[partition] = message.offset() + 1  # type: ignore[operator]
        return items

    def _on_error(self, error: confluent_kafka.KafkaError, partition: int | None, offset: int | None) -> None:
        code = error.code()
        if code == _PARTITION_EOF:
            assert partition is not None and offset is not None
            if partition in self._skipping:
                self._skipping.discard(partition)
                self._offsets[partition] = offset
            if not self._tail and partition in self._open:
                self._open.discard(partition)
                self._offsets[partition] = offset
                self._consumer.incremental_unassign([confluent_kafka.TopicPartition(self._config.topic, partition)])
                if not self._open:
                    self.exhausted = True
            return
        if code in _TRANSIENT and not error.fatal():
            return
        where = "" if partition is None else f" partition {partition}"
        raise RuntimeError(
            f"{self.name}: reading Kafka topic {self._config.topic!r}{where} from the "
            f"{describe_brokers(self._config.brokers)} failed: {error.str()}"
        )

    def close(self) -> None:
        self._consumer.close()


def resume_offsets(name: str, mine: list[int], resume_state: Any) -> dict[int, int | None]:
    """Where each of the partitions ``mine`` resumes (``None``: at the configured start), from
    a resume state (which may hold other partitions too: a grown cluster gives each worker
    every old worker's offsets); a :class:`ValueError` naming ``name`` when it is not one.

    >>> resume_offsets("in", [0, 2], {0: 17, 1: 4})
    {0: 17, 2: None}
    >>> resume_offsets("in", [0], 17)
    Traceback (most recent call last):
    ...
    ValueError: in: a Kafka input's resume state maps partitions to offsets, got 17
    """
    if resume_state is None:
        return dict.fromkeys(mine)
    if not isinstance(resume_state, dict) or not all(
        type(p) is int and type(o) is int and o >= 0 for p, o in resume_state.items()
    ):
        raise ValueError(
            f"{name}: a Kafka input's resume state maps partitions to offsets, got {describe(resume_state)}"
        )
    return {p: resume_state.get(p) for p in mine}


def build_kafka_reader(
    config: KafkaInputConfig,
    name: str,
    worker_index: int,
    worker_count: int,
    resume_state: Any,
    make_consumer: Callable[[dict[str, Any]], confluent_kafka.Consumer] = confluent_kafka.Consumer,
) -> KafkaReader:
    """The reader of ``config`` for one worker; the brokers, the topic and the properties are
    checked here, before any item is read (errors name the step ``name``)."""
    try:
        consumer = make_consumer(with_logger(consumer_properties(config)))
    except confluent_kafka.KafkaException as exc:
        raise refused_properties(name, config.brokers, exc) from None
    try:
        partitions = topic_partitions(consumer, config.brokers, config.topic, name)
        mine = list(distribute(partitions, worker_index, worker_count))
        return KafkaReader(name, config, consumer, resume_offsets(name, mine, resume_state))
    except BaseException:
        consumer.close()
        raise

"""What the Kafka input, output and recovery store share: the client library (confluent-kafka,
the optional extra ``millrace[kafka]``), client settings, and the checks that turn a broker
that cannot be reached, a topic that does not exist or a property the client refuses into an
error naming it, within :data:`CONNECT_TIMEOUT`, before any item moves.

Only the runtime imports this module, and only when a flow uses Kafka: a flow without Kafka
runs without the client installed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# The Kafka modules of the runtime import the client from here, so that its absence is this
# error wherever a flow first needs it.
try:
    import confluent_kafka as confluent_kafka
    import confluent_kafka.admin
    import confluent_kafka.cimpl
except ImportError as exc:
    raise ImportError(
        "Kafka inputs, outputs and recovery need the Kafka client: pip install 'millrace[kafka]'"
    ) from exc

# Seconds a Kafka input, output or store waits for the brokers' metadata at start. librdkafka
# retries a broker it cannot reach for ever; a flow pointed at a wrong address fails instead.
CONNECT_TIMEOUT = 10.0

LOGGER = logging.getLogger("millrace.kafka")

Properties = dict[str, str | int | float | bool]


def client_properties(
    brokers: Sequence[str],
    defaults: Mapping[str, str | int | float | bool],
    additional: Mapping[str, str] | None,
    forced: Mapping[str, str | int | float | bool],
) -> Properties:
    """The client's configuration: ``defaults``, then the user's ``additional`` properties
    (SASL, TLS, tuning), then ``forced`` ones the engine's semantics rest on.

    >>> client_properties(["a:9092", "b:9092"], {"linger.ms": 5}, {"linger.ms": "50"}, {"acks": "all"})
    {'linger.ms': '50', 'acks': 'all', 'bootstrap.servers': 'a:9092,b:9092'}
    """
    properties: Properties = dict(defaults)
    properties.update(additional or {})
    properties.update(forced)
    properties["bootstrap.servers"] = ",".join(brokers)
    return properties


def with_logger(properties: Properties) -> dict[str, Any]:
    """``properties`` with librdkafka's log sent to the ``millrace.kafka`` logger instead of
    straight to stderr (a broker that cannot be reached logs a line every few milliseconds)."""
    return {**properties, "logger": LOGGER}


def _reason(exc: confluent_kafka.KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    return error.str() if isinstance(error, confluent_kafka.KafkaError) else str(exc)


def describe_brokers(brokers: Sequence[str]) -> str:
    """``brokers`` for an error message.

    >>> describe_brokers(["a:9092", "b:9092"])
    'Kafka brokers a:9092,b:9092'
    """
    return f"Kafka brokers {','.join(brokers)}"


def refused_properties(what: str, brokers: Sequence[str], exc: confluent_kafka.KafkaException) -> ValueError:
    """The error for client properties librdkafka refuses (it names the property)."""
    return ValueError(
        f"{what}: the Kafka client refuses its properties for {describe_brokers(brokers)}: {_reason(exc)}"
    )


def topic_partitions(
    client: confluent_kafka.Consumer | confluent_kafka.Producer,
    brokers: Sequence[str],
    topic: str,
    what: str,
    timeout: float = CONNECT_TIMEOUT,
) -> list[int]:
    """The partition ids of ``topic``, asked of the brokers within ``timeout`` seconds.

    Raises :class:`ConnectionError` when no broker answers, and :class:`LookupError` when the
    topic does not exist; both name the brokers, the topic and ``what`` asks (a step). The
    client must be made with ``allow.auto.create.topics`` false, or asking would create it.
    """
    try:
        metadata = client.list_topics(topic, timeout=timeout)
    except confluent_kafka.KafkaException as exc:
        raise ConnectionError(
            f"{what}: cannot reach the {describe_brokers(brokers)} within {timeout:g} s "
            f"to read topic {topic!r}: {_reason(exc)}"
        ) from None
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        reason = "it is not there" if found is None or found.error is None else found.error.str()
        raise LookupError(
            f"{what}: Kafka topic {topic!r} does not exist on the {describe_brokers(brokers)} "
            f"({reason}); create it first"
        )
    return sorted(found.partitions)


def ensure_topics(
    admin: confluent_kafka.admin.AdminClient, topics: Sequence[str], fail: Callable[[str], Exception]
) -> None:
    """Create those of ``topics`` that do not exist: compacted, one partition (millrace's own
    bookkeeping topics). ``fail(reason)`` is the error to raise."""
    try:
        existing = admin.list_topics(timeout=CONNECT_TIMEOUT).topics
    except confluent_kafka.KafkaException as exc:
        raise fail(f"cannot reach the brokers within {CONNECT_TIMEOUT:g} s: {_reason(exc)}") from None
    missing = [topic for topic in topics if topic not in existing]
    if not missing:
        return
    new = [confluent_kafka.cimpl.NewTopic(topic, 1, config={"cleanup.policy": "compact"}) for topic in missing]
    for topic, future in admin.create_topics(new, request_timeout=CONNECT_TIMEOUT).items():
        try:
            future.result(timeout=CONNECT_TIMEOUT)
        except confluent_kafka.KafkaException as exc:
            error = exc.args[0]
            if error.code() != confluent_kafka.KafkaError.TOPIC_ALREADY_EXISTS:  # another worker's
                raise fail(f"cannot create topic {topic!r}: {error.str()}") from None


def read_to_end(
    consumer: confluent_kafka.Consumer, topic: str, fail: Callable[[str], Exception]
) -> list[tuple[bytes, bytes | None]]:
    """Every keyed record of ``topic`` from the beginning to the end of each partition, as
    ``(key, value)``. The end is learnt from the partition EOF (the consumer needs
    ``enable.partition.eof``), not from watermarks, which tansu answers wrong. ``fail(reason)``
    is the error to raise; a read that stalls for :data:`CONNECT_TIMEOUT` fails."""
    try:
        metadata = consumer.list_topics(topic, timeout=CONNECT_TIMEOUT)
    except confluent_kafka.KafkaException as exc:
        raise fail(f"cannot read topic {topic!r}: {_reason(exc)}") from None
    described = metadata.topics.get(topic)
    if described is None or described.error is not None:
        raise fail(f"topic {topic!r} is missing")
    partitions = set(described.partitions)
    consumer.assign([confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in partitions])
    records: list[tuple[bytes, bytes | None]] = []
    quiet_since = time.monotonic()
    while partitions:
        messages = consumer.consume(10_000, 0.1)
        if messages:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > CONNECT_TIMEOUT:
            raise fail(
                f"reading topic {topic!r} stalled for {CONNECT_TIMEOUT:g} s "
                f"before the end of partitions {sorted(partitions)}"
            )
        for message in messages:
            error = message.error()
            if error is None:
                key = message.key()
                if key is not None:
                    records.append((key, message.value()))
            elif error.code() == confluent_kafka.KafkaError._PARTITION_EOF:
                partitions.discard(message.partition())
            elif error.fatal() or not error.retriable():
                raise fail(f"reading topic {topic!r} failed: {error.str()}")
    return records

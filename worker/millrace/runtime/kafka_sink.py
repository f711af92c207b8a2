"""The writer of a :class:`~millrace.outputs.KafkaOutputConfig`: one producer per worker.

Items are handed to the producer as they come (it batches and sends them in the background);
:meth:`KafkaSink.flush` waits until the brokers have acknowledged every one, and the worker
calls it at the end of each epoch before that epoch's snapshot is written, so an epoch the
recovery store records as complete has all its output in the brokers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..outputs import KafkaOutputConfig
from .errors import describe
from .kafka_client import (
    client_properties,
    confluent_kafka,
    describe_brokers,
    refused_properties,
    topic_partitions,
    with_logger,
)
from .sinks import Sink

# How long one wait for the producer's queue to drain lasts before the wait is asked again.
_FLUSH_SLICE = 1.0


def producer_properties(config: KafkaOutputConfig) -> dict[str, Any]:
    """The producer's configuration for ``config``."""
    return client_properties(
        config.brokers,
        {
            # Batches of a few milliseconds: throughput without holding an epoch's end back.
            "linger.ms": 5,
            # Every in-sync replica has the record before it counts as delivered.
            "acks": "all",
        },
        config.additional_properties,
        # Asking for a missing topic's metadata must not create it.
        {"allow.auto.create.topics": False},
    )


class KafkaSink(Sink):
    """Produces ``(key, payload)`` items to one topic."""

    def __init__(self, step_name: str, config: KafkaOutputConfig, producer: confluent_kafka.Producer) -> None:
        self.step_name = step_name
        self.config = config
        self.producer = producer
        self.failure: confluent_kafka.KafkaError | None = None

    def _delivered(self, error: confluent_kafka.KafkaError | None, _message: Any) -> None:
        if error is not None and self.failure is None:
            self.failure = error

    def write(self, batch: list[Any], epoch: int) -> None:
        produce = self.producer.produce
        topic = self.config.topic
        on_delivery = self._delivered
        for item in batch:
            if type(item) is not tuple or len(item) != 2:
                raise self._bad_item(item)
            key, value = item
            while True:
                try:
                    produce(topic, value, key, on_delivery=on_delivery)
                    break
                except BufferError:
                    # The producer's queue is full: let it send, then try again.
                    self.producer.poll(0.05)
                except TypeError:
                    raise self._bad_item(item) from None
        self.producer.poll(0)
        self._check()

    def _bad_item(self, item: Any) -> TypeError:
        return TypeError(
            f"{self.step_name}: KafkaOutputConfig writes (key, payload) 2-tuples of bytes or str "
            f"(the key may be None), got {describe(item)}"
        )

    def flush(self, epoch: int) -> None:
        while self.producer.flush(_FLUSH_SLICE) > 0:
            self._check()
        self._check()

    def _check(self) -> None:
        if self.failure is not None:
            raise RuntimeError(
                f"{self.step_name}: writing to Kafka topic {self.config.topic!r} on the "
                f"{describe_brokers(self.config.brokers)} failed: {self.failure.str()}"
            )

    def close(self) -> None:
        # What is still queued is of an epoch that did not finish; a restart writes it again.
        self.producer.purge()
        self.producer.flush(0)


def build_kafka_sink(
    config: KafkaOutputConfig,
    step_name: str,
    make_producer: Callable[[dict[str, Any]], confluent_kafka.Producer] = confluent_kafka.Producer,
) -> KafkaSink:
    """The writer of ``config`` for one worker; the brokers, the topic and the properties are
    checked here, before any item is written (errors name the step)."""
    try:
        producer = make_producer(with_logger(producer_properties(config)))
    except confluent_kafka.KafkaException as exc:
        raise refused_properties(step_name, config.brokers, exc) from None
    topic_partitions(producer, config.brokers, config.topic, step_name)
    return KafkaSink(step_name, config, producer)

"""Where items go: output configurations for :meth:`Dataflow.capture`.

A capture writes each item on the worker that holds it and passes the item on, so a flow may
capture in the middle as well as at the end.
"""

from __future__ import annotations

from collections.abc import Callable, MutableSequence
from dataclasses import dataclass, field
from typing import Any

from .common.fields import check_callable, set_field

__all__ = [
    "OutputConfig",
    "ManualOutputConfig",
    "ManualEpochOutputConfig",
    "StdOutputConfig",
    "TestingOutputConfig",
    "TestingEpochOutputConfig",
    "KafkaOutputConfig",
]

#: ``output_builder(worker_index, worker_count)`` returning a callable that takes each item.
OutputBuilder = Callable[[int, int], Callable[[Any], Any]]


@dataclass(frozen=True)
class OutputConfig:
    """Base class of every output configuration.

    Configurations are frozen dataclasses: equal when of the same class with equal fields, and
    picklable (a flow travels to other processes with cloudpickle).
    """


@dataclass(frozen=True)
class ManualOutputConfig(OutputConfig):
    """Items go to a callable that ``output_builder(worker_index, worker_count)`` returns.

    >>> from millrace.dataflow import Dataflow
    >>> from millrace.execution import run_main
    >>> from millrace.inputs import TestingInputConfig
    >>> flow = Dataflow()
    >>> flow.input("inp", TestingInputConfig(["a", "b"]))
    >>> flow.capture(ManualOutputConfig(lambda worker_index, worker_count: print))
    >>> run_main(flow)
    a
    b

    With ``batched=True`` (beyond the 0.15 API) the callable receives lists of items instead,
    as the worker has them: each list non-empty, of one epoch, in the order the items came,
    and the caller's to keep. Destinations that write in bulk anyway (a file, a database's
    ``executemany``, a client's batch call) save a call per item.

    >>> from millrace.inputs import ManualInputConfig
    >>> def blocks(worker_index, worker_count, resume_state):
    ...     yield 1, ["a", "b", "c"]
    ...     yield 2, ["d"]
    >>> flow = Dataflow()
    >>> flow.input("inp", ManualInputConfig(blocks, batched=True))
    >>> flow.capture(ManualOutputConfig(lambda worker_index, worker_count: print, batched=True))
    >>> run_main(flow)
    ['a', 'b', 'c']
    ['d']
    """

    output_builder: OutputBuilder
    batched: bool = False

    def __post_init__(self) -> None:
        check_callable(self, "output_builder")
        if type(self.batched) is not bool:
            raise TypeError(f"{type(self).__name__} batched must be True or False, got {self.batched!r}")


@dataclass(frozen=True)
class ManualEpochOutputConfig(ManualOutputConfig):
    """Like :class:`ManualOutputConfig`, but the callable receives ``(epoch, item)``.

    >>> from millrace.dataflow import Dataflow
    >>> from millrace.execution import run_main, TestingEpochConfig
    >>> from millrace.inputs import TestingInputConfig
    >>> flow = Dataflow()
    >>> flow.input("inp", TestingInputConfig(["a", "b"]))
    >>> flow.capture(ManualEpochOutputConfig(lambda worker_index, worker_count: print))
    >>> run_main(flow, epoch_config=TestingEpochConfig())
    (0, 'a')
    (1, 'b')

    With ``batched=True``, ``(epoch, items)`` with ``items`` a list, as for
    :class:`ManualOutputConfig`.
    """


@dataclass(frozen=True)
class StdOutputConfig(OutputConfig):
    """Print each item to standard output, one line per item.

    >>> from millrace.dataflow import Dataflow
    >>> from millrace.execution import run_main
    >>> from millrace.inputs import TestingInputConfig
    >>> flow = Dataflow()
    >>> flow.input("inp", TestingInputConfig([("a", 1)]))
    >>> flow.capture(StdOutputConfig())
    >>> run_main(flow)
    ('a', 1)
    """


# Not a generated __eq__: two lists of equal items are still two destinations.
@dataclass(frozen=True, eq=False)
class TestingOutputConfig(OutputConfig):
    """Append each item to ``out``: a list, or a multiprocessing ``Manager().list()`` proxy
    when the flow runs in several processes.

    >>> from millrace.dataflow import Dataflow
    >>> from millrace.execution import run_main
    >>> from millrace.inputs import TestingInputConfig
    >>> out = []
    >>> flow = Dataflow()
    >>> flow.input("inp", TestingInputConfig(range(3)))
    >>> flow.capture(TestingOutputConfig(out))
    >>> run_main(flow)
    >>> out
    [0, 1, 2]
    """

    __test__ = False

    out: MutableSequence[Any]

    def __post_init__(self) -> None:
        if not (hasattr(self.out, "append") and hasattr(self.out, "extend")):
            raise TypeError(f"{type(self).__name__} needs a list to append to, got {self.out!r}")

    def __repr__(self) -> str:
        # The items may be many, and a Manager list proxy's repr is a round trip to the manager.
        return f"{type(self).__name__}(<list of {len(self.out)}>)"

    def __eq__(self, other: object) -> bool:
        """The same when appending to the same list."""
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, TestingOutputConfig)
        return self.out is other.out

    def __hash__(self) -> int:
        return hash((type(self), id(self.out)))


@dataclass(frozen=True, eq=False, repr=False)  # TestingOutputConfig's
class TestingEpochOutputConfig(TestingOutputConfig):
    """Append ``(epoch, item)`` for each item to ``out``.

    >>> from millrace.dataflow import Dataflow
    >>> from millrace.execution import run_main, TestingEpochConfig
    >>> from millrace.inputs import TestingInputConfig
    >>> out = []
    >>> flow = Dataflow()
    >>> flow.input("inp", TestingInputConfig("ab"))
    >>> flow.capture(TestingEpochOutputConfig(out))
    >>> run_main(flow, epoch_config=TestingEpochConfig())
    >>> out
    [(0, 'a'), (1, 'b')]
    """

    __test__ = False


@dataclass(frozen=True)
class KafkaOutputConfig(OutputConfig):
    """Write ``(key, payload)`` items to a Kafka topic; each may be bytes or str (written as
    UTF-8), the key may be ``None``. The record's partition is the producer's choice from the key.

    Every worker has its own producer. At the end of each epoch the worker waits until the
    brokers have acknowledged everything it wrote before its snapshot records the epoch as
    complete, so with recovery a restart repeats at most the epochs after that (at-least-once;
    nothing is lost). ``additional_properties`` go to the client (``security.protocol``,
    ``sasl.*``, ``ssl.*``, ``compression.type``...), and are kept out of the repr.

    Needs the ``millrace[kafka]`` extra (confluent-kafka). An unreachable broker, a missing
    topic (it is not created) or a property the client refuses fail the run before any item is
    written; an item of another shape fails it naming the step and the item.

    ``exactly_once`` (beyond Bytewax 0.15) makes the output exactly-once for consumers reading
    with ``isolation.level=read_committed``, across crashes and restarts. It needs a recovery
    config. Each worker then keeps an epoch's items (they are part of its snapshot) and writes
    them only once every worker has snapshotted the epoch, in one Kafka transaction that also
    records the epoch in the compacted topic ``{topic}-millrace-commits`` (made when missing);
    a restart commits what its snapshot holds beyond that record. The cost: output appears one
    epoch later, and the snapshots hold an epoch's items. The producer's ``transactional.id``
    is ``{base}-{worker index}``, ``base`` being ``millrace-{topic}-{capture position}`` or
    the ``transactional.id`` given in ``additional_properties`` (two flows writing one topic
    need different ones).

    >>> KafkaOutputConfig(["localhost:9092"], "totals")
    KafkaOutputConfig(brokers=['localhost:9092'], topic='totals', exactly_once=False)
    >>> from millrace.dataflow import Dataflow
    >>> from millrace.inputs import KafkaInputConfig
    >>> flow = Dataflow()
    >>> flow.input("orders", KafkaInputConfig(["localhost:9092"], "orders", tail=False))
    >>> flow.capture(KafkaOutputConfig(["localhost:9092"], "totals", exactly_once=True))
    >>> # run with a recovery config, e.g.:
    >>> # run_main(flow, recovery_config=SqliteRecoveryConfig("state"))
    """

    brokers: list[str]
    topic: str
    # Kafka client settings may hold credentials (sasl.password): kept out of the repr.
    additional_properties: dict[str, str] | None = field(default=None, repr=False)
    exactly_once: bool = False

    def __post_init__(self) -> None:
        # Copies, so that changing the caller's list or dict later does not change the flow.
        set_field(self, "brokers", list(self.brokers))
        set_field(self, "additional_properties", dict(self.additional_properties or {}))
        if type(self.exactly_once) is not bool:
            raise TypeError(f"KafkaOutputConfig: exactly_once must be a bool, got {self.exactly_once!r}")

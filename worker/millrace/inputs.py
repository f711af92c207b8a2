"""Where items come from: input configurations for :meth:`Dataflow.input`.

Every worker builds its own reader from the configuration, so a source that can be split
(files, partitions) should give each worker its own share; see :func:`distribute`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, TypeVar

from .common.fields import check_callable, set_field

__all__ = [
    "InputConfig",
    "ManualInputConfig",
    "TestingInputConfig",
    "TestingBuilderInputConfig",
    "KafkaInputConfig",
    "distribute",
]

X = TypeVar("X")

#: ``input_builder(worker_index, worker_count, resume_state)`` returning an iterator of
#: ``(state, item)`` 2-tuples (``(state, list_of_items)`` when batched), or bare ``None``
#: for "nothing yet".
InputBuilder = Callable[[int, int, Any], Iterable[tuple[Any, Any] | None]]


@dataclass(frozen=True)
class InputConfig:
    """Base class of every input configuration.

    Configurations are frozen dataclasses: equal when of the same class with equal fields, and
    picklable (a flow travels to other processes with cloudpickle).
    """


@dataclass(frozen=True)
class ManualInputConfig(InputConfig):
    """Items from a builder function you write.

    ``input_builder(worker_index, worker_count, resume_state)`` is called once per worker and
    returns an iterator of ``(state, item)`` 2-tuples. ``state`` is what resumes this input right
    after ``item`` when recovery is enabled (``resume_state`` is ``None`` on a fresh start).
    Yielding a bare ``None`` means "nothing yet": the worker does other work and asks again, so
    the iterator must not block. Exhaustion ends the input of that worker. A yield that is
    neither is a ``TypeError`` naming the input; for speed the worker checks the type of the
    first yield of each batch it reads and unpacks the others as they come, so a
    two-element list among the tuples is read as a pair.

    >>> from millrace.dataflow import Dataflow
    >>> from millrace.execution import run_main
    >>> from millrace.outputs import StdOutputConfig
    >>> def numbers(worker_index, worker_count, resume_state):
    ...     start = resume_state or 0
    ...     for i in range(start, 3):
    ...         yield i + 1, i
    >>> flow = Dataflow()
    >>> flow.input("numbers", ManualInputConfig(numbers))
    >>> flow.capture(StdOutputConfig())
    >>> run_main(flow)
    0
    1
    2

    With ``batched=True`` (beyond the 0.15 API) the builder hands over many items at once:
    it yields ``(state, items)`` 2-tuples where ``items`` is a ``list`` and ``state`` resumes
    the input right after the last item of that list (or a bare ``None``, "nothing yet").
    Sources that read blocks anyway (files, Kafka, a list in memory) save the engine a
    per-item step; recovery resumes between batches, never inside one, and with
    ``TestingEpochConfig`` each batch is one epoch. An empty list is allowed (it only
    moves the state on).

    >>> def blocks(worker_index, worker_count, resume_state):
    ...     start = resume_state or 0
    ...     for i in range(start, 6, 3):
    ...         yield i + 3, [i, i + 1, i + 2]
    >>> flow = Dataflow()
    >>> flow.input("numbers", ManualInputConfig(blocks, batched=True))
    >>> flow.capture(StdOutputConfig())
    >>> run_main(flow)
    0
    1
    2
    3
    4
    5
    """

    input_builder: InputBuilder
    batched: bool = False

    def __post_init__(self) -> None:
        check_callable(self, "input_builder")
        if type(self.batched) is not bool:
            raise TypeError(f"ManualInputConfig batched must be True or False, got {self.batched!r}")


@dataclass(frozen=True)
class TestingBuilderInputConfig(InputConfig):
    """Items from ``builder()``, an iterable made anew by each worker and spread over workers.

    Item ``i`` goes to worker ``i % worker_count``. The resume state is the number of items this
    worker has emitted, so a resumed run skips exactly those.

    >>> from millrace.dataflow import Dataflow
    >>> from millrace.execution import run_main
    >>> from millrace.outputs import StdOutputConfig
    >>> flow = Dataflow()
    >>> flow.input("inp", TestingBuilderInputConfig(lambda: "abc"))
    >>> flow.capture(StdOutputConfig())
    >>> run_main(flow)
    a
    b
    c
    """

    __test__ = False  # a name starting with "Testing" is not a pytest test class

    builder: Callable[[], Iterable[Any]]

    def __post_init__(self) -> None:
        check_callable(self, "builder")


@dataclass(frozen=True)
class TestingInputConfig(TestingBuilderInputConfig):
    """Items from a re-iterable collection (a list, a range, a Manager's ``ListProxy``: anything
    :func:`iter` accepts, ``__getitem__`` sequences included), spread over workers. A one-shot
    iterator (a generator) is read into a list first, so every worker sees the same items.

    >>> from millrace.dataflow import Dataflow
    >>> from millrace.execution import run_main
    >>> from millrace.outputs import StdOutputConfig
    >>> flow = Dataflow()
    >>> flow.input("inp", TestingInputConfig(range(3)))
    >>> flow.capture(StdOutputConfig())
    >>> run_main(flow)
    0
    1
    2
    """

    __test__ = False

    # Made from ``iterable``, so neither an argument nor part of equality or the repr.
    builder: Callable[[], Iterable[Any]] = field(init=False, repr=False, compare=False)
    iterable: Iterable[Any]

    def __post_init__(self) -> None:
        if isinstance(self.iterable, Iterator):
            # A one-shot iterator would be drained by the first worker and resumed wrongly;
            # materialise it so every worker and every resume sees the same items.
            set_field(self, "iterable", list(self.iterable))
        else:
            # What iter() accepts, not only what declares __iter__: an object with __getitem__
            # (a multiprocessing ListProxy) is iterable too. Each worker iterates it anew.
            try:
                iter(self.iterable)
            except TypeError:
                raise TypeError(
                    f"TestingInputConfig needs an iterable, got {self.iterable!r} "
                    f"of type {type(self.iterable).__name__}"
                ) from None
        set_field(self, "builder", self._items)

    def _items(self) -> Iterable[Any]:
        return self.iterable


@dataclass(frozen=True)
class KafkaInputConfig(InputConfig):
    """Read ``(key_bytes, payload_bytes)`` items (the key may be ``None``) from a Kafka topic.

    The topic's partitions are spread over all workers of the cluster, each read by exactly
    one worker; they are assigned, never joined through a consumer group, and no offset is
    committed to the brokers. The resume state is the next offset of every partition the
    worker reads, so with recovery a restart continues right after the last epoch every
    worker completed. ``tail=False`` ends the input once every partition reached the end it
    had when read (the client's partition EOF); ``tail=True`` waits for more.
    ``starting_offset`` (``"beginning"`` or ``"end"``) is where a partition without resume
    state starts. ``additional_properties`` go to the client (librdkafka's configuration:
    ``security.protocol``, ``sasl.*``, ``ssl.*``, tuning), and are kept out of the repr.

    Needs the ``millrace[kafka]`` extra (confluent-kafka). An unreachable broker, a missing
    topic or a property the client refuses fail the run before any item is read, naming them.

    >>> KafkaInputConfig(["localhost:9092"], "clicks", tail=False)
    KafkaInputConfig(brokers=['localhost:9092'], topic='clicks', tail=False, starting_offset='beginning')
    """

    brokers: list[str]
    topic: str
    tail: bool = True
    starting_offset: str = "beginning"
    # Kafka client settings may hold credentials (sasl.password): kept out of the repr.
    additional_properties: dict[str, str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.starting_offset not in ("beginning", "end"):
            raise ValueError(
                f"KafkaInputConfig starting_offset must be 'beginning' or 'end', got {self.starting_offset!r}"
            )
        # Copies, so that changing the caller's list or dict later does not change the flow.
        set_field(self, "brokers", list(self.brokers))
        set_field(self, "additional_properties", dict(self.additional_properties or {}))


def distribute(elements: Iterable[X], index: int, count: int) -> Iterator[X]:
    """The share of ``elements`` that belongs to worker ``index`` of ``count``: every
    ``count``-th element starting at ``index``.

    >>> list(distribute("abcdefg", 1, 3))
    ['b', 'e']
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"distribute needs 0 <= index < count, got index={index}, count={count}")
    return islice(elements, index, None, count)

"""Where items go: output configurations for :meth:`Dataflow.capture`.

A capture writes each item on the worker that holds it and passes the item on, so a flow may
capture in the middle as well as at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, MutableSequence

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


class OutputConfig:
    """Base class of every output configuration."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


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
    """

    def __init__(self, output_builder: OutputBuilder) -> None:
        if not callable(output_builder):
            raise TypeError(
                f"ManualOutputConfig needs a callable output_builder, got {output_builder!r}"
            )
        self.output_builder = output_builder

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.output_builder!r})"


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
    """


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

    def __init__(self, out: MutableSequence[Any]) -> None:
        if not (hasattr(out, "append") and hasattr(out, "extend")):
            raise TypeError(f"{type(self).__name__} needs a list to append to, got {out!r}")
        self.out = out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<list of {len(self.out)}>)"


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


class KafkaOutputConfig(OutputConfig):
    """Write ``(key_bytes, payload_bytes)`` items to a Kafka topic.

    This build of millrace has no Kafka client; running a flow with this output raises
    :class:`NotImplementedError` before any worker starts.
    """

    def __init__(
        self,
        brokers: list[str],
        topic: str,
        additional_properties: dict[str, str] | None = None,
    ) -> None:
        self.brokers = list(brokers)
        self.topic = topic
        self.additional_properties = dict(additional_properties or {})

    def __repr__(self) -> str:
        return f"KafkaOutputConfig(brokers={self.brokers!r}, topic={self.topic!r})"

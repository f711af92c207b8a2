"""The configuration classes are frozen dataclasses that keep Bytewax 0.15's signatures: same
arguments, same checks, reprs that do not leak, equality by value, and they travel pickled."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from millrace.inputs import (
    InputConfig,
    KafkaInputConfig,
    ManualInputConfig,
    TestingBuilderInputConfig,
    TestingInputConfig,
)
from millrace.outputs import (
    KafkaOutputConfig,
    ManualEpochOutputConfig,
    ManualOutputConfig,
    OutputConfig,
    StdOutputConfig,
    TestingEpochOutputConfig,
    TestingOutputConfig,
)
from millrace.recovery import KafkaRecoveryConfig, RecoveryConfig, SqliteRecoveryConfig
from millrace.window import (
    ClockConfig,
    EventClockConfig,
    SystemClockConfig,
    TumblingWindowConfig,
    WindowConfig,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def build(worker_index: int, worker_count: int, resume_state: Any = None) -> Any:
    return iter(())


def letters() -> str:
    return "ab"


def at(value: Any) -> datetime:
    return T0


# Bytewax 0.15's: argument names in order, and defaults (millrace adds only trailing keywords).
SIGNATURES: dict[type, str] = {
    InputConfig: "()",
    ManualInputConfig: "(input_builder, batched=False)",  # batched: beyond the 0.15 API
    TestingBuilderInputConfig: "(builder)",
    TestingInputConfig: "(iterable)",
    KafkaInputConfig: ("(brokers, topic, tail=True, starting_offset='beginning', additional_properties=None)"),
    OutputConfig: "()",
    ManualOutputConfig: "(output_builder, batched=False)",  # batched: beyond the 0.15 API
    ManualEpochOutputConfig: "(output_builder, batched=False)",
    StdOutputConfig: "()",
    TestingOutputConfig: "(out)",
    TestingEpochOutputConfig: "(out)",
    # Beyond Bytewax 0.15, a trailing keyword with a default: exactly-once output (transactions).
    KafkaOutputConfig: "(brokers, topic, additional_properties=None, exactly_once=False)",
    ClockConfig: "()",
    SystemClockConfig: "()",
    EventClockConfig: "(dt_getter, wait_for_system_duration=datetime.timedelta(0))",
    WindowConfig: "()",
    TumblingWindowConfig: "(length, start_at=None)",
    RecoveryConfig: "()",
    SqliteRecoveryConfig: "(db_dir)",
    # Beyond Bytewax 0.15, a trailing keyword with a default: the client properties.
    KafkaRecoveryConfig: "(brokers, topic_prefix, additional_properties=None)",
}


def plain(signature: inspect.Signature) -> str:
    return str(
        signature.replace(
            parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
            return_annotation=inspect.Signature.empty,
        )
    )


@pytest.mark.parametrize("cls", SIGNATURES, ids=lambda cls: cls.__name__)
def test_every_config_keeps_its_signature_and_is_a_frozen_dataclass(cls: type) -> None:
    assert plain(inspect.signature(cls)) == SIGNATURES[cls]
    assert dataclasses.is_dataclass(cls)
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]


def examples() -> list[Any]:
    return [
        ManualInputConfig(build),
        TestingBuilderInputConfig(letters),
        TestingInputConfig([1, 2]),
        KafkaInputConfig(["k:9092"], "t", tail=False, starting_offset="end"),
        ManualOutputConfig(build),
        ManualEpochOutputConfig(build),
        StdOutputConfig(),
        KafkaOutputConfig(["k:9092"], "t"),
        SystemClockConfig(),
        EventClockConfig(at, timedelta(seconds=3)),
        TumblingWindowConfig(timedelta(minutes=1), T0),
        SqliteRecoveryConfig("/tmp/flow-state"),
        KafkaRecoveryConfig(["k:9092"], "p"),
    ]


@pytest.mark.parametrize("config", examples(), ids=lambda c: type(c).__name__)
def test_a_config_is_equal_to_its_copy_and_survives_pickling(config: Any) -> None:
    assert config == dataclasses.replace(config)
    for module in (pickle, cloudpickle):
        back = module.loads(module.dumps(config))
        assert back == config and repr(back) == repr(config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.anything = 1


def test_equality_is_by_class_and_fields() -> None:
    assert ManualInputConfig(build) != ManualInputConfig(at)
    # The same function, but the epoch variant hands over (epoch, item): not the same output.
    assert ManualOutputConfig(build) != ManualEpochOutputConfig(build)
    assert TestingInputConfig(iter([1, 2])) == TestingInputConfig([1, 2])
    assert TumblingWindowConfig(timedelta(1)) != TumblingWindowConfig(timedelta(1), T0)
    assert hash(EventClockConfig(at)) == hash(EventClockConfig(at, timedelta(0)))


def test_testing_outputs_are_equal_when_they_fill_the_same_list() -> None:
    out: list[Any] = []
    assert TestingOutputConfig(out) == TestingOutputConfig(out)
    assert TestingOutputConfig(out) != TestingOutputConfig([])
    assert TestingOutputConfig(out) != TestingEpochOutputConfig(out)
    assert len({TestingOutputConfig(out), TestingOutputConfig(out)}) == 1


def test_a_testing_input_from_an_iterator_holds_its_items_for_every_worker() -> None:
    config = TestingInputConfig(x * 2 for x in range(3))
    assert list(config.builder()) == list(config.builder()) == [0, 2, 4]
    back = cloudpickle.loads(cloudpickle.dumps(config))
    assert list(back.builder()) == [0, 2, 4]


class _Sequence:
    """Iterable only through ``__getitem__`` and ``__len__``, as a Manager's ``ListProxy`` is."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __getitem__(self, index: int) -> Any:
        return self.items[index]

    def __len__(self) -> int:
        return len(self.items)


def test_a_testing_input_takes_whatever_iter_takes() -> None:
    """Bytewax 0.15's TestingInputConfig iterates a ListProxy; so does this one, on one worker
    and spread over several."""
    import multiprocessing

    from millrace.dataflow import Dataflow
    from millrace.execution import cluster_main, run_main

    with multiprocessing.Manager() as manager:
        for source in (_Sequence(list(range(7))), manager.list(range(7))):
            for run in (run_main, lambda flow: cluster_main(flow, [], 0, worker_count_per_proc=3)):
                out: list[Any] = []
                flow = Dataflow()
                flow.input("inp", TestingInputConfig(source))
                flow.capture(TestingOutputConfig(out))
                run(flow)
                assert sorted(out) == list(range(7)), source


def test_reprs() -> None:
    assert repr(InputConfig()) == "InputConfig()"
    assert repr(StdOutputConfig()) == "StdOutputConfig()"
    assert repr(SqliteRecoveryConfig(Path("/tmp/s"))) == "SqliteRecoveryConfig('/tmp/s')"
    assert repr(TestingEpochOutputConfig([1, 2])) == "TestingEpochOutputConfig(<list of 2>)"
    assert repr(TestingInputConfig([1])) == "TestingInputConfig(iterable=[1])"
    assert repr(TumblingWindowConfig(timedelta(seconds=1))) == (
        "TumblingWindowConfig(length=datetime.timedelta(seconds=1), start_at=None)"
    )
    assert repr(KafkaRecoveryConfig(["k:9092"], "p")) == ("KafkaRecoveryConfig(brokers=['k:9092'], topic_prefix='p')")


def test_kafka_settings_are_copied_and_stay_out_of_the_repr() -> None:
    brokers = ["k:9092"]
    secret = {"sasl.password": "hunter2"}
    for config in (
        KafkaInputConfig(brokers, "t", additional_properties=secret),
        KafkaOutputConfig(brokers, "t", additional_properties=secret),
        KafkaRecoveryConfig(brokers, "p", additional_properties=secret),
    ):
        assert "hunter2" not in repr(config)
        assert config.additional_properties == secret
        assert config.additional_properties is not secret and config.brokers is not brokers
    assert KafkaInputConfig(brokers, "t").additional_properties == {}


def test_sqlite_recovery_takes_a_str_or_a_path_and_keeps_a_path() -> None:
    assert SqliteRecoveryConfig("/tmp/s").db_dir == Path("/tmp/s")
    assert SqliteRecoveryConfig("/tmp/s") == SqliteRecoveryConfig(Path("/tmp/s"))
    with pytest.raises(TypeError, match="SqliteRecoveryConfig needs a directory path, got 3"):
        SqliteRecoveryConfig(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: ManualInputConfig(None), TypeError, "ManualInputConfig needs a callable input_builder, got None"),
        (
            lambda: TestingBuilderInputConfig([1]),
            TypeError,
            "TestingBuilderInputConfig needs a callable builder, got [1]",
        ),
        (lambda: TestingInputConfig(5), TypeError, "TestingInputConfig needs an iterable, got 5 of type int"),
        (
            lambda: KafkaInputConfig([], "t", starting_offset="middle"),
            ValueError,
            "KafkaInputConfig starting_offset must be 'beginning' or 'end', got 'middle'",
        ),
        (lambda: ManualOutputConfig(3), TypeError, "ManualOutputConfig needs a callable output_builder, got 3"),
        (
            lambda: ManualEpochOutputConfig(3),
            TypeError,
            "ManualEpochOutputConfig needs a callable output_builder, got 3",
        ),
        (lambda: TestingOutputConfig(()), TypeError, "TestingOutputConfig needs a list to append to, got ()"),
        (lambda: EventClockConfig("at"), TypeError, "EventClockConfig needs a callable dt_getter, got 'at'"),
        (
            lambda: EventClockConfig(at, 5),
            TypeError,
            "EventClockConfig wait_for_system_duration must be a datetime.timedelta, got 5",
        ),
        (
            lambda: EventClockConfig(at, timedelta(seconds=-1)),
            ValueError,
            "EventClockConfig wait_for_system_duration must not be negative",
        ),
        (lambda: TumblingWindowConfig(60), TypeError, "TumblingWindowConfig length must be a timedelta, got 60"),
        (lambda: TumblingWindowConfig(timedelta(0)), ValueError, "TumblingWindowConfig length must be positive"),
        (
            lambda: TumblingWindowConfig(timedelta(1), "2024"),
            TypeError,
            "TumblingWindowConfig start_at must be a datetime, got '2024'",
        ),
        (
            lambda: TumblingWindowConfig(timedelta(1), datetime(2024, 1, 1)),
            ValueError,
            "TumblingWindowConfig start_at must be timezone-aware (UTC), got the naive",
        ),
    ],
)
def test_bad_arguments_are_refused_by_name(make: Any, error: type, message: str) -> None:
    with pytest.raises(error) as info:
        make()
    assert str(info.value).startswith(message)

"""millrace.visualize: the Mermaid text of a flow, read from its steps without running them."""

from __future__ import annotations

from datetime import timedelta

import pytest

from millrace.dataflow import Dataflow
from millrace.inputs import ManualInputConfig, TestingInputConfig
from millrace.outputs import StdOutputConfig, TestingOutputConfig
from millrace.visualize import to_mermaid
from millrace.window import EventClockConfig, SystemClockConfig, TumblingWindowConfig


def _never_called(*args: object) -> object:
    raise AssertionError("visualize ran the flow's code")


def test_every_kind_of_step_with_its_id_and_shape() -> None:
    flow = Dataflow()
    flow.input("in", ManualInputConfig(_never_called))
    flow.filter(_never_called)
    flow.inspect(_never_called)
    flow.inspect_epoch(_never_called)
    flow.stateful_map("state", _never_called, _never_called)
    flow.capture(TestingOutputConfig([]))
    flow.fold_window(
        "fold", EventClockConfig(_never_called), TumblingWindowConfig(timedelta(seconds=1)), list, _never_called
    )
    flow.collect_window("collect", SystemClockConfig(), TumblingWindowConfig(timedelta(seconds=1)))
    flow.reduce_window("sum", SystemClockConfig(), TumblingWindowConfig(timedelta(seconds=1)), _never_called)
    flow.capture(StdOutputConfig())
    lines = to_mermaid(flow).splitlines()
    assert lines[0] == "flowchart TD"
    assert lines[1:11] == [
        "    step0[/\"input 'in'<br>ManualInputConfig\"/]",
        '    step1["filter<br>_never_called"]',
        '    step2["inspect<br>_never_called"]',
        '    step3["inspect_epoch<br>_never_called"]',
        "    step4[(\"stateful_map 'state'\")]",
        '    step5[\\"capture<br>TestingOutputConfig"/]',
        "    step6[(\"fold_window 'fold'<br>TumblingWindowConfig, EventClockConfig\")]",
        "    step7[(\"collect_window 'collect'<br>TumblingWindowConfig, SystemClockConfig\")]",
        "    step8[(\"reduce_window 'sum'<br>TumblingWindowConfig, SystemClockConfig\")]",
        '    step9[\\"capture<br>StdOutputConfig"/]',
    ]
    # Keyed steps are reached by key, even from one another: each has its own exchange.
    assert lines[11:] == [
        "    step0 --> step1",
        "    step1 --> step2",
        "    step2 --> step3",
        "    step3 ==>|by key| step4",
        "    step4 --> step5",
        "    step5 ==>|by key| step6",
        "    step6 ==>|by key| step7",
        "    step7 ==>|by key| step8",
        "    step8 --> step9",
    ]


def test_a_later_input_joins_at_the_step_after_it() -> None:
    """The runtime runs each input's items through every step after the input (segments.py):
    the second input skips the map before it."""
    flow = Dataflow()
    flow.input("a", TestingInputConfig([]))
    flow.map(str)
    flow.input("b", TestingInputConfig([]))
    flow.input("c", TestingInputConfig([]))
    flow.reduce("r", _never_called, _never_called)
    flow.capture(StdOutputConfig())
    edges = [line.strip() for line in to_mermaid(flow).splitlines() if "--" in line or "==" in line]
    assert edges == [
        "step0 --> step1",
        "step1 ==>|by key| step4",
        "step2 ==>|by key| step4",
        "step3 ==>|by key| step4",
        "step4 --> step5",
    ]


def test_user_text_cannot_break_the_graph() -> None:
    flow = Dataflow()
    flow.input('say "hi" <b>#1;\nnext', TestingInputConfig([]))
    flow.map(lambda x: x)
    flow.capture(StdOutputConfig())
    text = to_mermaid(flow)
    assert "[/\"input 'say #quot;hi#quot; #lt;b#gt;#35;1; next'<br>TestingInputConfig\"/]" in text
    assert '#lt;locals#gt;.#lt;lambda#gt;"]' in text
    assert len(text.splitlines()) == 1 + 3 + 2


def test_only_a_dataflow() -> None:
    with pytest.raises(TypeError, match="expected a Dataflow, got 42"):
        to_mermaid(42)  # type: ignore[arg-type]

"""Property-based differential test of event-time windows: :class:`WindowLogic` against a
plain model that keeps every key's clock and windows and looks at all of them on each tick.

The logic closes windows by events (item by item) and by time (a heap of per-key deadlines,
kept lazily: entries may be early, the keys of a batch wait as pending). The model has no
heap: on a tick it closes whatever the watermark passed. Outputs must be the same, item by
item for batches and key by key for ticks; and whenever the model has something due, the
logic's ``next_deadline`` must already have come (a worker only ticks once it has).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from millrace import plan
from millrace.common.clock import ManualClock
from millrace.runtime.windowing import WindowLogic
from millrace.window import EventClockConfig, TumblingWindowConfig

T0 = datetime(2024, 3, 1, tzinfo=UTC)
LENGTH_S = 10
US = 1_000_000


class Model:
    """Event-clock tumbling windows, one item at a time, in integer microseconds."""

    def __init__(self, wait_s: int) -> None:
        self.wait = wait_s * US
        self.length = LENGTH_S * US
        self.keys: dict[str, tuple[int, int, dict[int, list[Any]]]] = {}  # base, seen_at, windows

    def watermark(self, key: str, now: int) -> int:
        base, seen, _ = self.keys[key]
        return base + (now - seen)

    def item(self, key: str, t: int, value: Any, now: int) -> list[Any]:
        candidate = t - self.wait
        if key not in self.keys:
            self.keys[key] = (candidate, now, {})
        elif candidate > self.watermark(key, now):
            self.keys[key] = (candidate, now, self.keys[key][2])
        watermark = self.watermark(key, now)
        index = t // self.length
        windows = self.keys[key][2]
        if (index + 1) * self.length > watermark:
            windows.setdefault(index, []).append(value)
        return self.close(key, watermark)

    def close(self, key: str, watermark: int) -> list[Any]:
        windows = self.keys[key][2]
        out = [(key, windows.pop(i)) for i in sorted(windows) if (i + 1) * self.length <= watermark]
        if not windows:
            del self.keys[key]
        return out

    def tick(self, now: int) -> list[Any]:
        out: list[Any] = []
        for key in list(self.keys):
            out += self.close(key, self.watermark(key, now))
        return out

    def due(self, now: int) -> bool:
        return any(
            (min(windows) + 1) * self.length <= self.watermark(key, now) for key, (_, _, windows) in self.keys.items()
        )


def _us(t: datetime) -> int:
    return (t - T0) // timedelta(microseconds=1)


def _per_key(out: list[Any]) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = {}
    for key, value in out:
        grouped.setdefault(key, []).append(value)
    return grouped


# An operation: a batch of (key, event second) items, or system time moving on by some
# seconds followed by a tick. Event seconds spread over 400 s: 40 windows, so a key's next
# event may come many windows after its last (the logic's long-gap path).
batch_op = st.tuples(
    st.just("batch"),
    st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 400)), min_size=1, max_size=12),
)
tick_op = st.tuples(st.just("tick"), st.sampled_from([0, 1, 3, 9, 40]))


@settings(max_examples=300, deadline=None)
@given(wait_s=st.sampled_from([0, 5, 30, 100]), ops=st.lists(st.one_of(batch_op, tick_op), max_size=30))
def test_event_windows_close_as_the_model_says(wait_s: int, ops: list[Any]) -> None:
    clock = ManualClock(T0)
    step = plan.FoldWindow(
        step_id="w",
        clock=EventClockConfig(lambda v: v[0], wait_for_system_duration=timedelta(seconds=wait_s)),
        window=TumblingWindowConfig(timedelta(seconds=LENGTH_S), start_at=T0),
        builder=list,
        folder=lambda acc, v: [*acc, v[1]],
    )
    logic = WindowLogic(step, flow_start=T0, clock=clock.now)
    model = Model(wait_s)
    serial = 0
    for op, arg in ops:
        now = _us(clock.now())
        if op == "batch":
            batch = []
            expected: list[Any] = []
            for key, second in arg:
                serial += 1
                batch.append((key, (T0 + timedelta(seconds=second), serial)))
                expected += model.item(key, second * US, serial, now)
            assert logic.on_batch(batch) == expected
        else:
            clock.advance(arg)
            now = _us(clock.now())
            deadline = logic.next_deadline()
            if model.due(now):
                assert deadline is not None and deadline <= clock.now(), "a due window without a tick"
            got = logic.on_tick(clock.now())
            assert _per_key(got) == _per_key(model.tick(now))
            assert set(logic.state) == set(model.keys)
    assert _per_key(logic.on_eof()) == _per_key(
        [(key, windows[i]) for key, (_, _, windows) in model.keys.items() for i in sorted(windows)]
    )

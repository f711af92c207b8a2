"""The keyed, stateful steps that are not windows: ``reduce`` and ``stateful_map``.

Each holds one state per key in ``self.state``; a forgotten key is removed from it. Items
arrive in epoch order, unchecked: each step rejects, by name, an item that is not a tuple or
whose key is not a ``str`` or ``int`` (:func:`~.errors.bad_keyed_item`) inside its own loop,
where the test costs less than a separate pass over the batch. A tuple of the wrong length
fails the loop's unpacking with a ``ValueError``, which the worker turns into that same
``TypeError`` (see :func:`~.routing.check_pairs`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from datetime import datetime
from operator import itemgetter
from typing import Any

from .. import plan
from .errors import bad_keyed_item, describe

_key_of = itemgetter(0)


class _Forgotten:
    def __repr__(self) -> str:
        return "FORGOTTEN"


#: What :meth:`KeyedLogic.exports` gives for a key that holds no state now.
FORGOTTEN: Any = _Forgotten()


class KeyedLogic:
    """A stateful step on one worker: the keys this worker owns and their state."""

    name: str
    step_id: str
    state: dict[Any, Any]
    #: Keys whose state changed since the last snapshot; ``None`` when nothing is recorded.
    touched: set[Any] | None = None

    #: ``export(state_of_a_key)``: what a snapshot stores of a key's state (``restore`` takes
    #: it back); ``None`` stores the state itself.
    export: Callable[[Any], Any] | None = None

    def restore(self, states: dict[Any, Any]) -> None:
        """Take the keyed state a recovery store kept."""
        self.state.update(states)

    def rebase(self, flow_start: datetime) -> None:
        """Use the flow start a recovery store recorded (windows keep their boundaries)."""

    def is_empty(self) -> bool:
        """Whether no key holds any state."""
        return not self.state

    def keys(self) -> Collection[Any]:
        """Every key that holds state."""
        return self.state.keys()

    def exports(self, keys: Iterable[Any]) -> list[tuple[Any, Any]]:
        """What a snapshot stores of each of ``keys``: its state (through :attr:`export`), or
        :data:`FORGOTTEN` for a key that holds none now."""
        state = self.state
        export = self.export
        if export is None:
            return [(key, state[key] if key in state else FORGOTTEN) for key in keys]
        return [(key, export(state[key]) if key in state else FORGOTTEN) for key in keys]

    def on_batch(self, batch: list[Any]) -> list[Any]:
        """Apply ``batch`` in order and return what the step emits; raise the
        :func:`~.errors.bad_keyed_item` error for an item that is not a keyed tuple."""
        raise NotImplementedError

    def on_tick(self, now: datetime) -> list[Any]:
        """Emit what time alone has made ready (windows); most steps have nothing."""
        return []

    def next_deadline(self) -> datetime | None:
        """When :meth:`on_tick` may next emit something, if ever."""
        return None

    def on_eof(self) -> list[Any]:
        """All input has ended everywhere: emit what is still held."""
        return []


class ReduceLogic(KeyedLogic):
    def __init__(self, step: plan.Reduce) -> None:
        self.name = step.name
        self.step_id = step.step_id
        self.reducer = step.reducer
        self.is_complete = step.is_complete
        self.state = {}

    def on_batch(self, batch: list[Any]) -> list[Any]:
        state = self.state
        reducer = self.reducer
        is_complete = self.is_complete
        out: list[Any] = []
        # Local names: the type tests below run once per item.
        tuple_, str_, int_, type_ = tuple, str, int, type
        for item in batch:
            if type_(item) is not tuple_:
                raise bad_keyed_item(self.name, item)
            key, value = item
            key_type = type_(key)
            if key_type is not str_ and key_type is not int_:
                raise bad_keyed_item(self.name, item)
            # Subscripting beats .get() on this hot path, and try costs nothing when the key
            # is there, which is the common case.
            try:
                acc = state[key]
            except KeyError:
                acc = value
            else:
                acc = reducer(acc, value)
            done = is_complete(acc)
            if done is False:
                state[key] = acc
            elif done is True:
                out.append((key, acc))
                state.pop(key, None)
            else:
                raise TypeError(
                    f"{self.name}: is_complete must return a bool, got {describe(done)} "
                    f"for the accumulator {describe(acc)} of key {key!r}"
                )
        if self.touched is not None:
            self.touched.update(map(_key_of, batch))
        return out


class StatefulMapLogic(KeyedLogic):
    def __init__(self, step: plan.StatefulMap) -> None:
        self.name = step.name
        self.step_id = step.step_id
        self.builder = step.builder
        self.mapper = step.mapper
        self.state = {}

    def on_batch(self, batch: list[Any]) -> list[Any]:
        state = self.state
        builder = self.builder
        mapper = self.mapper
        out: list[Any] = []
        append = out.append
        tuple_, str_, int_, type_ = tuple, str, int, type
        for item in batch:
            if type_(item) is not tuple_:
                raise bad_keyed_item(self.name, item)
            key, value = item
            key_type = type_(key)
            if key_type is not str_ and key_type is not int_:
                raise bad_keyed_item(self.name, item)
            try:
                current = state[key]
            except KeyError:
                current = builder()
            result = mapper(current, value)
            if type(result) is not tuple or len(result) != 2:
                raise TypeError(
                    f"{self.name}: the mapper must return a (new_state, output) 2-tuple, "
                    f"got {describe(result)} for key {key!r}"
                )
            new_state, output = result
            if new_state is None:
                state.pop(key, None)
            else:
                state[key] = new_state
            append((key, output))
        if self.touched is not None:
            self.touched.update(map(_key_of, batch))
        return out

"""The keyed, stateful steps that are not windows: ``reduce`` and ``stateful_map``.

Each holds one state per key in ``self.state``; a forgotten key is removed from it. Items
arrive in epoch order, unchecked. A step's per-item code is :class:`~.loop_code.LoopCode`: the
worker runs it inside the loop of the stateless steps before the step when nothing has to move
between workers, and :meth:`KeyedLogic.on_batch` runs it over a batch otherwise. Either way
each item is checked where it is taken apart, and a bad one is rejected by the step's name
(:func:`~.errors.bad_keyed_item`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from datetime import datetime
from typing import Any

from .. import plan
from .chain import BatchFn, compile_chain
from .errors import bad_keyed_item, describe
from .loop_code import LoopCode


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
    #: The step's per-item code, for a loop generated with the steps before it; ``None``:
    #: the step has its own :meth:`on_batch` only.
    loop_code: LoopCode | None = None
    _own_loop: BatchFn | None = None

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

    def held_keys(self) -> int:
        """How many keys hold state; safe to ask from another thread while the step runs
        (a metrics scrape does)."""
        return len(self.state)

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
        :func:`~.errors.bad_keyed_item` error for an item that is not a keyed tuple (a
        tuple of the wrong length: a ``ValueError`` from unpacking it)."""
        run = self._own_loop
        if run is None:
            if self.loop_code is None:
                raise NotImplementedError
            run = self._own_loop = compile_chain([], keyed=self).run
        return run(batch, 0)

    def bad_item(self, item: Any) -> TypeError:
        """The error for an item that is not a ``(key, value)`` tuple with a str or int key."""
        return bad_keyed_item(self.name, item)

    def on_tick(self, now: datetime) -> list[Any]:
        """Emit what time alone has made ready (windows); most steps have nothing."""
        return []

    def next_deadline(self) -> datetime | None:
        """When :meth:`on_tick` may next emit something, if ever."""
        return None

    def on_eof(self) -> list[Any]:
        """All input has ended everywhere: emit what is still held."""
        return []

    #: Whether other workers send this step partials rather than items (see :mod:`.combine`);
    #: such a step closes its windows only at epoch ends (:meth:`on_epoch_end`).
    combine = False

    def merge(self, index: int, partials: list[tuple[Any, Any]]) -> None:
        """Fold in ``(key, partial)`` pairs another worker combined in window ``index``."""
        raise TypeError(f"{self.name} does not combine, yet partials reached it")

    def on_epoch_end(self) -> list[Any]:
        """Every worker sent everything of the epoch to this step: emit what that closes."""
        return []


class ReduceLogic(KeyedLogic):
    loop_code = LoopCode(
        "reduce",
        (
            "_emit = []",
            "_state, _reducer, _is_complete = _k.state, _k.reducer, _k.is_complete",
        ),
        # Subscripting beats .get() on this hot path, and try costs nothing when the key is
        # there, which is the common case.
        (
            "try:",
            "    _acc = _state[_key]",
            "except KeyError:",
            "    _acc = _value",
            "else:",
            "    _acc = _reducer(_acc, _value)",
            "_done = _is_complete(_acc)",
            "if _done is False:",
            "    _state[_key] = _acc",
            "elif _done is True:",
            "    _emit.append((_key, _acc))",
            "    _state.pop(_key, None)",
            "else:",
            "    raise _k.not_bool(_done, _acc, _key)",
        ),
    )

    def __init__(self, step: plan.Reduce) -> None:
        self.name = step.name
        self.step_id = step.step_id
        self.reducer = step.reducer
        self.is_complete = step.is_complete
        self.state = {}

    def not_bool(self, done: Any, acc: Any, key: Any) -> TypeError:
        return TypeError(
            f"{self.name}: is_complete must return a bool, got {describe(done)} "
            f"for the accumulator {describe(acc)} of key {key!r}"
        )


class StatefulMapLogic(KeyedLogic):
    loop_code = LoopCode(
        "stateful_map",
        ("_emit = []", "_state, _builder, _mapper = _k.state, _k.builder, _k.mapper", "_get = _state.get"),
        # A mapper that returns None as the state forgets the key, so keys are often missing:
        # .get() costs a little more than subscripting a key that is there, but raising a
        # KeyError costs about ten times that.
        (
            "_current = _get(_key, _MISSING)",
            "if _current is _MISSING:",
            "    _current = _builder()",
            "_result = _mapper(_current, _value)",
            "if _type(_result) is not _tuple or len(_result) != 2:",
            "    raise _k.not_a_pair(_result, _key)",
            "_new_state, _output = _result",
            "if _new_state is None:",
            "    _state.pop(_key, None)",
            "else:",
            "    _state[_key] = _new_state",
            "_emit.append((_key, _output))",
        ),
    )

    def __init__(self, step: plan.StatefulMap) -> None:
        self.name = step.name
        self.step_id = step.step_id
        self.builder = step.builder
        self.mapper = step.mapper
        self.state = {}

    def not_a_pair(self, result: Any, key: Any) -> TypeError:
        return TypeError(
            f"{self.name}: the mapper must return a (new_state, output) 2-tuple, got {describe(result)} for key {key!r}"
        )

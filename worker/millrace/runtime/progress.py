"""The progress protocol: how the workers of a cluster agree that an epoch is over.

Per epoch ``e``, after a worker's input phase of ``e`` ends:

1. For each stateful step ``k`` in order, the worker sends ``MARK(k, e, eof)`` to every peer
   after the last ``DATA`` of ``e`` it sends for ``k``. Channels are FIFO per pair of workers,
   so once a worker holds the marks of all workers for ``k``, it has every item of ``e`` for
   ``k``. If every mark says ``eof`` (all inputs everywhere are exhausted), the step flushes:
   windows close. Only then does the worker mark step ``k + 1`` (the flush may send ``DATA``
   of ``e`` for ``k + 1``, which must go before that mark).
2. After the last step, the worker snapshots, sends ``DONE(e, eof)`` to all and starts epoch
   ``e + 1`` only when every worker is done with ``e``.
3. When every ``DONE`` says ``eof``, the flow is over.

Between its ``DONE(e)`` and the last peer's, a worker may already receive data of ``e + 1``
from faster peers; it applies it at once, which keeps per-key epoch order because nothing of
``e`` can still arrive. A faster peer's marks (of a later step, or of ``e + 1``) and its
``DONE`` may likewise come before the round they belong to: they are kept until it.

:class:`Progress` is that protocol without threads or sockets: the worker feeds it every
``MARK`` and ``DONE`` it receives (:meth:`Progress.receive`) and tells it when its input phase
of an epoch ends (:meth:`Progress.end_input`); it answers with what the worker must do, in
order. When it answers nothing more, the worker handles messages until
:meth:`Progress.ready`, then asks again (:meth:`Progress.advance`). A single worker needs no
messages: every round is complete with its own word.

>>> p = Progress(index=0, count=2, steps=1)
>>> p.end_input(epoch=0, eof=True)
[Broadcast(message=(1, 0, 0, 0, True))]
>>> p.ready(), p.tick_from
(False, 0)
>>> p.receive((MARK, 0, 0, 1, True))
>>> p.advance()
[Flush(step=0), Snapshot(epoch=0), Broadcast(message=(2, 0, 0, True))]
>>> p.receive((DONE, 0, 1, True))
>>> p.advance()
[Ended(epoch=0, eof=True)]
"""

from __future__ import annotations

from dataclasses import dataclass

from .exchange import DONE, MARK, Message


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send ``message`` to every other worker."""

    message: Message


@dataclass(frozen=True, slots=True)
class Flush:
    """Every input everywhere is exhausted and step ``step`` has all its items: flush it (its
    windows close) and push what it emits, in the epoch being finished."""

    step: int


@dataclass(frozen=True, slots=True)
class Close:
    """Step ``step`` has every item of the epoch being finished, from every worker: a step
    that closes its windows at epoch ends (``reduce_window(..., combine=True)``) closes those
    the clock has left, and pushes what it emits, in that epoch."""

    step: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every step is through ``epoch``: write the snapshot of it, if the worker keeps one."""

    epoch: int


@dataclass(frozen=True, slots=True)
class Ended:
    """Every worker is done with ``epoch``; ``eof``: the whole flow is over."""

    epoch: int
    eof: bool


Action = Broadcast | Close | Flush | Snapshot | Ended

# Where the worker is in finishing an epoch.
_READING = 0  # in an input phase: nothing awaited
_STEPS = 1  # bringing the stateful steps through the epoch, one at a time
_DONES = 2  # every step is through; waiting for every worker's DONE


class Progress:
    """The progress protocol of worker ``index`` of ``count``, for a flow of ``steps`` stateful
    steps (module docstring), of which those in ``closing`` close windows at epoch ends.

    >>> p = Progress(index=0, count=1, steps=2, closing=frozenset({1}))
    >>> p.end_input(epoch=0, eof=False)
    [Close(step=1), Snapshot(epoch=0), Ended(epoch=0, eof=False)]
    """

    __slots__ = (
        "index",
        "count",
        "steps",
        "closing",
        "_marks",
        "_dones",
        "_phase",
        "_epoch",
        "_step",
        "_eof",
        "_round",
    )

    def __init__(self, index: int, count: int, steps: int, closing: frozenset[int] = frozenset()) -> None:
        self.index = index
        self.count = count
        self.steps = steps
        #: The steps that close windows at each epoch's end (:class:`Close`).
        self.closing = closing
        # Every worker's word so far, per (step, epoch) and per epoch; a round is complete
        # when its list holds ``count`` of them.
        self._marks: dict[tuple[int, int], list[bool]] = {}
        self._dones: dict[int, list[bool]] = {}
        self._phase = _READING
        self._epoch = -1
        self._step = 0  # the step to bring through next, or whose marks are awaited
        self._eof = False  # whether every input is exhausted, as far as the rounds so far say
        self._round: list[bool] | None = None  # the marks or dones awaited, once sent

    @property
    def tick_from(self) -> int | None:
        """While marks are awaited, the first step whose windows time may close: only steps
        whose downstream has not been marked with the epoch may emit into it. ``None``
        otherwise (while the ``DONE`` of every worker is awaited, nothing may emit)."""
        return self._step if self._phase == _STEPS else None

    def receive(self, msg: Message) -> None:
        """Keep a peer's ``MARK`` or ``DONE``, of this round or a later one."""
        if msg[0] == MARK:
            _, target, epoch, _sender, eof = msg
            self._marks.setdefault((target, epoch), []).append(eof)
        elif msg[0] == DONE:
            _, epoch, _sender, eof = msg
            self._dones.setdefault(epoch, []).append(eof)
        else:
            raise ValueError(f"not a progress message: {msg!r}")

    def ready(self) -> bool:
        """Whether the round awaited is complete, so :meth:`advance` has something to say."""
        awaited = self._round
        return awaited is None or len(awaited) == self.count

    def end_input(self, epoch: int, eof: bool) -> list[Action]:
        """The input phase of ``epoch`` is over; ``eof``: every input of this worker is
        exhausted. Returns the first things to do to finish the epoch."""
        if self._phase != _READING:
            raise RuntimeError(f"epoch {self._epoch} is not finished yet")
        self._phase = _STEPS
        self._epoch = epoch
        self._step = 0
        self._eof = eof
        return self.advance()

    def advance(self) -> list[Action]:
        """What to do now, in order, up to the next round that is not complete (or the end of
        the epoch: :class:`Ended`, after which the next input phase may begin)."""
        actions: list[Action] = []
        multi = self.count > 1
        while True:
            awaited = self._round
            if awaited is not None:
                if len(awaited) < self.count:
                    return actions
                self._round = None
                self._eof = all(awaited)
                if self._phase == _DONES:
                    del self._dones[self._epoch]
                    self._phase = _READING
                    actions.append(Ended(self._epoch, self._eof))
                    return actions
                del self._marks[(self._step, self._epoch)]
                self._flush(actions)
            elif self._phase == _STEPS and self._step < self.steps:
                if multi:
                    key = (self._step, self._epoch)
                    actions.append(Broadcast((MARK, *key, self.index, self._eof)))
                    self._round = self._marks.setdefault(key, [])
                    self._round.append(self._eof)
                else:
                    self._flush(actions)
            elif self._phase == _STEPS:
                actions.append(Snapshot(self._epoch))
                if not multi:
                    self._phase = _READING
                    actions.append(Ended(self._epoch, self._eof))
                    return actions
                self._phase = _DONES
                actions.append(Broadcast((DONE, self._epoch, self.index, self._eof)))
                self._round = self._dones.setdefault(self._epoch, [])
                self._round.append(self._eof)
            else:
                return actions  # nothing awaited between epochs

    def _flush(self, actions: list[Action]) -> None:
        """The current step is through the epoch: close its windows if it closes them at
        epoch ends, flush it if the flow ends, go to the next."""
        if self._step in self.closing:
            actions.append(Close(self._step))
        if self._eof:
            actions.append(Flush(self._step))
        self._step += 1

"""Combining values per key before they cross between workers: ``reduce_window(...,
combine=True)``, whose reducer the user declares associative, and ``fold_window(...,
merger=...)``, whose merger folds one worker's partial into another's accumulator.

Without combining, every value of a key another worker owns crosses on its own: routed,
encoded, sent, decoded and applied, which costs more than reducing it. With it, a worker does
not route values at all: the loop of the steps before the windowed step (see :mod:`.chain`)
reduces every value it reads into a :class:`Combiner`, one partial per key and window (the
values of that key, reduced, or folded from ``builder()``, in the order this worker read them),
exactly as a single worker reduces into its windows. Only the partials are routed, key by key,
when the epoch ends (before the worker's ``MARK`` for the step, so the progress protocol still
sees every item of the epoch arrive before it) or when :data:`LIMIT` keys are held: this
worker's own keys go into its windows, the others' cross as ``DATA`` messages whose target is
``~step`` (negative: "partials") and whose items are ``(window index, [(key, partial), ...])``;
the owner folds them in with :meth:`~.system_windows.SystemClockWindowLogic.merge`.

>>> class Step:  # what a Combiner asks of the step's logic
...     name, reducer, builder, folder = "reduce_window 'count'", (lambda a, b: a + b), None, None
...     loop_code = None  # the step's per-item code, which the generated loop runs
...     def window_now(self):
...         return 7
>>> class Owners:  # a Router: int keys go to key % 2
...     worker_count, me, owners = 2, 0, {}
>>> combiner = Combiner(Step(), target=0, router=Owners())
>>> _, partials, _ = combiner.begin_batch()
>>> partials.update({1: 2, 2: 5, 3: 1})  # what the generated loop does, value by value
>>> combiner.drain()
([(7, [(2, 5)])], [(1, (0, -1, 0, (7, [(1, 2), (3, 1)]), 0))])
>>> combiner.drain()
([], [])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .chain import KeyRouter
from .epochs import BATCH_SIZE
from .errors import bad_keyed_item
from .exchange import DATA, Message
from .loop_code import LoopCode

#: Keys the partials may hold before they go out: a bound on memory when keys hardly repeat
#: within an epoch (then combining saves little anyway).
LIMIT = 1 << 16
#: Partials per message: as many as items in a batch's piece (a partial is one key's value, as
#: an item is), so that credits, which count messages, bound what partials hold in flight as
#: they bound batches.
CHUNK = BATCH_SIZE


class CombiningLogic(Protocol):
    """What a combiner needs of its step (:class:`~.system_windows.SystemClockWindowLogic`):
    its per-item loop code, and a ``reducer``, or a ``builder`` and a ``folder``."""

    name: str
    loop_code: LoopCode | None
    reducer: Callable[[Any, Any], Any] | None
    builder: Callable[[], Any] | None
    folder: Callable[[Any, Any], Any] | None

    def window_now(self) -> int:
        """The window a value read now goes into."""
        ...


class Combiner:
    """The partials one worker holds for one step (by index ``target``), its values not yet
    routed; ``router`` says which worker owns a key. It ends the generated loop of the steps
    before the windowed step in the step's place (it offers what that loop asks of a keyed
    step: ``name``, ``loop_code``, ``touched``, ``bad_item`` and ``begin_batch``)."""

    __slots__ = (
        "logic",
        "name",
        "loop_code",
        "target",
        "router",
        "reducer",
        "builder",
        "folder",
        "pending",
        "epoch",
        "touched",
    )

    def __init__(self, logic: CombiningLogic, target: int, router: KeyRouter) -> None:
        if logic.reducer is None and (logic.builder is None or logic.folder is None):
            raise TypeError(f"{logic.name} has no reducer, nor builder and folder, to combine with")
        self.logic = logic
        self.name = logic.name
        self.loop_code = logic.loop_code
        self.target = target
        self.router = router
        self.reducer = logic.reducer
        self.builder = logic.builder
        self.folder = logic.folder
        #: Per window index, ``{key: partial}``.
        self.pending: dict[int, dict[Any, Any]] = {}
        #: The epoch of what :attr:`pending` holds.
        self.epoch = 0
        #: The owner records the keys whose state changed, when it merges.
        self.touched: set[Any] | None = None

    def bad_item(self, item: Any) -> TypeError:
        return bad_keyed_item(self.name, item)

    def begin_batch(self) -> tuple[list[Any], dict[Any, Any], int]:
        """What the generated loop's setup asks of a windowed step: a list of what it emits
        (nothing: partials are emitted by no one), the partials of the window the batch goes
        into, and the time (which only ``collect_window`` reads; it never combines)."""
        index = self.logic.window_now()
        partials = self.pending.get(index)
        if partials is None:
            partials = self.pending[index] = {}
        return [], partials, 0

    def full(self) -> bool:
        """Whether the partials hold :data:`LIMIT` keys or more: time to send them."""
        return sum(map(len, self.pending.values())) >= LIMIT

    def drain(self) -> tuple[list[tuple[int, list[tuple[Any, Any]]]], list[tuple[int, Message]]]:
        """Every partial held, routed: ``(window index, pairs)`` of this worker's keys, and
        ``(destination, message)`` for the others'; none are held after."""
        router = self.router
        count, me = router.worker_count, router.me
        owners_get = router.owners.get
        local: list[tuple[int, list[tuple[Any, Any]]]] = []
        out: list[tuple[int, Message]] = []
        for index in sorted(self.pending):
            parts: list[list[tuple[Any, Any]]] = [[] for _ in range(count)]
            for pair in self.pending[index].items():
                key = pair[0]
                # The loop let only str and int keys in; a str's owner is cached by the router.
                dest = key % count if type(key) is int else owners_get(key)
                if dest is None:
                    dest = router.owner_of(key)
                parts[dest].append(pair)
            for dest, part in enumerate(parts):
                if not part:
                    continue
                if dest == me:
                    local.append((index, part))
                    continue
                for start in range(0, len(part), CHUNK):
                    chunk = part[start : start + CHUNK]
                    out.append((dest, (DATA, ~self.target, self.epoch, (index, chunk), me)))
        self.pending.clear()
        return local, out

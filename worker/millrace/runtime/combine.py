"""Combining values per key before they cross between workers: ``reduce_window(...,
combine=True)``, whose reducer the user declares associative, and ``fold_window(...,
merger=...)``, whose merger folds one worker's partial into another's accumulator.

Without combining, every value of a key another worker owns crosses on its own: routed,
encoded, sent, decoded and applied, which costs more than reducing it. A :class:`Combiner`
keeps, per destination worker and window, one partial per key instead: the values this worker
reads for that key, reduced (or folded from ``builder()``) in the order it read them. The
partials go out when the epoch ends (before the worker's ``MARK`` for the step, so the progress
protocol still sees every item of the epoch arrive before it) or when a destination holds
:data:`LIMIT` keys. A partial is a ``DATA`` message whose target is ``~step`` (negative:
"partials") and whose items are ``(window index, [(key, partial), ...])``; the owner folds them
in with :meth:`~.system_windows.SystemClockWindowLogic.merge`.

>>> class Step:  # what a Combiner asks of the step's logic
...     name, reducer = "reduce_window 'count'", staticmethod(lambda a, b: a + b)
...     builder = folder = None
...     def window_now(self):
...         return 7
>>> combiner = Combiner(Step(), target=0, count=2)
>>> combiner.add([[], [("a", 1), ("b", 1), ("a", 1)]], epoch=3)
[]
>>> combiner.drain()
[(1, (0, -1, 3, (7, [('a', 2), ('b', 1)])))]
>>> combiner.drain()
[]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .exchange import DATA, Message

#: Keys a destination's partials of one window may hold before they go out: a bound on memory
#: when keys hardly repeat within an epoch (then combining saves little anyway).
LIMIT = 1 << 16
#: Partials per message, so that an epoch's end sends frames of a moderate size.
CHUNK = 8192

_MISSING: Any = object()


class CombiningLogic(Protocol):
    """What a combiner needs of its step (:class:`~.system_windows.SystemClockWindowLogic`):
    a ``reducer``, or a ``builder`` and a ``folder``."""

    name: str
    reducer: Callable[[Any, Any], Any] | None
    builder: Callable[[], Any] | None
    folder: Callable[[Any, Any], Any] | None

    def window_now(self) -> int:
        """The window a value read now goes into."""
        ...


class Combiner:
    """The partials one worker holds for one step (by index ``target``) and each of ``count``
    workers."""

    __slots__ = ("logic", "target", "reducer", "builder", "folder", "pending", "epoch")

    def __init__(self, logic: CombiningLogic, target: int, count: int) -> None:
        if logic.reducer is None and (logic.builder is None or logic.folder is None):
            raise TypeError(f"{logic.name} has no reducer, nor builder and folder, to combine with")
        self.logic = logic
        self.target = target
        self.reducer = logic.reducer
        self.builder = logic.builder
        self.folder = logic.folder
        #: Per destination worker: per window index, ``{key: partial}``.
        self.pending: list[dict[int, dict[Any, Any]]] = [{} for _ in range(count)]
        self.epoch = 0

    def add(self, parts: list[list[Any]], epoch: int) -> list[tuple[int, Message]]:
        """Reduce each worker's part (``(key, value)`` pairs) into its partials; return the
        messages that must go now: what an earlier epoch left (none, when every epoch's end
        drained), and partials over :data:`LIMIT`."""
        out: list[tuple[int, Message]] = []
        if epoch != self.epoch:
            out = self.drain()
            self.epoch = epoch
        index = self.logic.window_now()
        reducer, builder, folder = self.reducer, self.builder, self.folder
        missing = _MISSING
        for dest, part in enumerate(parts):
            if not part:
                continue
            by_window = self.pending[dest]
            partials = by_window.get(index)
            if partials is None:
                partials = by_window[index] = {}
            get = partials.get
            # One lookup per value; a user function may raise anything (KeyError too), so no
            # try/except KeyError shortcut here.
            if reducer is not None:
                for key, value in part:
                    acc = get(key, missing)
                    partials[key] = value if acc is missing else reducer(acc, value)
            else:
                assert builder is not None and folder is not None
                for key, value in part:
                    acc = get(key, missing)
                    partials[key] = folder(builder() if acc is missing else acc, value)
            if len(partials) >= LIMIT:
                out += self._take(dest)
        return out

    def drain(self) -> list[tuple[int, Message]]:
        """Every partial held, as messages ``(destination, message)``; none are held after."""
        out: list[tuple[int, Message]] = []
        for dest in range(len(self.pending)):
            if self.pending[dest]:
                out += self._take(dest)
        return out

    def _take(self, dest: int) -> list[tuple[int, Message]]:
        by_window = self.pending[dest]
        out: list[tuple[int, Message]] = []
        for index in sorted(by_window):
            items = list(by_window[index].items())
            for start in range(0, len(items), CHUNK):
                out.append((dest, (DATA, ~self.target, self.epoch, (index, items[start : start + CHUNK]))))
        by_window.clear()
        return out

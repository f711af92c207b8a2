"""Per-worker readers built from input configurations.

A reader hands out batches of items and knows the resume state after the last item it handed
out. It looks one item ahead, so that it knows it is exhausted in the same epoch as its last
item, as the input operators of the reference engine do.

A source that raises has its error held until the items it gave before are handed out: the
reference engine pulls one item at a time, so each of those flows through the dataflow (and
reaches the outputs) before the error stops it, and the epoch they end goes on as usual. The
batch's pull is one C call (``list += islice(...)``), which keeps what it appended when the
iterator raises, so the fast path pays nothing for this.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from operator import countOf
from typing import Any

from ..common.clock import SYSTEM_CLOCK
from ..inputs import (
    InputConfig,
    KafkaInputConfig,
    ManualInputConfig,
    TestingBuilderInputConfig,
    distribute,
)
from .errors import describe

_EMPTY = object()

# About how long a reader may spend filling one batch from a source that is slow per item.
BATCH_SECONDS = 0.01
# Real time, never a run's test clock: this bounds how long filling a batch holds the worker,
# and a ManualClock must not change how items are batched. (time.monotonic itself.)
monotonic = SYSTEM_CLOCK.monotonic


def _append_items(pairs: list[tuple[Any, ...]], items: list[Any]) -> bool:
    """Append the item of each ``(state, item)`` tuple of ``pairs`` to ``items``; ``False``,
    appending nothing, when a tuple has another length. (One unpacking comprehension costs
    less than half of two C passes, one checking the lengths and one taking the items.)"""
    try:
        items += [item for _, item in pairs]
    except ValueError:
        return False
    return True


class Reader:
    """Reads one worker's share of one input."""

    name: str
    exhausted: bool = False
    #: What the source raised, held until the items pulled before it are handed out.
    _error: Exception | None = None

    def read(self, limit: int) -> list[Any]:
        """Up to ``limit`` items; fewer (even none) when the source has nothing yet. Raises
        what the source raised once every item it gave before has been returned."""
        raise NotImplementedError

    def _raise_held(self) -> None:
        error = self._error
        if error is not None:
            self._error = None
            self.exhausted = True  # a source that failed gives nothing more
            raise error

    @property
    def state(self) -> Any:
        """What resumes this input right after the last item :meth:`read` returned."""
        raise NotImplementedError

    def bad(self, got: Any) -> TypeError:
        """The error of a yield of the wrong shape."""
        return TypeError(f"{self.name}: the input yielded {describe(got)}, which is not of the shape it must have")

    # -- for a fused loop (pump.py), which reads the source itself instead of calling read --

    _it: Iterator[Any]
    _ahead: Any = _EMPTY

    @property
    def iterator(self) -> Iterator[Any]:
        """The source's own iterator."""
        return self._it

    @property
    def failed(self) -> bool:
        """Whether an error is held (see :meth:`hold`)."""
        return self._error is not None

    def hold(self, error: Exception) -> None:
        """Keep ``error``, raised by or about the source, for :meth:`raise_held`."""
        self._error = error

    def raise_held(self) -> None:
        """Raise the held error, if any, once nothing read before it waits to be handed out."""
        if self._error is not None and self._ahead is _EMPTY:
            self._raise_held()

    def look_ahead(self) -> None:
        """Pull the next yield and keep it (:meth:`take_ahead`) when well formed; or learn
        that the source is exhausted, has nothing yet, or failed (the error held)."""
        raise NotImplementedError

    def has_ahead(self) -> bool:
        return self._ahead is not _EMPTY

    def take_ahead(self) -> tuple[Any, ...]:
        """The yield kept by :meth:`look_ahead`, as a 1-tuple, and let go of it; ``()``: none."""
        ahead = self._ahead
        if ahead is _EMPTY:
            return ()
        self._ahead = _EMPTY
        return (ahead,)

    def handed_out(self, count: int, state: Any) -> None:
        """A fused loop handed out ``count`` items it read from :attr:`iterator`, the last
        of them with the resume state ``state``."""
        raise NotImplementedError

    def close(self) -> None:
        """Let go of what the reader holds (a client's connections); the run is over."""


class ManualReader(Reader):
    """Reads ``(state, item)`` 2-tuples, or a bare ``None`` for "nothing yet".

    Items are pulled in chunks (1, 2, 4, ... up to the batch limit, with a look at the clock
    between chunks: a source that takes its time per item ends its batch after about
    :data:`BATCH_SECONDS`, so its items flow on and epochs close on time). A chunk of tuples
    is unpacked by one comprehension, which also finds a tuple of the wrong length; only a
    chunk holding a ``None`` or something malformed is walked item by item. Pairs pulled after
    a ``None`` wait in ``_pending`` for the next read, so none is lost or reordered.
    """

    def __init__(self, name: str, iterator: Iterator[Any], resume_state: Any) -> None:
        self.name = name
        self._it = iterator
        self._state = resume_state
        self._ahead: Any = _EMPTY
        self._pending: list[Any] = []

    @property
    def state(self) -> Any:
        return self._state

    def bad(self, got: Any) -> TypeError:
        """The error of a yield that is not a ``(state, item)`` 2-tuple or ``None``."""
        return TypeError(
            f"{self.name}: the input builder must yield (state, item) 2-tuples or None, got {describe(got)}"
        )

    def did_not_unpack(self, error: Exception, after: Any) -> TypeError:
        """The error of a yield that failed to unpack into ``(state, item)`` with ``error``,
        after the item of state ``after`` (the fused loop unpacks without keeping the yield)."""
        return TypeError(
            f"{self.name}: the input builder must yield (state, item) 2-tuples or None, got one that does "
            f"not unpack into two ({error}) after the item with state {after!r}"
        )

    def _take(self, want: int) -> list[Any]:
        """Up to ``want`` pairs, the pending ones first; when the source raises, those it gave
        before (fewer than ``want``), the error held in ``_error``."""
        pending = self._pending
        got: list[Any] = []
        if pending:
            got = pending[:want]
            del pending[:want]
            if len(got) == want:
                return got
        if self._error is None:
            try:
                got += islice(self._it, want - len(got))
            except Exception as exc:
                self._error = exc
        return got

    def read(self, limit: int) -> list[Any]:
        if self._error is not None and not self._pending and self._ahead is _EMPTY:
            self._raise_held()
        if self.exhausted:
            return []
        items: list[Any] = []
        last = None
        if self._ahead is not _EMPTY:
            last = self._ahead
            items.append(last[1])
            self._ahead = _EMPTY
            limit -= 1
        started = monotonic()
        chunk = 1
        paused = False
        while limit > 0:
            want = min(chunk, limit)
            got = self._take(want)
            n = len(got)
            if n and countOf(map(type, got), tuple) == n and _append_items(got, items):
                last = got[-1]
            else:
                for position, one in enumerate(got):
                    if type(one) is tuple and len(one) == 2:
                        items.append(one[1])
                        last = one
                    elif one is None:
                        # Nothing yet: stop here; what was pulled after it comes next time.
                        self._pending[:0] = [x for x in got[position + 1 :] if x is not None]
                        paused = True
                        break
                    else:
                        # Refused as the source's own error would be: after the items before it.
                        self._error = self.bad(one)
                        self._pending.clear()
                        break
                if paused or self._error is not None:
                    break
            if len(got) < want:
                self.exhausted = self._error is None
                break
            limit -= want
            if monotonic() - started >= BATCH_SECONDS:
                self.look_ahead()
                break
            chunk *= 2
        else:
            self.look_ahead()
        if last is not None:
            self._state = last[0]
        elif not items and not self._pending:
            self._raise_held()  # nothing came before the error: no reason to wait
        return items

    def look_ahead(self) -> None:
        got = self._take(1)
        if not got:
            self.exhausted = self._error is None
        elif type(got[0]) is tuple and len(got[0]) == 2:
            self._ahead = got[0]
        elif got[0] is not None:
            self._error = self.bad(got[0])

    def raise_held(self) -> None:
        if not self._pending:
            super().raise_held()

    def handed_out(self, count: int, state: Any) -> None:
        self._state = state


class BatchReader(Reader):
    """Reads ``(state, list_of_items)`` 2-tuples (``ManualInputConfig(..., batched=True)``),
    or a bare ``None`` for "nothing yet". A read takes whole batches until it holds ``limit``
    items or more (a batch is never split: the state resumes between batches), then looks
    one batch ahead, so that it knows it is exhausted with its last batch. What the source
    raises, or a yield of the wrong shape, is held until the batches before it are handed out.
    """

    def __init__(self, name: str, iterator: Iterator[Any], resume_state: Any) -> None:
        self.name = name
        self._it = iterator
        self._state = resume_state
        self._ahead: Any = _EMPTY

    @property
    def state(self) -> Any:
        return self._state

    def bad(self, got: Any) -> TypeError:
        """The error of a yield that is not a ``(state, list)`` 2-tuple or ``None``."""
        return TypeError(
            f"{self.name}: the batched input builder must yield (state, list of items) 2-tuples or None, "
            f"got {describe(got)}"
        )

    def _next(self) -> Any:
        """The next yield, ``_EMPTY`` at the end; a source error is held."""
        try:
            return next(self._it, _EMPTY)
        except Exception as exc:
            self._error = exc
            return _EMPTY

    def _well_formed(self, got: Any) -> bool:
        if type(got) is tuple and len(got) == 2 and type(got[1]) is list:
            return True
        self._error = self.bad(got)
        return False

    def read(self, limit: int) -> list[Any]:
        self._raise_held()
        if self.exhausted:
            return []
        items: list[Any] = []
        started = monotonic()
        while True:
            got = self._ahead
            self._ahead = _EMPTY
            if got is _EMPTY:
                got = self._next()
            if got is _EMPTY:
                self.exhausted = self._error is None
                break
            if got is None:
                break  # nothing yet
            if not self._well_formed(got):
                break
            self._state, batch = got
            items += batch
            # Enough items, or enough time on a source that is slow per batch (or yields
            # empty ones): look ahead and hand them over.
            if len(items) < limit and monotonic() - started < BATCH_SECONDS:
                continue
            self.look_ahead()
            break
        if not items and self._error is not None:
            self._raise_held()
        return items

    def look_ahead(self) -> None:
        got = self._next()
        if got is _EMPTY:
            self.exhausted = self._error is None
        elif got is not None and self._well_formed(got):
            self._ahead = got

    def handed_out(self, count: int, state: Any) -> None:
        self._state = state


class TestingReader(Reader):
    """Reads plain items; the resume state is how many this worker has emitted."""

    __test__ = False

    def __init__(self, name: str, iterator: Iterator[Any], resume_state: int) -> None:
        self.name = name
        self._it = iterator
        self._count = resume_state
        self._ahead: Any = _EMPTY

    @property
    def state(self) -> int:
        return self._count

    def read(self, limit: int) -> list[Any]:
        self._raise_held()
        if self.exhausted:
            return []
        items: list[Any] = []
        try:
            if self._ahead is not _EMPTY:
                items.append(self._ahead)
                self._ahead = _EMPTY
            items += islice(self._it, limit - len(items))
            if len(items) < limit:
                self.exhausted = True
            else:
                self._ahead = next(self._it, _EMPTY)
                self.exhausted = self._ahead is _EMPTY
        except Exception as exc:
            self._error = exc
            if not items:
                self._raise_held()
        self._count += len(items)
        return items

    def look_ahead(self) -> None:
        try:
            self._ahead = next(self._it, _EMPTY)
        except Exception as exc:
            self._error = exc
            return
        self.exhausted = self._ahead is _EMPTY

    def handed_out(self, count: int, state: Any) -> None:
        self._count += count


def build_reader(config: InputConfig, name: str, worker_index: int, worker_count: int, resume_state: Any) -> Reader:
    """The reader of ``config`` for one worker, resumed at ``resume_state`` (``None``: fresh)."""
    if isinstance(config, TestingBuilderInputConfig):
        if resume_state is None:
            resume_state = 0
        if type(resume_state) is not int or resume_state < 0:
            raise ValueError(f"{name}: resume state must be an item count, got {resume_state!r}")
        share = distribute(config.builder(), worker_index, worker_count)
        return TestingReader(name, islice(share, resume_state, None), resume_state)
    if isinstance(config, ManualInputConfig):
        built = config.input_builder(worker_index, worker_count, resume_state)
        try:
            iterator = iter(built)
        except TypeError:
            raise TypeError(
                f"{name}: the input builder must return an iterable of (state, item) 2-tuples, got {describe(built)}"
            ) from None
        return (BatchReader if config.batched else ManualReader)(name, iterator, resume_state)
    if isinstance(config, KafkaInputConfig):
        # Imported here: only a flow that reads Kafka needs the client (millrace[kafka]).
        from .kafka_source import build_kafka_reader

        return build_kafka_reader(config, name, worker_index, worker_count, resume_state)
    raise TypeError(f"{name}: unsupported input configuration {describe(config)}")


def merge_resume_states(config: InputConfig, worker_index: int, states: dict[int, Any]) -> Any:
    """The resume state of worker ``worker_index`` of a grown cluster, from ``states``: the
    resume state of every old worker of this input, by old worker index. An input read in
    shares of the whole source (Kafka partitions, assigned anew for the new worker count)
    gets what every old worker had; any other keeps its own old index's (``None``: a new
    worker).

    >>> merge_resume_states(ManualInputConfig(lambda index, count, state: []), 1, {0: 5, 1: 7})
    7
    >>> merge_resume_states(KafkaInputConfig(["b:9092"], "t"), 2, {0: {0: 5, 2: 9}, 1: {1: 7}})
    {0: 5, 2: 9, 1: 7}
    """
    if isinstance(config, KafkaInputConfig):
        merged: dict[Any, Any] = {}
        for _, state in sorted(states.items()):
            if not isinstance(state, dict):
                return state  # not offsets: the reader says what is wrong with it
            merged.update(state)
        return merged or None
    return states.get(worker_index)

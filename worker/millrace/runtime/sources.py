"""Per-worker readers built from input configurations.

A reader hands out batches of items and knows the resume state after the last item it handed
out. It looks one item ahead, so that it knows it is exhausted in the same epoch as its last
item, as the input operators of the reference engine do.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from time import monotonic
from typing import Any

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


class Reader:
    """Reads one worker's share of one input."""

    name: str
    exhausted: bool = False

    def read(self, limit: int) -> list[Any]:
        """Up to ``limit`` items; fewer (even none) when the source has nothing yet."""
        raise NotImplementedError

    @property
    def state(self) -> Any:
        """What resumes this input right after the last item :meth:`read` returned."""
        raise NotImplementedError


class ManualReader(Reader):
    """Reads ``(state, item)`` 2-tuples, or a bare ``None`` for "nothing yet"."""

    def __init__(self, name: str, iterator: Iterator[Any], resume_state: Any) -> None:
        self.name = name
        self._it = iterator
        self._state = resume_state
        self._ahead: Any = _EMPTY

    @property
    def state(self) -> Any:
        return self._state

    def _bad(self, got: Any) -> TypeError:
        return TypeError(
            f"{self.name}: the input builder must yield (state, item) 2-tuples or None, "
            f"got {describe(got)}"
        )

    def read(self, limit: int) -> list[Any]:
        """Up to ``limit`` items, in chunks of 1, 2, 4, ... with a look at the clock between
        chunks: a source that takes its time per item (a slow API, a sleeping generator) ends
        its batch after about :data:`BATCH_SECONDS`, so its items flow on and epochs close on
        time, while a fast source still fills whole batches at a dozen clock reads each."""
        if self.exhausted:
            return []
        items: list[Any] = []
        append = items.append
        last = None
        if self._ahead is not _EMPTY:
            last = self._ahead
            append(last[1])
            self._ahead = _EMPTY
            limit -= 1
        started = monotonic()
        chunk = 1
        while limit > 0:
            want = min(chunk, limit)
            taken = 0
            for got in islice(self._it, want):
                if type(got) is tuple and len(got) == 2:
                    append(got[1])
                    last = got
                    taken += 1
                elif got is None:
                    break
                else:
                    raise self._bad(got)
            else:
                if taken < want:
                    self.exhausted = True
                    break
                limit -= want
                if monotonic() - started < BATCH_SECONDS:
                    chunk *= 2
                    continue
                self._look_ahead()
                break
            break  # a bare None: nothing more for now
        else:
            self._look_ahead()
        if last is not None:
            self._state = last[0]
        return items

    def _look_ahead(self) -> None:
        got = next(self._it, _EMPTY)
        if got is _EMPTY:
            self.exhausted = True
        elif type(got) is tuple and len(got) == 2:
            self._ahead = got
        elif got is not None:
            raise self._bad(got)


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
        if self.exhausted:
            return []
        if self._ahead is not _EMPTY:
            items = [self._ahead]
            self._ahead = _EMPTY
            items.extend(islice(self._it, limit - 1))
        else:
            items = list(islice(self._it, limit))
        self._count += len(items)
        if len(items) < limit:
            self.exhausted = True
        else:
            self._ahead = next(self._it, _EMPTY)
            self.exhausted = self._ahead is _EMPTY
        return items


def build_reader(
    config: InputConfig, name: str, worker_index: int, worker_count: int, resume_state: Any
) -> Reader:
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
                f"{name}: the input builder must return an iterable of (state, item) "
                f"2-tuples, got {describe(built)}"
            ) from None
        return ManualReader(name, iterator, resume_state)
    if isinstance(config, KafkaInputConfig):
        raise NotImplementedError(
            f"{name}: KafkaInputConfig needs Kafka support, which this build of millrace does "
            "not include"
        )
    raise TypeError(f"{name}: unsupported input configuration {describe(config)}")

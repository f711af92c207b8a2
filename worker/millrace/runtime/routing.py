"""Key ownership: every process must agree which worker holds a key.

Python's ``hash()`` of a ``str`` is salted per process, so string keys are hashed with CRC-32 of
their UTF-8 bytes instead; ``int`` keys go to ``key % worker_count``.
"""

from __future__ import annotations

from itertools import compress, repeat
from operator import itemgetter, mod, not_
from typing import Any
from zlib import crc32

from .errors import bad_keyed_item

KEY_TYPES = (str, int)
_key_of = itemgetter(0)
_KEY_TYPE_SET = frozenset(KEY_TYPES)
# Caching owners keeps routing to one dict lookup per item for the usual small key spaces;
# the cap keeps memory bounded when keys never repeat.
_CACHE_LIMIT = 1 << 17
# Up to this many workers a batch is split by one C pass per worker; beyond, item by item.
_PASSES_UP_TO = 8
_INT = {int}


def stable_hash(key: str) -> int:
    """A hash of ``key`` that is the same in every process and every run.

    >>> stable_hash("millrace")
    3896333035
    """
    return crc32(key.encode("utf-8", "surrogatepass"))


def owner(key: object, worker_count: int) -> int:
    """The index of the worker that owns ``key`` among ``worker_count`` workers."""
    if type(key) is int:
        return key % worker_count
    if type(key) is str:
        return stable_hash(key) % worker_count
    raise TypeError(f"a key must be a str or an int, got {key!r}")


def check_pairs(batch: list[Any], step_name: str) -> None:
    """After a step's unpacking failed: raise the TypeError for a tuple that is not a pair,
    if there is one (otherwise the ValueError came from user code and stands)."""
    for item in batch:
        if type(item) is not tuple or len(item) != 2:
            raise bad_keyed_item(step_name, item)


class Router:
    """Splits batches of keyed items by owning worker, caching each key's owner.

    A batch's keys are looked up and the batch split by C loops (``map``, ``compress``):
    a few passes over the batch instead of a Python loop per item. Anything unusual (a bad
    item, many workers) takes the item-by-item path, which also names a bad item.

    A loop that routes item by item itself (see :mod:`.chain`) reads :attr:`owners` and
    calls :meth:`owner_of` for a ``str`` key it does not find there.
    """

    def __init__(self, worker_count: int, me: int = 0) -> None:
        self.worker_count = worker_count
        self.me = me
        #: The owner of every key seen lately (bounded: cleared when it grows too large).
        self.owners: dict[Any, int] = {}

    def owner_of(self, key: Any) -> int:
        """The owner of ``key``, cached in :attr:`owners`."""
        owners = self.owners
        if len(owners) > _CACHE_LIMIT:
            owners.clear()
        index = owners[key] = owner(key, self.worker_count)
        return index

    def split(self, batch: list[Any], step_name: str) -> list[list[Any]]:
        """``batch`` as one list per worker.

        Raises for an item that cannot be routed: one without a first element, or whose first
        element is not a ``str`` or ``int``. Items are not checked further here: a list or a
        tuple of the wrong length goes where its first element says, and the step that
        receives it rejects it by name (see :mod:`.keyed`), which spares every valid item two
        passes.
        """
        count = self.worker_count
        if count > _PASSES_UP_TO or not batch:
            return self._split_each(batch, step_name)
        try:
            keys = list(map(_key_of, batch))
        except Exception:  # an item with no first element: the item path names it
            return self._split_each(batch, step_name)
        key_types = set(map(type, keys))
        if key_types == _INT:
            dests = list(map(mod, keys, repeat(count)))  # no cache needed: key % count
        elif key_types <= _KEY_TYPE_SET:
            dests = list(map(self.owners.get, keys))
            if None in dests:
                missing = {key: self.owner_of(key) for key, dest in zip(keys, dests, strict=True) if dest is None}
                dests = [missing[key] if dest is None else dest for key, dest in zip(keys, dests, strict=True)]
        else:
            return self._split_each(batch, step_name)
        if count == 2:
            return [list(compress(batch, map(not_, dests))), list(compress(batch, dests))]
        return [list(compress(batch, map(worker.__eq__, dests))) for worker in range(count)]

    def _split_each(self, batch: list[Any], step_name: str) -> list[list[Any]]:
        parts: list[list[Any]] = [[] for _ in range(self.worker_count)]
        owners = self.owners
        appenders = [part.append for part in parts]
        for item in batch:
            if type(item) is tuple and len(item) == 2:
                key = item[0]
                key_type = type(key)
                if key_type is str or key_type is int:
                    # The type test above also keeps 1.0 or True from hitting the cache
                    # entry of the int 1.
                    index = owners.get(key)
                    if index is None:
                        index = self.owner_of(key)
                    appenders[index](item)
                    continue
            raise bad_keyed_item(step_name, item)
        return parts

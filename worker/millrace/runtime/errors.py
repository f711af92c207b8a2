"""How failures are named: every error says which step, which worker, and what value."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

# Defined beside the other shared vocabulary, so the transport can raise it too; imported from
# here by users and the runtime alike.
from ..common.errors import ClusterError as ClusterError
from ..common.errors import PeerLost as PeerLost

_NOTE_MARK = "millrace: "


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RemoteTraceback(Exception):
    """The traceback of an exception raised in another process, as text: the cause of the
    exception :func:`~millrace.execution.spawn_cluster` re-raises, so that the file and line in
    your code where it happened show (as :mod:`multiprocessing.pool` does it).

    >>> cause = RemoteTraceback('  File "flow.py", line 3, in double\\nZeroDivisionError: x\\n')
    >>> print(cause)
    <BLANKLINE>
    The traceback in the process where it was raised:
      File "flow.py", line 3, in double
    ZeroDivisionError: x
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\nThe traceback in the process where it was raised:\n{self.text.rstrip()}"


def bad_keyed_item(step_name: str, item: Any) -> TypeError:
    """The error for an item a stateful step cannot route: not a ``(key, value)`` 2-tuple, or a
    pair whose key is neither a ``str`` nor an ``int`` (then the key is what it names).

    >>> print(bad_keyed_item("reduce 'sum'", ["k", 1]))
    reduce 'sum' needs a (key, value) 2-tuple to route each item to the worker that owns its key,
    got ['k', 1] of type list
    >>> print(bad_keyed_item("reduce 'sum'", (1.5, 1)))
    reduce 'sum': keys must be str or int, got the key 1.5 of type float (in the item (1.5, 1))
    """
    if type(item) is tuple and len(item) == 2:
        key = item[0]
        return TypeError(
            f"{step_name}: keys must be str or int, got the key {_short(key)} of type {type(key).__name__} "
            f"(in the item {_short(item)})"
        )
    return TypeError(
        f"{step_name} needs a (key, value) 2-tuple to route each item to the worker that owns its key, "
        f"got {_short(item)} of type {type(item).__name__}"
    )


def cannot_travel(step_name: str, items: list[Any], dest: int, exc: Exception) -> TypeError:
    """The error for items bound for ``step_name`` on worker ``dest`` of another process that
    cannot be pickled; it names the first such item."""
    culprit: Any = items
    for item in items:
        try:
            pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            culprit = item
            break
    return TypeError(
        f"{step_name}: the item {_short(culprit)} must move to worker {dest} in another process, "
        f"but it cannot be pickled ({type(exc).__name__}: {exc}); on a cluster of processes the "
        "keys and values reaching a stateful step must be picklable"
    )


def annotate(exc: BaseException, step_name: str, worker_index: int) -> None:
    """Attach a note naming the step and worker, once, so the exception keeps its own type."""
    notes: Sequence[str] = getattr(exc, "__notes__", ())
    if any(note.startswith(_NOTE_MARK) for note in notes):
        return
    exc.add_note(f"{_NOTE_MARK}raised in {step_name} on worker {worker_index}")


def where(exc: BaseException) -> str | None:
    """The step-and-worker note :func:`annotate` attached, if any."""
    notes: Sequence[str] = getattr(exc, "__notes__", ())
    for note in notes:
        if note.startswith(_NOTE_MARK):
            return note[len(_NOTE_MARK) :]
    return None


def describe(value: Any) -> str:
    """A bounded ``repr`` for error messages."""
    return _short(value)

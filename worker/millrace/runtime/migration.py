"""What the workers of a recovered cluster tell each other before any data flows.

A worker with a recovery directory starts in up to three phases, each a round in which it
sends its word to its peers and waits for theirs:

1. ``PROGRESS``: every worker sends every other the summary of its store
   (:class:`~.resume.StoreSummary`); with all of them, each reaches the same
   :class:`~.resume.ResumePlan` (:func:`~.resume.plan_resume`).
2. ``MIGRATE``, only when the cluster has grown since the stores were written: each worker of
   the old cluster sends every worker the keyed state it owns now, in chunks, the last marked
   ``final``; a worker has all its state once every old worker's final chunk is in.
3. ``STAGED``, after a migration: each worker has written its store for the grown cluster
   beside its current one; once every worker has, each swaps its new store in (see
   :func:`.persistence.restore`).

Channels are FIFO per pair of workers, but a faster worker may be a phase ahead: its
migration may come before the last peer's progress, its ``STAGED`` before the last migration,
and once it is through, its ``DATA``, ``MARK`` and ``DONE`` of the resume epoch. So every
recovery message is kept whenever it comes, and anything else waits (:attr:`Recovery.deferred`)
until the worker has loaded its state and handles it as it would have at once.

:class:`Recovery` is these rounds without threads or sockets: the worker asks it for the
messages to send (:meth:`Recovery.share`, :meth:`Recovery.migrate`, :meth:`Recovery.stage`),
feeds it what it receives until :meth:`Recovery.ready`, then asks for the outcome
(:meth:`Recovery.plan`, :meth:`Recovery.owned`). ``STOP`` is the worker's own business.

>>> from millrace.runtime.exchange import DATA
>>> from millrace.runtime.resume import StoreSummary
>>> r = Recovery(index=1, count=2)
>>> r.share(StoreSummary(exists=False))
(4, 1, StoreSummary(exists=False, progress=-1, worker_count=0, flow_start=None, staged=None, run=None, draw=None))
>>> r.gather((DATA, 0, 4, [("k", 1)]))  # a faster peer is through already
>>> r.ready(), r.deferred
(False, [(0, 0, 4, [('k', 1)])])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .exchange import MIGRATE, PROGRESS, STAGED, Message
from .resume import ResumePlan, StoreSummary, plan_resume
from .routing import owner

# Keyed states per MIGRATE message when a recovered cluster grows: bounds one frame's size.
MIGRATE_CHUNK = 10_000
# What workers tell each other while they recover (and STOP, which the worker handles).
RECOVERY_KINDS = frozenset((PROGRESS, MIGRATE, STAGED))

# Marks an old worker's input state among the migrated entries (a step id is a str).
_INPUT = "input"

# Which round the worker waits for.
_NONE = 0
_SHARING = 1
_MIGRATING = 2
_STAGING = 3


class Recovery:
    """The recovery rounds of worker ``index`` of ``count`` (module docstring)."""

    def __init__(self, index: int, count: int) -> None:
        self.index = index
        self.count = count
        #: Every worker's store summary received so far, this worker's own first.
        self.summaries: dict[int, StoreSummary] = {}
        #: Messages of the running flow that came before this worker was ready for them, in
        #: the order they came.
        self.deferred: list[Message] = []
        # (step_id, key, state) that this worker owns in the grown cluster, in arrival order.
        self._migrated: list[tuple[Any, Any, Any]] = []
        #: Per input step id, the resume state of every old worker that sent one, once
        #: :meth:`owned` has sorted what migrated.
        self.migrated_inputs: dict[str, dict[int, Any]] = {}
        self._migration_senders: set[int] = set()
        self._old_count = 0
        self._staged_by: set[int] = set()
        self._round = _NONE

    def receive(self, msg: Message) -> None:
        """Keep a peer's ``PROGRESS``, ``MIGRATE`` or ``STAGED``, whichever round it is of."""
        kind = msg[0]
        if kind == PROGRESS:
            _, sender, info = msg
            self.summaries[sender] = info
        elif kind == MIGRATE:
            _, sender, entries, final = msg
            self._migrated.extend(entries)
            if final:
                self._migration_senders.add(sender)
        elif kind == STAGED:
            self._staged_by.add(msg[1])
        else:
            raise ValueError(f"not a recovery message: {msg!r}")

    def gather(self, msg: Message) -> None:
        """A message received while a round is awaited: kept if it is of recovery, deferred
        if it is of the running flow."""
        if msg[0] in RECOVERY_KINDS:
            self.receive(msg)
        else:
            self.deferred.append(msg)

    def ready(self) -> bool:
        """Whether the round awaited has every worker's word."""
        if self._round == _SHARING:
            return len(self.summaries) == self.count
        if self._round == _MIGRATING:
            return len(self._migration_senders) == self._old_count
        if self._round == _STAGING:
            return len(self._staged_by) == self.count
        return True

    # -- 1. where to resume ----------------------------------------------------------------

    def share(self, summary: StoreSummary) -> Message:
        """Count this worker's store ``summary``; return the ``PROGRESS`` to send every peer."""
        self.summaries[self.index] = summary
        self._round = _SHARING
        return (PROGRESS, self.index, summary)

    def plan(self, where: str | Path) -> ResumePlan:
        """The plan every worker reaches from all summaries (``where``: for errors)."""
        assert self.ready(), "the summaries of some workers are missing"
        return plan_resume(self.summaries, self.count, where)

    # -- 2. the keyed state of a grown cluster ---------------------------------------------

    def migrate(
        self, keyed: dict[str, dict[Any, Any]], old_count: int, inputs: dict[str, Any] | None = None
    ) -> list[tuple[int, Message]]:
        """Sort this worker's ``keyed`` state (per step id, per key) by each key's owner among
        ``count`` workers; keep its own, and return the ``(dest, MIGRATE)`` messages that take
        the rest to them, in the order to send. A worker of the old cluster (``index <
        old_count``) sends every other worker at least one, the final one, even if empty.
        Its ``inputs`` (resume state per input step id) go to every worker: an input whose
        share depends on the worker count (Kafka partitions) needs all of them
        (:attr:`migrated_inputs`)."""
        outgoing: dict[int, list[tuple[Any, Any, Any]]] = {w: [] for w in range(self.count)}
        for step_id, states in keyed.items():
            for key, state in states.items():
                outgoing[owner(key, self.count)].append((step_id, key, state))
        for input_id, state in (inputs or {}).items():
            for entries in outgoing.values():
                entries.append(((_INPUT, input_id), self.index, state))
        self._migrated.extend(outgoing.pop(self.index))
        self._old_count = old_count
        self._round = _MIGRATING
        sends: list[tuple[int, Message]] = []
        if self.index < old_count:
            self._migration_senders.add(self.index)
            for dest, entries in outgoing.items():
                for start in range(0, max(len(entries), 1), MIGRATE_CHUNK):
                    chunk = entries[start : start + MIGRATE_CHUNK]
                    final = start + MIGRATE_CHUNK >= len(entries)
                    sends.append((dest, (MIGRATE, self.index, chunk, final)))
        return sends

    def owned(self) -> dict[str, dict[Any, Any]]:
        """The keyed state this worker owns in the grown cluster, per step id, once every
        worker of the old cluster has sent its share; what was kept of it is let go."""
        assert self.ready(), "some workers of the old cluster have not sent all their state"
        owned: dict[str, dict[Any, Any]] = {}
        for step_id, key, state in self._migrated:
            if type(step_id) is tuple:  # an old worker's input state: (_INPUT, input id), its index
                self.migrated_inputs.setdefault(step_id[1], {})[key] = state
            else:
                owned.setdefault(step_id, {})[key] = state
        self._migrated = []
        return owned

    # -- 3. the stores rewritten for the grown cluster -------------------------------------

    def stage(self) -> Message:
        """This worker has staged its rewritten store: return the ``STAGED`` to send every
        peer. Once :meth:`ready`, every store is staged and each may be swapped in."""
        self._staged_by.add(self.index)
        self._round = _STAGING
        return (STAGED, self.index)

    def take_deferred(self) -> list[Message]:
        """The recovery is over: the deferred messages, to handle in order, and no more."""
        deferred, self.deferred = self.deferred, []
        self._round = _NONE
        return deferred

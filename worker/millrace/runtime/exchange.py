"""Moving messages between workers: the worker loop's only view of its peers.

Workers of one process hand messages over through in-memory queues; messages for workers of
other processes go to a :class:`RemoteLink` (the ZeroMQ transport). Messages are tuples whose
first element is one of the kinds below. Per pair of workers, messages arrive in the order
they were sent, which the progress protocol in :mod:`.worker` relies on.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Protocol

# (DATA, stateful_step_index, epoch, items, sender); with a negative index ~k, partials for
# step k that combines (see combine.py): items is (window index, [(key, partial), ...])
DATA = 0
# (MARK, stateful_step_index, epoch, sender, eof): sender sent everything of epoch for that step
MARK = 1
# (DONE, epoch, sender, eof): sender finished every step of epoch
DONE = 2
# (STOP,): the cluster is failing; wake up and leave
STOP = 3
# (PROGRESS, sender, info): at start, what the sender's recovery store says (see worker.py)
PROGRESS = 4
# (MIGRATE, sender, entries, final): keyed state moving to its new owner when a recovered
# cluster has grown; entries are (step_id, key, state); final marks the sender's last one
MIGRATE = 5
# (STAGED, sender): sender wrote its store for the grown cluster beside its current one
STAGED = 6
# (CREDIT, sender, step, count): sender handled count more of the DATA for step this worker
# sent it (see credits.py)
CREDIT = 7

Message = tuple[Any, ...]

# A worker stops reading input while a queue it feeds holds more batches than this; it keeps
# draining its own inbox meanwhile, so two workers that wait on each other both make progress.
QUEUE_LIMIT = 32


class RemoteLink(Protocol):
    """Carries messages to workers of other processes (see :mod:`millrace.transport`)."""

    def send(self, dest: int, msg: Message) -> None: ...

    def congested(self) -> bool: ...

    def fail(self, reason: str, *, peer_lost: bool = False) -> None: ...


class Exchange:
    """The workers of one process, and the way to the others.

    ``first`` is the index of this process's first worker; its workers are
    ``first .. first + local_count - 1`` of ``worker_count``.
    """

    def __init__(
        self,
        worker_count: int,
        first: int = 0,
        local_count: int = 1,
        remote: RemoteLink | None = None,
        credit_window: int | None = None,
    ) -> None:
        self.worker_count = worker_count
        # How many DATA messages a worker may send a peer per step ahead of it (see credits.py;
        # None: credits.WINDOW).
        self.credit_window = credit_window
        self.first = first
        self.local_count = local_count
        self.remote = remote
        self.inboxes: list[queue.SimpleQueue[Message]] = [queue.SimpleQueue() for _ in range(local_count)]
        #: Per local worker, the items of ``DATA`` it got from each other process (written by
        #: the link's receiver thread only; what a worker of this process sends, it counts).
        self.received = [[0] * (worker_count // local_count) for _ in range(local_count)]
        self.stopping = threading.Event()
        self.reason: str | None = None
        # Whether the first reason is a peer that went away (see errors.PeerLost).
        self.peer_lost = False
        self._reason_lock = threading.Lock()

    def is_local(self, worker: int) -> bool:
        return self.first <= worker < self.first + self.local_count

    def send(self, dest: int, msg: Message) -> None:
        if self.first <= dest < self.first + self.local_count:
            self.inboxes[dest - self.first].put(msg)
        else:
            assert self.remote is not None, f"worker {dest} is in no process"
            self.remote.send(dest, msg)

    def broadcast(self, sender: int, msg: Message) -> None:
        for dest in range(self.worker_count):
            if dest != sender:
                self.send(dest, msg)

    def deliver(self, dest: int, msg: Message, sender: int | None = None) -> None:
        """Hand a message that came from process ``sender`` to a local worker."""
        if sender is not None and msg[0] == DATA:
            items = msg[3] if msg[1] >= 0 else msg[3][1]  # partials: (window index, pairs)
            self.received[dest - self.first][sender] += len(items)
        self.inboxes[dest - self.first].put(msg)

    def recv(self, worker: int, timeout: float | None) -> Message | None:
        inbox = self.inboxes[worker - self.first]
        try:
            if timeout is None:
                return inbox.get_nowait()
            return inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def congested(self) -> bool:
        if any(inbox.qsize() > QUEUE_LIMIT for inbox in self.inboxes):
            return True
        return self.remote is not None and self.remote.congested()

    def fail(self, reason: str, *, from_remote: bool = False, peer_lost: bool = False) -> None:
        """Stop every worker of this process and, unless the failure came from there, tell
        the other processes. The first reason wins. ``peer_lost``: the reason is a process
        that went away, not a failure of the flow (see :class:`.errors.PeerLost`)."""
        with self._reason_lock:
            if self.reason is None:
                self.reason = reason
                self.peer_lost = peer_lost
        self.stopping.set()
        for inbox in self.inboxes:
            inbox.put((STOP,))
        if self.remote is not None and not from_remote:
            self.remote.fail(reason, peer_lost=peer_lost)

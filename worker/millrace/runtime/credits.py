"""Credit-based flow control between workers: what bounds the memory a fast sender can fill.

A worker may have at most :data:`WINDOW` ``DATA`` messages to one peer that the peer has not
handled yet. The peer hands credit back (``CREDIT``) as it handles them, half a window at a
time. Every queue a ``DATA`` message can wait in (the sender's outbound queue, the sockets, the
receiver's inbox, a worker's set-aside messages) therefore holds at most ``WINDOW`` messages
per pair of workers, whatever the step that emits them: a read of input, a peer's message, the
end of input, a timer.

A worker out of credit for a peer waits, and while it waits it must keep others going, or two
workers that each wait for the other would never move (see :meth:`Credits.eligible`).

>>> c = Credits(index=0, count=3, window=4)
>>> c.available(1)
True
>>> for _ in range(4):
...     c.spend(1)
>>> c.available(1), c.available(2)
(False, True)
>>> c.handled(sender=2)  # handled one DATA of worker 2: not yet worth a message
>>> c.handled(sender=2)  # half a window: hand it back
(7, 0, 2)
>>> c.receive((CREDIT, 1, 2))
>>> c.available(1)
True
"""

from __future__ import annotations

from .exchange import CREDIT, DATA, Message

# Per pair of workers; each message is one batch (or part of one) for one step.
WINDOW = 16


class Credits:
    """Worker ``index``'s credit with each of ``count`` workers, and what it owes them."""

    def __init__(self, index: int, count: int, window: int = WINDOW) -> None:
        if window < 2:
            raise ValueError(f"the credit window must be at least 2, got {window}")
        self.index = index
        self.window = window
        self._credit = [window] * count
        self._owed = [0] * count

    def available(self, dest: int) -> bool:
        return self._credit[dest] > 0

    def spend(self, dest: int) -> None:
        self._credit[dest] -= 1

    def receive(self, msg: Message) -> None:
        """A peer's ``CREDIT``: it handled that many of this worker's ``DATA`` messages."""
        _, sender, count = msg
        self._credit[sender] += count

    def handled(self, sender: int) -> Message | None:
        """This worker handled one ``DATA`` of ``sender``; the ``CREDIT`` to send it, if due.
        Half a window at a time: a sender out of credit has at least half its window unhandled
        at this worker, so it is always paid back once those are handled."""
        owed = self._owed[sender] + 1
        if owed * 2 >= self.window:
            self._owed[sender] = 0
            return (CREDIT, self.index, owed)
        self._owed[sender] = owed
        return None

    @staticmethod
    def eligible(msg: Message, blocked_on: int) -> bool:
        """Whether a worker waiting for credit to send to step ``blocked_on`` may handle ``msg``
        now; what it may not, it sets aside, in order, for when it is no longer waiting.

        ``DATA`` of step ``blocked_on`` or later: handling it emits only to later steps, so
        waiting workers form no cycle (by induction from the last step, whose ``DATA`` every
        waiting worker handles and which emits to no peer), and nesting is as deep as the
        flow has steps. ``CREDIT``: what the worker waits for. The rest (earlier steps, the
        progress and recovery protocols) waits: its order relative to ``DATA`` matters.
        """
        kind = msg[0]
        return kind == CREDIT or (kind == DATA and int(msg[1]) >= blocked_on)

"""Credit-based flow control between workers: what bounds the memory a fast sender can fill.

A worker may have at most :data:`WINDOW` ``DATA`` messages for one step of one peer that the
peer has not handled yet. The peer hands credit back (``CREDIT``) as it handles them, half a
window at a time. Every queue a ``DATA`` message can wait in (the sender's outbound queue, the
sockets, the receiver's inbox, a worker's set-aside messages) therefore holds at most
``WINDOW`` messages per pair of workers and stateful step, whatever emits them: a read of
input, a peer's message, the end of input, a timer. Per step, because a waiting worker sets
aside the messages of earlier steps (see :meth:`Credits.eligible`): a window shared by all
steps could fill with those, and two workers would wait for each other's credit for ever.

A worker out of credit for a peer waits, and while it waits it must keep others going, or two
workers that each wait for the other would never move (see :meth:`Credits.eligible`).

Only ``DATA`` takes credit. The other messages need none, because their number does not grow
with the input: per pair of workers, ``MARK`` and ``DONE`` are one per stateful step and one
per epoch, and a worker starts epoch ``e + 1`` only once every worker is done with ``e``
(:mod:`.progress`), so at most two epochs' worth are ever in flight. ``CREDIT`` pays back at
least half a window at a time, and what is in flight never exceeds the window, so at most
two are in flight per channel. ``PROGRESS`` and ``STAGED`` are one per worker at start,
``STOP`` one per failure; ``MIGRATE`` moves a grown cluster's keyed state once, in chunks, before
any input is read. Giving them credit would also make them wait behind ``DATA``, and the
``CREDIT`` a waiting worker needs must never wait.

>>> c = Credits(index=0, window=4)
>>> c.available(1, step=0)
True
>>> for _ in range(4):
...     c.spend(1, step=0)
>>> c.available(1, step=0), c.available(1, step=1), c.available(2, step=0)
(False, True, True)
>>> c.handled(sender=2, step=0)  # handled one DATA of worker 2: not yet worth a message
>>> c.handled(sender=2, step=0)  # half a window: hand it back
(7, 0, 0, 2)
>>> c.receive((CREDIT, 1, 0, 2))
>>> c.available(1, step=0)
True
"""

from __future__ import annotations

from ..common.settings import VARIABLES
from .exchange import CREDIT, DATA, Message

# Per pair of workers and step; each message is one batch (or part of one): 64 by default
# (MILLRACE_CREDIT_WINDOW). Fewer (16) cost the two-process wordcount a fifth of its speed
# (benchmarks/ratios.py --only scaling): a worker waited for credit that its peer, busy with
# a batch of its own input, had not sent yet.
WINDOW: int = VARIABLES["MILLRACE_CREDIT_WINDOW"].default


class Credits:
    """Worker ``index``'s credit with each (worker, step), and what it owes them."""

    def __init__(self, index: int, window: int | None = None) -> None:
        window = WINDOW if window is None else window  # read now: a test may set a smaller one
        if window < 2:
            raise ValueError(f"the credit window must be at least 2, got {window}")
        self.index = index
        self.window = window
        self._credit: dict[tuple[int, int], int] = {}
        self._owed: dict[tuple[int, int], int] = {}

    def available(self, dest: int, step: int) -> bool:
        return self._credit.get((dest, step), self.window) > 0

    def spend(self, dest: int, step: int) -> None:
        channel = (dest, step)
        self._credit[channel] = self._credit.get(channel, self.window) - 1

    def receive(self, msg: Message) -> None:
        """A peer's ``CREDIT``: it handled that many of this worker's ``DATA`` for a step."""
        _, sender, step, count = msg
        channel = (sender, step)
        self._credit[channel] = self._credit.get(channel, self.window) + count

    def handled(self, sender: int, step: int) -> Message | None:
        """This worker handled one ``DATA`` of ``sender`` for ``step``; the ``CREDIT`` to send
        it, if due. Half a window at a time: a sender out of credit has at least half its
        window unhandled at this worker, so it is always paid back once those are handled."""
        channel = (sender, step)
        owed = self._owed.get(channel, 0) + 1
        if owed * 2 >= self.window:
            self._owed[channel] = 0
            return (CREDIT, self.index, step, owed)
        self._owed[channel] = owed
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
        if kind != DATA:
            return bool(kind == CREDIT)
        step = int(msg[1])
        # Partials of a combining step (~step) count as that step's DATA.
        return (~step if step < 0 else step) >= blocked_on

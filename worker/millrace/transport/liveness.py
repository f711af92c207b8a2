"""Which peers a process can still count on, judged from its connections to them.

A pure state machine: :class:`~millrace.transport.link.ZmqLink` feeds it the cluster's forming
and its PUSH sockets' connect and disconnect events, with the time, and asks it now and then
which peers are lost. No sockets, no threads, no clock of its own.

Two ways to lose a peer:

- it said HELLO (on its connection to us) but our connection to it is not made within
  :data:`CONNECT_GRACE` of the cluster forming: it may have died right after, and no later
  event would tell;
- our connection to it dropped before its BYE (the process ended, or stopped answering
  ZeroMQ's heartbeats: frozen, or its host gone), and the BYE (which travels on the other
  connection, so may come a moment later) does not follow within :data:`BYE_GRACE`.

>>> live = Liveness([1, 2])
>>> live.connected(1)
>>> live.formed(now=100.0)
>>> live.judge(now=104.0, finished=set())
[]
>>> live.judge(now=105.0, finished=set())
[(2, 'it said HELLO, but could not be reached within 5 s after the cluster formed')]
>>> live.disconnected(1, now=106.0)
>>> live.judge(now=108.0, finished={1})  # it said BYE: it finished
[]
"""

from __future__ import annotations

from collections.abc import Collection

__all__ = ["BYE_GRACE", "CONNECT_GRACE", "Liveness"]

# How long a dropped connection may wait for the peer's BYE before the peer counts as lost.
BYE_GRACE = 2.0
# How long after the cluster formed a connection to a peer may still be missing.
CONNECT_GRACE = 5.0


class Liveness:
    """The peers of one process, and which of them are suspected of being gone."""

    def __init__(self, peers: Collection[int]) -> None:
        self.peers = list(peers)
        #: Peers our connection reaches now (ZeroMQ reconnects by itself).
        self.reached: set[int] = set()
        #: Suspects, each with the time by which it must be cleared.
        self.suspects: dict[int, float] = {}
        # Suspects that a connection clears: not reached when the cluster formed.
        self._unreached: set[int] = set()
        self._formed = False

    def formed(self, now: float) -> None:
        """Every peer said HELLO: from now on, a peer our connection does not reach is suspect."""
        self._formed = True
        for peer in self.peers:
            if peer not in self.reached:
                self._unreached.add(peer)
                self.suspects.setdefault(peer, now + CONNECT_GRACE)

    def connected(self, peer: int) -> None:
        self.reached.add(peer)
        if peer in self._unreached:
            self._unreached.discard(peer)
            self.suspects.pop(peer, None)

    def disconnected(self, peer: int, now: float, *, expected: bool = False) -> None:
        """Our connection to ``peer`` dropped; ``expected`` when the peer may close (it said
        BYE, or the cluster is failing anyway)."""
        self.reached.discard(peer)
        if expected or not self._formed:
            return  # an end, or still connecting (judged when the cluster forms)
        self._unreached.discard(peer)
        self.suspects.setdefault(peer, now + BYE_GRACE)

    def judge(self, now: float, finished: Collection[int]) -> list[tuple[int, str]]:
        """The peers lost by ``now``, each with what happened; ``finished`` peers (they said
        BYE) are never lost. A peer is reported once."""
        lost = []
        for peer, deadline in list(self.suspects.items()):
            if peer in finished:
                del self.suspects[peer]
            elif now >= deadline:
                del self.suspects[peer]
                what = (
                    f"it said HELLO, but could not be reached within {CONNECT_GRACE:g} s after the cluster formed"
                    if peer in self._unreached
                    else "its connection closed, or it stopped answering, before the flow finished"
                )
                self._unreached.discard(peer)
                lost.append((peer, what))
        return lost

    def forget(self) -> None:
        """The cluster is failing anyway: nothing more to judge."""
        self.suspects.clear()

"""What a link counts: bytes to and from each peer, time its sender waited for a peer that read
nothing, and the frames it refused, by cause. Plain ints with one writer each (the sender
thread, or the receiver thread), which a metrics scrape reads from another thread.

>>> counters = LinkCounters(proc_count=2)
>>> counters.refuse("replayed")
>>> counters.refused["replayed"], counters.refused["unauthenticated"]
(1, 0)
"""

from __future__ import annotations

__all__ = ["REFUSAL_CAUSES", "LinkCounters"]

#: Why a frame is refused (``millrace_transport_frames_refused_total``'s ``reason``), and when.
REFUSAL_CAUSES: dict[str, str] = {
    "malformed": "it does not parse: wrong parts, magic, header, kind, sender or HELLO payload",
    "unauthenticated": "its MAC does not match the cluster secret",
    "misaddressed": "it names another destination, or this process as its sender",
    "stale_run": "it belongs to another run of the sender or of this process (sent before a restart)",
    "replayed": "its sequence number was seen already",
    "stale_hello": "a HELLO of a run this process answered already, or while the cluster runs",
    "other_cluster": "a HELLO of another cluster id or shape",
}


class LinkCounters:
    """The counters of one process's link, per peer process id (this process's entry stays 0)."""

    __slots__ = ("bytes_sent", "bytes_received", "send_blocked_seconds", "refused")

    def __init__(self, proc_count: int) -> None:
        self.bytes_sent = [0] * proc_count
        self.bytes_received = [0] * proc_count
        #: How long the sender waited for each peer to take a frame (its buffers were full).
        self.send_blocked_seconds = [0.0] * proc_count
        #: Frames refused, per cause; every cause is there from the start, so a scrape shows
        #: zeros, and no key is added while a scrape copies the dict.
        self.refused = dict.fromkeys(REFUSAL_CAUSES, 0)

    def refuse(self, cause: str) -> None:
        if cause not in self.refused:
            raise ValueError(f"unknown refusal cause {cause!r}; known: {sorted(REFUSAL_CAUSES)}")
        self.refused[cause] += 1

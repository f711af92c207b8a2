"""Which authenticated frames count, and what each one means for the cluster.

A pure state machine: :class:`~millrace.transport.link.ZmqLink` hands it every frame that
passed :func:`~millrace.transport.frames.open_frame`, and does what the :class:`Verdict` says.

Every frame names its sender's run (drawn when the sender joined a cluster). A peer's frames
count only once its HELLO told this process its run, only frames of that run, and only in
sequence from that HELLO on:

- a frame of a run not accepted (before the peer's HELLO, or an earlier run's, still in flight)
  is dropped: it belongs to no cluster this process is in;
- a number already seen is a replay: dropped, nothing is lost;
- a number that skips some means frames went missing: the cluster cannot go on;
- a HELLO of another cluster id or shape is refused, not a failure (a pod of an old template
  still stopping must not keep the new cluster from forming);
- a HELLO of a new run once the cluster formed means the peer started again: what it held of
  this run is lost.

>>> from millrace.transport import frames
>>> gate = Admission(proc_id=0, proc_count=2, workers_per_proc=1, cluster_id="c")
>>> hello = frames.hello_payload(1, 2, 1, "c")
>>> def frame(kind, seq, run=b"r" * 8, payload=b""):
...     return frames.Frame(kind, 1, 0, seq, payload, run)
>>> gate.admit(frame(frames.MESSAGE, 1), formed=False).action
'drop'
>>> gate.admit(frame(frames.HELLO, 1, payload=hello), formed=False).action
'join'
>>> gate.admit(frame(frames.MESSAGE, 2), formed=True).action
'accept'
>>> gate.admit(frame(frames.MESSAGE, 5), formed=True)
Verdict(action='gap', reason='lost frames 3..4', first=False)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from . import frames

__all__ = ["Admission", "Verdict"]

Action = Literal["accept", "drop", "join", "refuse", "restarted", "gap"]


@dataclass(frozen=True)
class Verdict:
    """What a frame means: ``accept`` it (the next of its run), ``drop`` it (``reason`` says
    why), the peer's HELLO lets it ``join``, ``refuse`` a HELLO of another cluster (``reason``;
    ``first`` when this refusal is new), the peer ``restarted``, or frames were lost (``gap``)."""

    action: Action
    reason: str = ""
    first: bool = False


class Admission:
    """The runs and sequence numbers of one process's peers."""

    def __init__(self, proc_id: int, proc_count: int, workers_per_proc: int, cluster_id: str) -> None:
        self.proc_id = proc_id
        self.proc_count = proc_count
        self.workers_per_proc = workers_per_proc
        self.cluster_id = cluster_id
        #: Why each peer's last HELLO was refused, while it is.
        self.refused: dict[int, str] = {}
        self._run: dict[int, bytes] = {}
        self._last_seq: dict[int, int] = {}

    def admit(self, frame: frames.Frame, *, formed: bool) -> Verdict:
        """The verdict on ``frame``; ``formed``: every peer's HELLO came already."""
        if frame.sender == self.proc_id:
            return Verdict("drop", "it claims to come from this very process")
        if frame.run != self._run.get(frame.sender):
            if frame.kind == frames.HELLO:
                return self._new_run(frame, formed)
            return Verdict(
                "drop",
                f"a frame of another run of process {frame.sender} (sent before it started again, "
                "or before the cluster formed again)",
            )
        last = self._last_seq[frame.sender]
        if frame.seq <= last:
            return Verdict("drop", f"replayed frame {frame.seq} from process {frame.sender}")
        if frame.seq != last + 1:
            # Lost (a send failed) or late (a reconnect can deliver an old connection's frames
            # after a new one's): either way their items would be missing or out of order.
            # Without a secret the frame may be forged, but taking it would make every later
            # frame of the real peer look replayed, and drop them all.
            return Verdict("gap", f"lost frames {last + 1}..{frame.seq - 1}")
        self._last_seq[frame.sender] = frame.seq
        return Verdict("accept")

    def _new_run(self, frame: frames.Frame, formed: bool) -> Verdict:
        try:
            shape = frames.parse_hello(frame.payload)
        except frames.BadFrame as exc:
            return Verdict("drop", str(exc))
        mine = {
            "proc_id": frame.sender,
            "proc_count": self.proc_count,
            "workers_per_proc": self.workers_per_proc,
            "cluster_id": self.cluster_id,
        }
        if shape != mine:
            why = (
                f"it runs as {shape} where process {self.proc_id} expects {mine}: every process "
                "must get the same address list, worker count and cluster id"
            )
            first = self.refused.get(frame.sender) != why
            self.refused[frame.sender] = why
            return Verdict("refuse", why, first)
        if formed:
            return Verdict("restarted")
        self.refused.pop(frame.sender, None)
        self._run[frame.sender] = frame.run
        self._last_seq[frame.sender] = frame.seq
        return Verdict("join")

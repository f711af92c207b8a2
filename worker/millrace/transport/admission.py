"""Which authenticated frames count, and what each one means for the cluster.

A pure state machine: :class:`~millrace.transport.link.ZmqLink` hands it every frame that
passed :func:`~millrace.transport.frames.open_frame`, and does what the :class:`Verdict` says.

Every process draws a fresh run when it joins a cluster. Two processes agree on each other's
runs with a HELLO handshake: a process's first HELLO to a peer names its own run only; a peer
answers each run it has not answered yet with a HELLO that names its own run and echoes the
other's. A HELLO that echoes this process's run can only have been made in this run, so it
*confirms* the sender's run; a HELLO that does not (a first HELLO, or one recorded in another
run and sent again) is only answered, never trusted. From then on every frame names sender,
destination and both runs, and counts only if all four are this pair's, in sequence:

- a frame addressed to another process, or naming another run of either side, is dropped:
  recorded elsewhere (another process, an earlier run) and sent again, it changes nothing,
  so the genuine frames still count;
- a number already seen is a replay: dropped, nothing is lost;
- a number that skips some means frames went missing: the cluster cannot go on;
- a HELLO of another cluster id or shape is refused, not a failure (a pod of an old template
  still stopping must not keep the new cluster from forming);
- once the cluster formed, a HELLO of a new run is dropped, not answered: a process that
  started again is lost (its connection dropped), and joins the cluster formed again; a
  confirmed one (answered before the cluster formed) means the peer started again: what it
  held of this run is lost.

>>> from millrace.transport import frames
>>> gate = Admission(proc_id=0, proc_count=2, workers_per_proc=1, cluster_id="c", run=b"m" * 8)
>>> hello = frames.hello_payload(1, 2, 1, "c")
>>> def frame(kind, seq, payload=b"", dest_run=b"m" * 8):
...     return frames.Frame(kind, 1, 0, seq, payload, b"r" * 8, dest_run)
>>> gate.admit(frame(frames.MESSAGE, 1), formed=False).action
'drop'
>>> gate.admit(frame(frames.HELLO, 1, hello, dest_run=frames.NO_RUN), formed=False)
Verdict(action='answer', reason='', first=False, cause='')
>>> gate.admit(frame(frames.HELLO, 2, hello), formed=False).action
'join'
>>> gate.admit(frame(frames.MESSAGE, 3), formed=True).action
'accept'
>>> gate.admit(frame(frames.MESSAGE, 4, dest_run=b"o" * 8), formed=True).reason
'a frame from process 1 for another run of process 0 (recorded earlier and sent again?)'
>>> gate.admit(frame(frames.MESSAGE, 6), formed=True)
Verdict(action='gap', reason='lost frames 4..5', first=False, cause='')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from . import frames

__all__ = ["Admission", "Verdict"]

Action = Literal["accept", "drop", "answer", "join", "refuse", "restarted", "gap"]

# How many runs of one peer a process answers; a HELLO of any further run is dropped. A peer
# starts again a few times at most; more runs are HELLOs recorded and sent again.
_ANSWERED_LIMIT = 64


@dataclass(frozen=True)
class Verdict:
    """What a frame means: ``accept`` it (the next of its run), ``drop`` it (``reason`` says
    why), ``answer`` a HELLO of a run not confirmed yet (with a HELLO echoing it), the peer's
    HELLO lets it ``join`` (answer it too, if it is the first of its run), ``refuse`` a HELLO
    of another cluster (``reason``; ``first`` when this refusal is new), the peer ``restarted``,
    or frames were lost (``gap``). A frame dropped or refused has a ``cause``, one of
    :data:`.counters.REFUSAL_CAUSES`."""

    action: Action
    reason: str = ""
    first: bool = False
    cause: str = ""


class Admission:
    """The runs and sequence numbers of one process's peers; ``run`` is this process's own."""

    def __init__(self, proc_id: int, proc_count: int, workers_per_proc: int, cluster_id: str, run: bytes) -> None:
        self.proc_id = proc_id
        self.proc_count = proc_count
        self.workers_per_proc = workers_per_proc
        self.cluster_id = cluster_id
        self.run = run
        #: Why each peer's last HELLO was refused, while it is.
        self.refused: dict[int, str] = {}
        #: Each peer's confirmed run: the one every frame to it names.
        self.runs: dict[int, bytes] = {}
        self._last_seq: dict[int, int] = {}
        self._answered: dict[int, set[bytes]] = {}

    def admit(self, frame: frames.Frame, *, formed: bool) -> Verdict:
        """The verdict on ``frame``; ``formed``: every peer's run is confirmed already."""
        peer = frame.sender
        if peer == self.proc_id:
            return Verdict("drop", "it claims to come from this very process", cause="misaddressed")
        if frame.dest != self.proc_id:
            return Verdict(
                "drop", f"a frame from process {peer} for process {frame.dest}, not this one", cause="misaddressed"
            )
        if frame.run != self.runs.get(peer):
            if frame.kind == frames.HELLO:
                return self._new_run(frame, formed)
            return Verdict(
                "drop",
                f"a frame of another run of process {peer} (sent before it started again, "
                "before the cluster formed again, or recorded earlier and sent again)",
                cause="stale_run",
            )
        # A HELLO of the confirmed run echoing another run of ours is the peer's answer to a
        # HELLO that was sent again: in its sequence, and harmless.
        if frame.dest_run != self.run and frame.kind != frames.HELLO:
            return Verdict(
                "drop",
                f"a frame from process {peer} for another run of process {self.proc_id} "
                "(recorded earlier and sent again?)",
                cause="stale_run",
            )
        last = self._last_seq[peer]
        if frame.seq <= last:
            return Verdict("drop", f"replayed frame {frame.seq} from process {peer}", cause="replayed")
        if frame.seq != last + 1:
            # Lost (a send failed) or late (a reconnect can deliver an old connection's frames
            # after a new one's): either way their items would be missing or out of order.
            # Without a secret the frame may be forged, but taking it would make every later
            # frame of the real peer look replayed, and drop them all.
            return Verdict("gap", f"lost frames {last + 1}..{frame.seq - 1}")
        self._last_seq[peer] = frame.seq
        return Verdict("accept")

    def _new_run(self, frame: frames.Frame, formed: bool) -> Verdict:
        peer = frame.sender
        try:
            shape = frames.parse_hello(frame.payload)
        except frames.BadFrame as exc:
            return Verdict("drop", str(exc), cause=exc.cause)
        mine = {
            "proc_id": peer,
            "proc_count": self.proc_count,
            "workers_per_proc": self.workers_per_proc,
            "cluster_id": self.cluster_id,
        }
        if shape != mine:
            why = (
                f"it runs as {shape} where process {self.proc_id} expects {mine}: every process "
                "must get the same address list, worker count and cluster id"
            )
            first = self.refused.get(peer) != why
            self.refused[peer] = why
            return Verdict("refuse", why, first, cause="other_cluster")
        answered = self._answered.setdefault(peer, set())
        first_of_run = frame.run not in answered
        if frame.dest_run != self.run:
            # Made before the peer knew our run (or recorded in another run): answer it, so a
            # live peer of that run can confirm itself, but trust nothing of it. Not once the
            # cluster runs: our answer would let a peer that starts again join this run, which
            # is ending (its loss shows in our connection to it, see .liveness), and a HELLO
            # sent again must not cost anything.
            if formed:
                return Verdict(
                    "drop", f"a HELLO of another run of process {peer} while the cluster runs", cause="stale_hello"
                )
            if not first_of_run:
                return Verdict(
                    "drop", f"a HELLO of process {peer} that this process answered already", cause="stale_hello"
                )
            if len(answered) >= _ANSWERED_LIMIT:
                return Verdict(
                    "drop", f"a HELLO of yet another run of process {peer}, left unanswered", cause="stale_hello"
                )
            answered.add(frame.run)
            return Verdict("answer")
        # It echoes our run, which no one could have recorded before we drew it: a confirmation,
        # however many other runs' HELLOs came before.
        answered.add(frame.run)
        if formed:
            return Verdict("restarted")
        self.refused.pop(peer, None)
        self.runs[peer] = frame.run
        self._last_seq[peer] = frame.seq
        return Verdict("join", first=first_of_run)

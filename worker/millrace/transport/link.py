"""One process's connections to the rest of its cluster, over ZeroMQ.

Each process binds one PULL socket at its own address and connects one PUSH socket to every
peer. A worker pickles its own messages (so a value that cannot travel fails in the worker
that sent it, naming its step); a sender thread owns the PUSH sockets and seals every frame
with the cluster's MAC. A receiver thread owns the PULL socket: it authenticates each frame
before decoding it, drops and logs anything malformed or replayed, and hands messages to local
workers; a frame that skips some of its sender's sequence numbers, or that cannot be decoded,
fails the cluster, since items are lost.
Per pair of processes there is one socket and one thread on each side, so frames arrive in
the order they were sent.

Lifecycle: :meth:`start` binds and connects and sends HELLO; :meth:`wait_ready` returns once a
HELLO came from every peer (or raises, naming who did not answer); :meth:`close` says BYE and
waits for the peers' BYE, so that nothing still in flight is lost. A peer whose connection
drops before its BYE is lost, and the whole cluster fails.

Runs: each link draws a random run id. Peers confirm each other's runs with a HELLO handshake
(see :mod:`.admission`), and every frame names sender, destination and the runs of both: what
an earlier run still had in flight (a process that started again, a cluster formed again after
a loss), or a frame recorded and sent again to another process or another run, is dropped and
logged, never mixed into this one, and the genuine frames still count. A HELLO of another
cluster (another id or shape), or one that fails authentication, is refused without failing:
a process of an old pod template that is still stopping, or anyone who can reach the port,
must not keep the new cluster from forming.
"""

from __future__ import annotations

import logging
import queue
import secrets
import socket
import struct
import threading
from typing import TYPE_CHECKING, Any

import zmq

from ..common.clock import SYSTEM_CLOCK, Clock
from ..common.errors import ClusterError, PeerLost
from . import frames
from .addresses import bind_endpoint, check_addresses, connect_endpoint
from .admission import Admission, Verdict
from .counters import LinkCounters
from .listener import HWM, Listener
from .liveness import Liveness
from .security import Security

if TYPE_CHECKING:
    from .protocols import Exchange, Message

log = logging.getLogger("millrace.transport")

_STOP = object()
# How many frames the receiver takes in a row before it looks at its other duties.
_COALESCE = 64
# Outbound messages queued beyond this make workers stop reading input for a while. What
# bounds the queue is the workers' credit (runtime/credits.py): a worker sends a peer no more
# than a window of messages it has not handled yet, so the receiver always reads its socket
# (and the credit that comes back never waits behind data).
OUTBOUND_LIMIT = 256
# A ZeroMQ socket monitor message: [16-bit event, 32-bit value; the endpoint]. Read here, not
# with zmq.utils.monitor, whose import brings asyncio: ~45 ms of every cluster process's start.
_MONITOR_EVENT = struct.Struct("=Hi")


class ZmqLink:
    """Process ``proc_id`` of the cluster at ``addresses``, each running ``workers_per_proc``
    workers. ``secret`` (bytes) authenticates every frame; ``None`` runs unauthenticated, open
    to the hosts of ``addresses`` only. ``encrypt``: CURVE with keys derived from the secret
    (see :mod:`.security`). ``listener``: this process's socket, already bound at its address
    with the same security (the link owns it).
    ``clock``: what the connect timeout and the grace periods for lost peers are measured on;
    the system clock but in tests (they drive a :class:`~millrace.common.clock.ManualClock`
    past a grace period instead of waiting it out)."""

    def __init__(
        self,
        addresses: list[str],
        proc_id: int,
        workers_per_proc: int,
        secret: bytes | None,
        connect_timeout: float,
        cluster_id: str = "",
        listener: Listener | None = None,
        clock: Clock = SYSTEM_CLOCK,
        encrypt: bool = False,
    ) -> None:
        self.hosts = check_addresses(addresses)
        self.security = Security(secret, encrypt, tuple(host for host, _ in self.hosts))
        self._monotonic = clock.monotonic
        # Which run of which cluster this process belongs to (the operator passes its pod
        # template hash), so a pod of an old template never joins a new cluster.
        self.cluster_id = cluster_id
        self.addresses = list(addresses)
        self.proc_id = proc_id
        self.proc_count = len(addresses)
        self.workers_per_proc = workers_per_proc
        self.key = frames.derive_key(secret)
        self.run = secrets.token_bytes(frames.RUN_SIZE)
        self.connect_timeout = connect_timeout
        self.peers = [p for p in range(self.proc_count) if p != proc_id]
        self._listener = listener
        self._outbound: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._push: dict[int, zmq.Socket[bytes]] = {}
        self._monitors: dict[zmq.Socket[bytes], int] = {}
        self._pull: zmq.Socket[bytes] | None = None
        self._exchange: Exchange | None = None
        self._hellos: set[int] = set()
        self._byes: set[int] = set()
        self._ready = threading.Event()
        self._all_bye = threading.Event()
        self._failing = threading.Event()
        self._closing = threading.Event()
        self._admission = Admission(proc_id, self.proc_count, workers_per_proc, cluster_id, self.run)
        # Peers whose HELLO failed authentication (while the cluster forms), for the timeout's error.
        self._bad_hellos: dict[int, str] = {}
        self._liveness = Liveness(self.peers)
        self._hello = frames.hello_payload(proc_id, self.proc_count, workers_per_proc, cluster_id)
        self._threads: list[threading.Thread] = []
        # Wakes the receiver out of its poll when the link closes (a byte on ``_wake[1]``).
        self._wake = socket.socketpair()
        self.dropped_frames = 0
        #: Bytes per peer, the sender's waits, frames refused by cause (for metrics).
        self.counters = LinkCounters(self.proc_count)
        # Peers the sender gave up on: they took nothing for too long (see _send).
        self._stalled: set[int] = set()
        # Workers' messages waiting in the outbound queue now, and at most, in count and bytes.
        self._queued_lock = threading.Lock()
        self.queued = self.queued_bytes = self.sent_messages = 0
        self.peak_queued = self.peak_queued_bytes = 0

    # -- setup -----------------------------------------------------------------------------

    def start(self, exchange: Exchange) -> None:
        self._exchange = exchange
        if self._listener is None:
            host, port = self.hosts[self.proc_id]
            self._listener = Listener(
                bind_endpoint(host, port), self.addresses[self.proc_id], self.proc_id, self.security
            )
        ctx = self._listener.ctx
        self._pull = self._listener.socket
        for peer in self.peers:
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.SNDHWM, HWM)
            push.setsockopt(zmq.SNDTIMEO, 100)
            push.setsockopt(zmq.RECONNECT_IVL, 100)
            push.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            # A connect to an address nobody answers (a replaced pod's old IP, still in DNS for
            # a moment) would otherwise hang for the system's TCP timeout, minutes, before the
            # next attempt resolves the name again and finds the new pod.
            push.setsockopt(zmq.CONNECT_TIMEOUT, 1000)
            # ZMTP heartbeats run in ZeroMQ's own threads, so a peer busy in user code still
            # answers, while a vanished host is noticed within the timeout.
            push.setsockopt(zmq.HEARTBEAT_IVL, 1000)
            push.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
            self.security.connecting(push)
            monitor = push.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
            self._monitors[monitor] = peer
            peer_host, peer_port = self.hosts[peer]
            try:
                push.connect(connect_endpoint(peer_host, peer_port))
            except zmq.ZMQError as exc:
                raise ClusterError(
                    f"process {self.proc_id} cannot connect to process {peer} at {self.addresses[peer]}: {exc}"
                ) from None
            self._push[peer] = push
        for peer in self.peers:
            self._outbound.put((peer, frames.HELLO, self._hello, frames.NO_RUN))
        for target, name in ((self._send_loop, "sender"), (self._receive_loop, "receiver")):
            thread = threading.Thread(target=target, name=f"millrace-{name}-{self.proc_id}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def wait_ready(self) -> None:
        """Return once every peer said HELLO; raise :class:`ClusterError` naming the silent ones
        after the connect timeout (:class:`PeerLost`: they may come later), or at once when the
        cluster is failing."""
        assert self._exchange is not None
        deadline = self._monotonic() + self.connect_timeout
        while not self._ready.wait(0.05):
            if self._exchange.stopping.is_set():
                raise ClusterError(self._exchange.reason or "the cluster is stopping")
            if self._monotonic() >= deadline:
                missing = [p for p in self.peers if p not in self._hellos]
                refusals = {**self._bad_hellos, **self._admission.refused}
                refused = "".join(f"; process {p} answered, but {refusals[p]}" for p in missing if p in refusals)
                raise PeerLost(
                    f"process {self.proc_id} could not reach "
                    + ", ".join(f"process {p} at {self.addresses[p]}" for p in missing)
                    + f" within {self.connect_timeout:g} s; are they running, and is the "
                    "address list the same everywhere?" + refused
                )

    # -- the RemoteLink interface used by Exchange -----------------------------------------

    def send(self, dest: int, msg: Message) -> None:
        """Queue ``msg`` for worker ``dest``; pickled here, in the sending worker's thread, so
        an unpicklable value raises to that worker."""
        payload = frames.dump_messages([(dest, msg)])
        with self._queued_lock:
            self.queued += 1
            self.sent_messages += 1
            self.queued_bytes += len(payload)
            self.peak_queued = max(self.peak_queued, self.queued)
            self.peak_queued_bytes = max(self.peak_queued_bytes, self.queued_bytes)
        self._outbound.put((dest // self.workers_per_proc, frames.MESSAGE, payload, None))

    def congested(self) -> bool:
        return self._outbound.qsize() > OUTBOUND_LIMIT

    def fail(self, reason: str, *, peer_lost: bool = False) -> None:
        self._failing.set()
        payload = frames.abort_payload(reason, lost=peer_lost)
        for peer in self.peers:
            self._outbound.put((peer, frames.ABORT, payload, None))

    # -- shutdown --------------------------------------------------------------------------

    def close(self, clean: bool, bye_timeout: float = 30.0) -> None:
        """Finish: on a clean end, BYE to every peer and wait for theirs; then close."""
        if clean and not self._failing.is_set():
            for peer in self.peers:
                self._outbound.put((peer, frames.BYE, b"", None))
            if not self._all_bye.wait(bye_timeout):
                missing = [p for p in self.peers if p not in self._byes]
                log.warning(
                    "process %d: no goodbye from processes %s; closing anyway",
                    self.proc_id,
                    missing,
                )
        log.info(
            "process %d: sent %d messages; at most %d messages (%d bytes) waited to be sent",
            self.proc_id,
            self.sent_messages,
            self.peak_queued,
            self.peak_queued_bytes,
        )
        self._closing.set()
        self._outbound.put(_STOP)
        self._wake[1].send(b"x")
        for thread in self._threads:
            thread.join(timeout=5.0)
        for end in self._wake:
            end.close()
        for monitor in self._monitors:
            monitor.close(linger=0)
        for push in self._push.values():
            # After a failure the ABORT frames must still get out; after a clean end
            # everything was delivered already (the peers said BYE).
            push.close(linger=1000)
        if self._listener is not None:
            self._listener.close()

    # -- threads ---------------------------------------------------------------------------

    def _send_loop(self) -> None:
        seq = dict.fromkeys(self.peers, 0)
        runs = self._admission.runs  # written by the receiver; a peer's entry only once confirmed
        try:
            while True:
                item = self._outbound.get()
                if item is _STOP:
                    return
                peer, kind, payload, dest_run = item
                if kind == frames.MESSAGE:
                    with self._queued_lock:
                        self.queued -= 1
                        self.queued_bytes -= len(payload)
                    if self._failing.is_set():
                        continue  # after a failure only ABORT matters
                if dest_run is None:  # the peer's run as confirmed now (a HELLO names its own)
                    dest_run = runs.get(peer, frames.NO_RUN)
                seq[peer] += 1
                parts = frames.seal(self.key, kind, self.proc_id, peer, seq[peer], payload, self.run, dest_run)
                self._send(peer, parts)
                self.counters.bytes_sent[peer] += sum(map(len, parts))
        except Exception as exc:  # a bug here must not leave the peers waiting forever
            log.exception("process %d: sender failed", self.proc_id)
            assert self._exchange is not None
            self._exchange.fail(f"process {self.proc_id}: the network sender failed: {exc!r}")

    def _send(self, peer: int, parts: list[bytes]) -> None:
        push = self._push[peer]
        stalled_since: float | None = None
        while True:
            if peer in self._stalled:
                return  # lost already: what is still queued for it can never go
            try:
                # Copying a frame of a few KiB is cheaper than ZeroMQ's zero-copy tracking.
                push.send_multipart(parts)
                if stalled_since is not None:
                    self.counters.send_blocked_seconds[peer] += self._monotonic() - stalled_since
                return
            except zmq.Again:
                # The peer is not reading: slow (wait for it: that is the backpressure), or
                # stuck or gone, once it has taken nothing for as long as the cluster waits
                # for a peer to join. Leaving, we stop trying at once.
                if self._closing.is_set():
                    return
                now = self._monotonic()
                if stalled_since is None:
                    stalled_since = now
                elif now - stalled_since >= self.connect_timeout:
                    self._stalled.add(peer)
                    self._lose(
                        f"process {peer} ({self.addresses[peer]}) has taken nothing that process "
                        f"{self.proc_id} sent for {self.connect_timeout:g} s: it is stuck (or the "
                        "network is), so the cluster cannot go on"
                    )
                    return
            except zmq.ZMQError as exc:
                log.warning("process %d: send to process %d failed: %s", self.proc_id, peer, exc)
                return

    def _receive_loop(self) -> None:
        assert self._pull is not None and self._exchange is not None
        pull = self._pull
        exchange = self._exchange
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        poller.register(self._wake[0], zmq.POLLIN)
        for monitor in self._monitors:
            poller.register(monitor, zmq.POLLIN)
        try:
            while not self._closing.is_set():
                ready = dict(poller.poll(100))
                if pull in ready:
                    for _ in range(_COALESCE):
                        try:
                            parts = pull.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._on_frame(parts)
                for monitor, peer in self._monitors.items():
                    if monitor in ready:
                        self._on_monitor_event(monitor, peer)
                if self._liveness.suspects:
                    self._judge_suspects()
        except zmq.ContextTerminated:
            pass
        except Exception as exc:  # a bug here must not leave the workers waiting forever
            log.exception("process %d: receiver failed", self.proc_id)
            exchange.fail(f"process {self.proc_id}: the network receiver failed: {exc!r}")

    def _drop(self, why: str, sender: int | None = None, cause: str = "malformed") -> None:
        self.dropped_frames += 1
        self.counters.refuse(cause)
        claimed = f" claiming to come from process {sender} ({self.addresses[sender]})" if sender is not None else ""
        log.warning(
            "process %d: dropped a frame%s received on %s: %s",
            self.proc_id,
            claimed,
            self.addresses[self.proc_id],
            why,
        )

    def _on_frame(self, parts: list[bytes]) -> None:
        assert self._exchange is not None
        try:
            frame = frames.open_frame(self.key, parts, self.proc_count)
        except frames.BadFrame as exc:
            if exc.kind == frames.HELLO and exc.sender is not None:
                # Anyone who reaches the port can send this: it must not stop the cluster
                # from forming with the genuine peer. If no genuine HELLO comes, the timeout's
                # error says what this one suggests.
                self._bad_hellos[exc.sender] = (
                    "its HELLO failed authentication: it holds a different cluster secret (or someone else sent it)"
                )
            self._drop(str(exc), exc.sender, exc.cause)
            return
        self.counters.bytes_received[frame.sender] += sum(map(len, parts))
        verdict = self._admission.admit(frame, formed=self._ready.is_set())
        if verdict.action != "accept":
            self._on_verdict(frame, verdict)
            return
        if frame.kind == frames.MESSAGE:
            try:
                messages = frames.load_messages(frame.payload)
            except frames.BadFrame as exc:
                # The frame came in its sender's sequence (authenticated, too, with a secret):
                # dropping it would lose data.
                self._failing.set()
                self._exchange.fail(
                    f"process {self.proc_id} cannot decode data that process {frame.sender} "
                    f"({self.addresses[frame.sender]}) sent: {exc}; do all processes run the "
                    "same code and library versions?"
                )
                return
            for dest, msg in messages:
                if self._exchange.is_local(dest):
                    self._exchange.deliver(dest, msg, frame.sender)
                else:
                    # The frame is for this process and in its sender's sequence, so this is
                    # the sender's mistake, and items are lost: not something to drop quietly.
                    self._failing.set()
                    self._exchange.fail(
                        f"process {self.proc_id} got a message for worker {dest}, which is not in "
                        f"this process, from process {frame.sender} ({self.addresses[frame.sender]}): "
                        "do all processes get the same worker count?"
                    )
                    return
        elif frame.kind == frames.ABORT:
            reason, lost = frames.parse_abort(frame.payload)
            self._failing.set()
            self._exchange.fail(reason, from_remote=True, peer_lost=lost)
        elif frame.kind == frames.BYE:
            self._byes.add(frame.sender)
            if len(self._byes) == len(self.peers):
                self._all_bye.set()

    def _on_verdict(self, frame: frames.Frame, verdict: Verdict) -> None:
        """Act on a frame that does not simply count (see :mod:`.admission`)."""
        assert self._exchange is not None
        peer = frame.sender
        where = f"process {peer} ({self.addresses[peer]})"
        if verdict.action == "drop":
            self._drop(verdict.reason, peer, verdict.cause)
        elif verdict.action == "answer":
            # So that a peer of that run, if it is a live one, can confirm itself.
            self._outbound.put((peer, frames.HELLO, self._hello, frame.run))
        elif verdict.action == "refuse":
            self.counters.refuse(verdict.cause)
            if verdict.first:
                log.warning("process %d: refused a HELLO from %s: %s", self.proc_id, where, verdict.reason)
        elif verdict.action == "join":
            if verdict.first:  # its first HELLO of this run: it needs our answer to confirm us
                self._outbound.put((peer, frames.HELLO, self._hello, frame.run))
            self._hellos.add(peer)
            self._bad_hellos.pop(peer, None)
            if len(self._hellos) == len(self.peers):
                self._formed()
        elif verdict.action == "restarted":
            self._lose(f"{where} started again while the cluster ran, so what it held of this run is lost")
        elif verdict.action == "gap":
            self._lose(
                f"process {self.proc_id} {verdict.reason} from {where}: its connection was interrupted, "
                "and the items in them cannot be recovered"
            )

    def _lose(self, reason: str) -> None:
        """Stop this run: a peer went away (a cluster formed again can go on)."""
        assert self._exchange is not None
        self._failing.set()
        self._exchange.fail(reason, peer_lost=True)

    def _formed(self) -> None:
        """Every peer said HELLO: any of them our connection does not reach soon is lost."""
        self._liveness.formed(self._monotonic())
        self._ready.set()

    def _on_monitor_event(self, monitor: zmq.Socket[bytes], peer: int) -> None:
        while True:
            try:
                parts = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(parts) != 2 or len(parts[0]) != _MONITOR_EVENT.size:
                raise ValueError(f"malformed ZeroMQ monitor message {parts!r}")
            self._on_connection(peer, _MONITOR_EVENT.unpack(parts[0])[0])

    def _on_connection(self, peer: int, event: int) -> None:
        """Our connection to ``peer`` was made (``EVENT_CONNECTED``) or dropped."""
        if event == zmq.EVENT_CONNECTED:
            self._liveness.connected(peer)
        elif event == zmq.EVENT_DISCONNECTED:
            # After its BYE, or once the cluster is failing, a peer may close as it likes.
            expected = peer in self._byes or self._failing.is_set()
            self._liveness.disconnected(peer, self._monotonic(), expected=expected)

    def _judge_suspects(self) -> None:
        if self._failing.is_set():
            self._liveness.forget()
            return
        for peer, what in self._liveness.judge(self._monotonic(), finished=self._byes):
            self._lose(f"lost process {peer} ({self.addresses[peer]}): {what} (the process died or the network failed)")

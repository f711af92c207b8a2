"""The progress protocol (MARK, DONE) as a state machine: what a worker does at the end of an
epoch, for every order in which its peers' words may come; no threads, no sockets (the runs
behind these cases are in test_cluster.py and test_delivery_order.py)."""

from __future__ import annotations

import itertools

import pytest

from millrace.runtime.exchange import DONE, MARK, Message
from millrace.runtime.progress import Action, Broadcast, Ended, Flush, Progress, Snapshot


def mark(step: int, epoch: int, sender: int, eof: bool = False) -> Message:
    return (MARK, step, epoch, sender, eof)


def done(epoch: int, sender: int, eof: bool = False) -> Message:
    return (DONE, epoch, sender, eof)


def finish(p: Progress, epoch: int, eof: bool, peers: list[Message]) -> list[Action]:
    """Everything ``p`` says from its input's end until the epoch ends, the peers' messages
    fed one at a time whenever it waits (as the worker's loop does)."""
    actions = p.end_input(epoch, eof)
    pending = list(peers)
    while not actions or not isinstance(actions[-1], Ended):
        assert not p.ready(), "a complete round was left waiting"
        assert pending, f"waits for more than its peers said: {actions}"
        p.receive(pending.pop(0))
        if p.ready():
            actions += p.advance()
    assert not pending
    return actions


def test_a_single_worker_ends_an_epoch_at_once():
    p = Progress(0, 1, steps=2)
    assert p.end_input(0, eof=False) == [Snapshot(0), Ended(0, False)]
    assert p.end_input(1, eof=True) == [Flush(0), Flush(1), Snapshot(1), Ended(1, True)]
    assert p.tick_from is None


def test_a_flow_without_stateful_steps_only_agrees_on_done():
    p = Progress(1, 2, steps=0)
    assert p.end_input(0, eof=True) == [Snapshot(0), Broadcast(done(0, 1, True))]
    assert p.tick_from is None
    p.receive(done(0, 0, True))
    assert p.advance() == [Ended(0, True)]


def test_each_step_is_marked_only_once_every_worker_marked_the_one_before():
    p = Progress(0, 3, steps=2)
    assert p.end_input(4, eof=False) == [Broadcast(mark(0, 4, 0))]
    assert p.tick_from == 0
    p.receive(mark(0, 4, 2))
    assert not p.ready()
    p.receive(mark(0, 4, 1))
    assert p.ready()
    assert p.advance() == [Broadcast(mark(1, 4, 0))]
    assert p.tick_from == 1
    p.receive(mark(1, 4, 1))
    p.receive(mark(1, 4, 2))
    assert p.advance() == [Snapshot(4), Broadcast(done(4, 0))]
    assert p.tick_from is None
    p.receive(done(4, 2))
    p.receive(done(4, 1))
    assert p.advance() == [Ended(4, False)]


def test_a_step_flushes_before_the_next_is_marked_only_when_every_input_is_exhausted():
    """The flush may send data of the epoch to the next step, which must go before its mark;
    one worker with input left keeps every step from flushing, and says so in DONE."""
    peers = [mark(0, 0, 1, True), mark(1, 0, 1, True), done(0, 1, True)]
    assert finish(Progress(0, 2, steps=2), 0, True, peers) == [
        Broadcast(mark(0, 0, 0, True)),
        Flush(0),
        Broadcast(mark(1, 0, 0, True)),
        Flush(1),
        Snapshot(0),
        Broadcast(done(0, 0, True)),
        Ended(0, True),
    ]
    peers = [mark(0, 0, 1, False), mark(1, 0, 1, False), done(0, 1, False)]
    assert finish(Progress(0, 2, steps=2), 0, True, peers) == [
        Broadcast(mark(0, 0, 0, True)),
        Broadcast(mark(1, 0, 0, False)),
        Snapshot(0),
        Broadcast(done(0, 0, False)),
        Ended(0, False),
    ]


def test_a_faster_peers_words_for_later_rounds_are_kept_until_then():
    """Peer 1 is through epoch 0 and already marked step 0 of epoch 1 before this worker's
    input phase of epoch 0 ended: every round completes as soon as the worker's own word is
    in, and the epoch-1 mark waits for epoch 1."""
    p = Progress(0, 2, steps=2)
    for msg in (mark(0, 0, 1), mark(1, 0, 1), done(0, 1), mark(0, 1, 1)):
        p.receive(msg)
    assert p.end_input(0, eof=False) == [
        Broadcast(mark(0, 0, 0)),
        Broadcast(mark(1, 0, 0)),
        Snapshot(0),
        Broadcast(done(0, 0)),
        Ended(0, False),
    ]
    assert p.end_input(1, eof=False) == [Broadcast(mark(0, 1, 0)), Broadcast(mark(1, 1, 0))]
    assert not p.ready() and p.tick_from == 1


@pytest.mark.parametrize("eofs", [(True, True, True), (True, False, True)])
def test_any_order_of_peers_words_gives_the_same_actions(eofs):
    """The peers' words (each peer's in its own order: FIFO per pair) come interleaved in
    every way; what the worker does never depends on it."""
    own, *others = eofs
    every = all(eofs)
    per_peer = [[mark(0, 2, w, eof), mark(1, 2, w, eof and every), done(2, w, every)] for w, eof in zip((1, 2), others)]
    seen = set()
    for choice in set(itertools.permutations([0, 0, 0, 1, 1, 1])):
        queues = [list(q) for q in per_peer]
        interleaved = [queues[w].pop(0) for w in choice]
        actions = finish(Progress(0, 3, steps=2), 2, own, interleaved)
        seen.add(tuple(actions))
    assert len(seen) == 1
    (actions,) = seen
    assert actions[-1] == Ended(2, every)
    assert (Flush(0) in actions) is every


def test_rounds_are_forgotten_once_complete():
    p = Progress(0, 2, steps=1)
    finish(p, 0, False, [mark(0, 0, 1), done(0, 1)])
    assert p._marks == {} and p._dones == {}


def test_an_epoch_cannot_end_twice():
    p = Progress(0, 2, steps=1)
    p.end_input(0, eof=False)
    with pytest.raises(RuntimeError, match="epoch 0 is not finished"):
        p.end_input(1, eof=False)


def test_only_progress_messages_are_received():
    with pytest.raises(ValueError, match="not a progress message"):
        Progress(0, 2, steps=1).receive((0, 0, 0, []))

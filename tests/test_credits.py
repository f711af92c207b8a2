"""The credit rules alone (runtime/credits.py): how much a worker may send, when it pays
back, and what a waiting worker may handle."""

from __future__ import annotations

import pytest

from millrace.runtime.credits import Credits
from millrace.runtime.exchange import CREDIT, DATA, DONE, MARK, MIGRATE


def test_a_window_of_messages_per_peer_and_step_then_nothing_until_paid_back():
    credits = Credits(index=0, window=4)
    for _ in range(4):
        assert credits.available(1, step=0)
        credits.spend(1, step=0)
    assert not credits.available(1, step=0)
    # Messages of another step (or to another peer) do not wait behind these.
    assert credits.available(1, step=1) and credits.available(2, step=0)
    credits.receive((CREDIT, 1, 0, 2))
    assert credits.available(1, step=0)


def test_paid_back_every_half_window_per_sender_and_step():
    credits = Credits(index=1, window=6)
    owed = [credits.handled(sender=0, step=2) for _ in range(7)]
    assert owed == [None, None, (CREDIT, 1, 2, 3), None, None, (CREDIT, 1, 2, 3), None]
    assert credits.handled(sender=2, step=2) is None  # counted apart
    assert credits.handled(sender=0, step=1) is None


def test_a_sender_out_of_credit_is_always_paid_back_once_its_messages_are_handled():
    for window in range(2, 12):
        sender, receiver = Credits(0, window), Credits(1, window)
        in_flight = 0
        while sender.available(1, 0):
            sender.spend(1, 0)
            in_flight += 1
        for _ in range(in_flight):
            if (credit := receiver.handled(0, 0)) is not None:
                sender.receive(credit)
        assert sender.available(1, 0), window


def test_a_waiting_worker_handles_credit_and_its_step_or_later_only():
    eligible = Credits.eligible
    assert eligible((CREDIT, 1, 0, 8), blocked_on=3)
    assert eligible((DATA, 3, 0, [], 1), blocked_on=3)
    assert eligible((DATA, 4, 0, [], 1), blocked_on=3)
    assert not eligible((DATA, 2, 0, [], 1), blocked_on=3)
    # Partials of a combining step k travel as DATA of ~k and count as that step's.
    assert eligible((DATA, ~3, 0, (0, []), 1), blocked_on=3)
    assert not eligible((DATA, ~2, 0, (0, []), 1), blocked_on=3)
    assert not eligible((MARK, 3, 0, 1, False), blocked_on=0)
    assert not eligible((DONE, 0, 1, False), blocked_on=0)
    assert not eligible((MIGRATE, 1, [], True), blocked_on=0)


def test_a_window_too_small_to_pay_back_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        Credits(0, window=1)

"""Outbound statuses: every move, allowed or refused, written out by hand; and reachability learnt."""

import itertools

import pytest

from gateway.domain.outbound import FINAL, MOVES, Reachability, Status, accepted_status, may_move, reachability_after

Q, D, SG, B, S, DL, U, F = (Status.QUEUED, Status.DEFERRED, Status.SENDING, Status.BLOCKED, Status.SENT,
                            Status.DELIVERED, Status.UNDELIVERED, Status.FAILED)

# Every allowed move; every pair not listed here is refused.
ALLOWED = {
    (Q, D), (Q, SG), (Q, S), (Q, DL), (Q, U), (Q, F), (Q, B),  # a callback may overtake the worker
    (D, Q), (D, SG), (D, S), (D, DL), (D, U), (D, F), (D, B),
    (SG, Q), (SG, D),  # a provider retry, or the worker's gate deferring at the last moment
    (SG, S), (SG, DL), (SG, U), (SG, F), (SG, B),
    (S, DL), (S, U), (S, F), (S, B),
}


@pytest.mark.parametrize(("current", "new"), sorted(ALLOWED))
def test_allowed_moves(current, new):
    assert may_move(current, new)


@pytest.mark.parametrize(("current", "new"), sorted(set(itertools.product(Status, Status)) - ALLOWED))
def test_refused_moves(current, new):
    assert not may_move(current, new)


@pytest.mark.parametrize(("current", "new"), [
    (S, Q), (S, SG), (DL, S), (DL, U), (U, DL), (F, S), (B, S), (Q, Q), (S, S), (D, D),
])
def test_the_moves_that_matter_most_are_refused(current, new):
    # A late "sent" never undoes "delivered"; nothing leaves a final status; no move to where it is.
    assert not may_move(current, new)


def test_the_rule_reads_what_the_store_gives_back():
    assert may_move("sent", "delivered") and not may_move("delivered", "sent")


def test_final_statuses_go_nowhere_and_every_status_has_its_moves():
    assert set(MOVES) == set(Status)
    assert FINAL == {DL, U, F, B} and all(not MOVES[status] for status in FINAL)


def test_a_message_the_gate_allowed_starts_queued_or_deferred():
    assert (accepted_status(False), accepted_status(True)) == (Q, D)


@pytest.mark.parametrize(("current", "heard", "after"), [
    ("ok", Reachability.UNREACHABLE, Reachability.UNREACHABLE),
    ("ok", Reachability.LANDLINE, Reachability.LANDLINE),
    ("ok", Reachability.OK, Reachability.OK),
    ("unreachable", Reachability.OK, Reachability.OK),  # a text from the handset
    ("unreachable", Reachability.LANDLINE, Reachability.LANDLINE),
    ("unreachable", Reachability.UNREACHABLE, Reachability.UNREACHABLE),
    ("landline", Reachability.UNREACHABLE, Reachability.LANDLINE),  # the stronger fact stays
    ("landline", Reachability.OK, Reachability.LANDLINE),
    ("landline", Reachability.LANDLINE, Reachability.LANDLINE),
])
def test_reachability_learnt(current, heard, after):
    assert reachability_after(current, heard) is after

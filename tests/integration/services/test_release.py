"""Paced release at the window's opening, on the store: slots at each sender's rate, written as the
source of truth, handed to the queue for their times, and carried on after a pass that died."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from gateway.domain import pacing
from gateway.domain.consent import Input, Source
from gateway.domain.gate import Decision, Kind, Reason
from gateway.domain.numbers import parse
from gateway.services import consents, release, sending
from gateway.store import consents as store_consents
from gateway.store import outbox, programs
from gateway.store.models import OutboundMessage, utcnow
from tests.outbound_support import captured_queue  # noqa: F401  (a fixture)

PHONE = "+14155550191"
SENDER = "+18885550160"
MPS = 3


@pytest.fixture(autouse=True)
def queue(captured_queue):
    return captured_queue


@pytest.fixture
def paced_program(db, example_programs):
    """A marketing program on a sender of its own, 3 messages a second."""
    spec = replace(next(p for p in example_programs if p.slug == "deals"), slug="paced", sender=SENDER, mps=MPS,
                   join_keywords=("PACED",))
    with db.transaction() as session:
        programs.store(session, [spec])
    return spec


def deferred(db, count: int, opening: datetime, slug: str = "paced", phone: str = PHONE) -> list[str]:
    """`count` marketing messages to `phone` deferred by quiet hours until `opening`, in the order
    they take their turns (accepted together, so by id)."""
    night = opening - timedelta(hours=10)
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(phone))
        program = programs.by_slug(session, slug)
        if store_consents.consent_row(session, row, program) is None:
            consents.apply(session, row, program, Input.IMPORT_OPT_IN, consents.Evidence(Source.IMPORT), now=night)
        accepted = outbox.accept_many(session, program=program, kind=Kind.MARKETING, body="Sale", now=night,
                                      decisions=[(row.id, Decision(False, Reason.QUIET_HOURS, opening))] * count)
    return sorted(message.id for message in accepted)


def rows(db, ids) -> list[OutboundMessage]:
    with db.sessions() as session:
        found = {m.id: m for m in session.scalars(select(OutboundMessage).where(OutboundMessage.id.in_(ids)))}
        for message in found.values():
            message.events  # loaded while the session is open
        return [found[i] for i in ids]


def most_in_any_second(times) -> int:
    times, most, first = sorted(times), 0, 0
    for last, time in enumerate(times):
        while time - times[first] >= timedelta(seconds=1):
            first += 1
        most = max(most, last - first + 1)
    return most


def test_releasing_n_messages_of_a_sender_at_m_per_second_spreads_them_over_n_over_m_seconds(
        gateway, db, paced_program):
    opening = utcnow().replace(microsecond=0) + timedelta(hours=1)
    ids = deferred(db, 30, opening)
    assert release.release(gateway, opening - timedelta(minutes=1)).paced == 0  # not open yet
    released = release.release(gateway, opening, jitter=random.Random(7))
    assert released.paced == 30
    messages = rows(db, ids)
    slots = [m.not_before for m in messages]
    assert {(m.status, m.reason) for m in messages} == {("deferred", "paced")}
    assert all(m.recheck_at == m.not_before for m in messages)
    assert slots == sorted(slots)  # in their order
    assert opening <= slots[0] <= opening + pacing.JITTER
    assert slots[-1] - slots[0] + pacing.spacing(MPS) >= timedelta(seconds=30 / MPS)
    assert most_in_any_second(slots) <= MPS
    assert max(Counter(int(s.timestamp()) for s in slots).values()) <= MPS
    assert [(e.status, e.reason) for e in messages[0].events] == [("deferred", "quiet_hours"), ("deferred", "paced")]
    assert release.release(gateway, opening).paced == 0  # released once


def test_a_pass_that_died_midway_is_carried_on_from_the_slots_it_committed(gateway, db, paced_program):
    opening = utcnow().replace(microsecond=0) + timedelta(hours=1)
    ids = deferred(db, 12, opening)
    # The first pass commits the first five slots, then its process dies.
    assert release.release(gateway, opening, limit=5).paced == 5
    assert [m.reason for m in rows(db, ids)] == ["paced"] * 5 + ["quiet_hours"] * 7
    # The next sweep's pass, a little later, reads the sender's schedule from the store and carries on.
    assert release.release(gateway, opening + timedelta(milliseconds=10)).paced == 7
    slots = [m.not_before for m in rows(db, ids)]
    assert slots == sorted(slots)
    assert all(b - a == pacing.spacing(MPS) for a, b in zip(slots, slots[1:]))
    assert most_in_any_second(slots) <= MPS


def test_senders_are_paced_each_at_its_own_rate(gateway, db, paced_program, example_programs):
    opening = utcnow().replace(microsecond=0) + timedelta(hours=1)
    slow = deferred(db, 6, opening, slug="deals")  # +15005550006, the default 1 a second
    fast = deferred(db, 12, opening)
    release.release(gateway, opening)
    for ids, rate in ((slow, 1), (fast, MPS)):
        slots = [m.not_before for m in rows(db, ids)]
        assert most_in_any_second(slots) <= rate
        assert slots[-1] - slots[0] + pacing.spacing(rate) >= timedelta(seconds=len(ids) / rate)


def test_the_sweep_hands_each_message_to_the_queue_for_its_slot(gateway, db, paced_program, queue):
    opening = utcnow().replace(microsecond=0) + timedelta(hours=1)
    ids = deferred(db, 60, opening)  # 20 seconds' worth at 3 a second
    ahead = timedelta(seconds=gateway.settings.outbox_sweep_seconds)
    swept = sending.sweep(gateway, opening)
    assert swept.paced == 60
    slots = {m.id: m.not_before for m in rows(db, ids)}
    soon = [i for i in ids if slots[i] <= opening + ahead]
    assert 0 < len(soon) < 60 and swept.enqueued == len(soon)
    sent = [(message.headers.get("eta"), message.decode()[0][0]) for _, message in queue.messages()]
    # Those whose slot is still to come are enqueued for it, in order; the rest wait for a later sweep.
    assert [message_id for _, message_id in sent] == soon
    assert all(eta is None or datetime.fromisoformat(eta) == slots[i] for eta, i in sent)
    assert sum(eta is not None for eta, _ in sent) >= len(soon) - 1  # only the slot at the opening itself is due now
    later = sending.sweep(gateway, opening + ahead)
    assert later.paced == 0
    assert later.enqueued == len([i for i in ids if opening + ahead < slots[i] <= opening + 2 * ahead])


def test_a_task_a_little_early_for_its_slot_tries_again_at_the_slot(gateway, db, paced_program):
    opening = utcnow().replace(microsecond=0) + timedelta(hours=1)
    [message_id] = deferred(db, 1, opening)
    release.release(gateway, opening)
    slot = rows(db, [message_id])[0].not_before
    outcome = sending.send(gateway, message_id, now=slot - timedelta(milliseconds=20))
    assert (outcome.status, outcome.reason, outcome.retry_in) == ("deferred", "not_yet_due", timedelta(milliseconds=20))
    assert rows(db, [message_id])[0].status == "deferred"  # untouched
    assert sending.send(gateway, message_id, now=slot - timedelta(hours=2)) == sending.SKIPPED  # far too early


def test_an_opt_out_blocks_a_paced_message_too(gateway, db, paced_program):
    opening = utcnow().replace(microsecond=0) + timedelta(hours=1)
    ids = deferred(db, 3, opening)
    release.release(gateway, opening)
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(PHONE))
        consents.opt_out(session, row, [programs.by_slug(session, "paced")], Input.API_OPT_OUT,
                         consents.Evidence(Source.API))
    assert {(m.status, m.reason) for m in rows(db, ids)} == {("blocked", "opted_out")}
    assert sending.sweep(gateway, opening + timedelta(minutes=5)).enqueued == 0


def test_one_release_pass_at_a_time(gateway, db, paced_program):
    if db.dialect != "postgresql":
        pytest.skip("SQLite serialises its transactions already: a second pass waits for the first")
    opening = utcnow().replace(microsecond=0) + timedelta(hours=1)
    ids = deferred(db, 3, opening)
    with db.transaction() as other:
        assert outbox.hold_release(other)  # another sweeper's pass is under way
        assert release.release(gateway, opening).paced == 0
    assert release.release(gateway, opening).paced == 3
    assert {m.reason for m in rows(db, ids)} == {"paced"}

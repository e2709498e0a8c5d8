"""The send API end to end: HTTP in, the real worker process, the sandbox as Twilio.

Refused numbers never reach the provider; a STOP between acceptance and sending blocks the message;
a worker killed mid-batch loses nothing and sends nothing twice; quiet hours defer, then release;
a burst leaves at the sender's pace, and so do deferred messages released at their window's opening.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from gateway.domain.consent import Input, Source
from gateway.domain.gate import Decision, Kind, Reason
from gateway.domain.numbers import parse
from gateway.services import consents, sending
from gateway.store import consents as store_consents
from gateway.store import outbox, programs
from gateway.store.models import OutboundMessage, PhoneNumber, utcnow
from gateway.twilio.sandbox.models import SandboxMessage, SandboxRefusal
from tests.conftest import wait_for
from tests.integration.web.test_api_messages import _number_in_quiet_hours, _world_program
from tests.sandbox_support import quick_sandbox  # noqa: F401  (a fixture)

pytestmark = pytest.mark.e2e
EVIDENCE = consents.Evidence(Source.IMPORT, actor="test")


@pytest.fixture(autouse=True)
def _fresh_limits(gateway):
    gateway.limiter.reset()


@pytest.fixture
def headers(make_key):
    return {"Authorization": f"Bearer {make_key('send', 'read')}"}


def opted_in(db, slug, *phones):
    with db.transaction() as session:
        program = programs.by_slug(session, slug)
        for phone in phones:
            number = store_consents.number_row(session, parse(phone))
            consents.apply(session, number, program, Input.IMPORT_OPT_IN, EVIDENCE)


def own_program(db, example_programs, slug, sender, mps, base="orders"):
    """A program on a sender of its own (no other test's pace or cached rate gets in the way)."""
    spec = replace(next(p for p in example_programs if p.slug == base), slug=slug, sender=sender, mps=mps,
                   join_keywords=(slug.upper(),))
    with db.transaction() as session:
        programs.store(session, [spec])


def at_provider(db, *, to=None, sender=None) -> list[SandboxMessage]:
    with db.sessions() as session:
        query = select(SandboxMessage).where(SandboxMessage.direction == "outbound-api")
        if to:
            query = query.where(SandboxMessage.to_number == to)
        if sender:
            query = query.where(SandboxMessage.from_number == sender)
        return list(session.scalars(query.order_by(SandboxMessage.date_created)))


def statuses(db, **where) -> Counter:
    with db.sessions() as session:
        query = select(OutboundMessage.status, func.count()).group_by(OutboundMessage.status)
        for name, value in where.items():
            query = query.where(getattr(OutboundMessage, name) == value)
        return Counter(dict(session.execute(query).all()))


def restart(worker) -> None:
    """Start the session's worker again and wait for this start to be ready (its log is appended)."""
    before = worker.log_path.read_bytes().count(b" ready.")
    worker.start()
    wait_for(lambda: worker.log_path.read_bytes().count(b" ready.") > before, timeout=60)


def test_a_refused_number_never_reaches_the_provider(worker_process, client, headers, db, quick_sandbox):
    opted_in(db, "orders", "+14155550171")
    refused = client.post("/v1/messages", headers=headers,
                          json={"to": "+14155550172", "program": "orders", "body": "Order shipped"})
    assert (refused.status_code, refused.json["error"]["code"]) == (409, "no_consent")
    accepted = client.post("/v1/messages", headers=headers,
                           json={"to": "+14155550171", "program": "orders", "body": "Order shipped"})
    assert accepted.status_code == 202
    wait_for(lambda: client.get(f"/v1/messages/{accepted.json['id']}", headers=headers).json["status"] == "delivered")
    # The pipeline works, and the refused number got nothing: no message, not even a refused attempt.
    assert [m.to_number for m in at_provider(db)] == ["+14155550171"]
    with db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(SandboxRefusal)) == 0
    assert statuses(db) == Counter({"delivered": 1})


def test_a_stop_before_the_worker_runs_blocks_the_message(worker_process, client, headers, db, quick_sandbox):
    phone = "+14155550173"
    opted_in(db, "alerts", phone)
    worker_process.stop()  # so the STOP is certainly recorded before any worker looks at the message
    try:
        accepted = client.post("/v1/messages", headers=headers,
                               json={"to": phone, "program": "alerts", "body": "Maintenance tonight"})
        assert (accepted.status_code, accepted.json["status"]) == (202, "queued")
        with db.transaction() as session:
            row = store_consents.number_row(session, parse(phone))
            consents.apply(session, row, programs.by_slug(session, "alerts"), Input.KEYWORD_STOP,
                          consents.Evidence(Source.SMS, actor="person", details={"body": "STOP"}))
        # Blocked by the opt-out's own write, with no worker running.
        shown = client.get(f"/v1/messages/{accepted.json['id']}", headers=headers).json
        assert (shown["status"], shown["reason"]) == ("blocked", "opted_out")
        assert [h["status"] for h in shown["history"]] == ["queued", "blocked"]
        skipped = worker_process.log_path.read_bytes().count(b": 'skipped'")
    finally:
        restart(worker_process)
    # The worker takes the message's task and finds nothing to send: it stays as the opt-out left it.
    wait_for(lambda: worker_process.log_path.read_bytes().count(b": 'skipped'") > skipped, timeout=30)
    shown = client.get(f"/v1/messages/{accepted.json['id']}", headers=headers).json
    assert [h["status"] for h in shown["history"]] == ["queued", "blocked"]
    assert at_provider(db, to=phone) == []


def test_a_worker_killed_mid_batch_loses_nothing_and_sends_nothing_twice(worker_process, client, headers, db,
                                                                         gateway, example_programs, quick_sandbox):
    sender = "+18885550181"
    own_program(db, example_programs, "crashy", sender, mps=10)
    phones = [f"+1415555{i:04d}" for i in range(200, 230)]
    opted_in(db, "crashy", *phones)
    answer = client.post("/v1/messages/batch", headers=headers,
                         json={"recipients": phones, "program": "crashy", "body": "Your parcel is on its way"})
    assert (answer.status_code, answer.json["accepted"]) == (202, 30)
    batch_id = answer.json["batch_id"]
    wait_for(lambda: len(at_provider(db, sender=sender)) >= 5, timeout=30)
    worker_process.kill()  # SIGKILL: claims, prefetched tasks and unacknowledged work die with it
    try:
        # Whatever the worker had in hand is now a claim of a dead worker or a task nobody will run.
        wait_for(lambda: all(m.status in ("sent", "delivered", "undelivered") for m in at_provider(db, sender=sender)))
        # Counted only now: a COMMIT the worker sent just before dying may still have landed after it.
        killed_at = statuses(db, batch_id=batch_id)
        # The beat's sweep, as if its timeouts had passed: settle dead claims, re-enqueue lost tasks.
        # It runs before a new worker starts: on this clock a live worker's claims would look dead too.
        # Like the beat, it sweeps again while a claim is unsettled: the provider could not be asked,
        # or the dead worker's database session still held the row (sweeps skip locked rows).
        settled, sweeps = 0, []
        for _ in range(10):
            sweeps.append(sending.sweep(gateway, utcnow() + max(sending.claim_lease(gateway), timedelta(
                                            seconds=gateway.settings.outbox_lost_task_seconds)) + timedelta(seconds=1)))
            settled += sweeps[-1].found_sent + sweeps[-1].requeued
            if settled >= killed_at.get("sending", 0):
                break
            time.sleep(0.5)
        assert settled == killed_at.get("sending", 0), (killed_at, sweeps)
    finally:
        restart(worker_process)

    def all_went():
        done = statuses(db, batch_id=batch_id)
        return sum(done[s] for s in ("sent", "delivered")) == 30

    wait_for(all_went, timeout=60)
    received = Counter(m.to_number for m in at_provider(db, sender=sender))
    assert received == Counter({phone: 1 for phone in phones})  # every one, once
    with db.sessions() as session:
        sids = session.scalars(select(OutboundMessage.provider_sid).where(OutboundMessage.batch_id == batch_id)).all()
    assert sorted(sids) == sorted(m.sid for m in at_provider(db, sender=sender))


def test_quiet_hours_defer_and_later_release(worker_process, client, headers, db, gateway, example_programs,
                                             quick_sandbox):
    _world_program(db, example_programs)
    phone = _number_in_quiet_hours(gateway, quiet=True)
    opted_in(db, "world", phone)
    deferred = client.post("/v1/messages", headers=headers, json={"to": phone, "program": "world", "body": "Sale"})
    assert (deferred.status_code, deferred.json["status"]) == (202, "deferred")
    message_id = deferred.json["id"]
    with db.sessions() as session:
        not_before = session.get(OutboundMessage, message_id).not_before
    # A sweep before the morning leaves it; the worker, asked anyway, finds it not yet due.
    assert sending.sweep(gateway).enqueued == 0
    gateway.dispatcher.send_messages([message_id])
    time.sleep(1.0)
    assert statuses(db) == Counter({"deferred": 1}) and at_provider(db, to=phone) == []
    # Morning, on the core's clock: the sweep releases it and the worker's gate, asked at that moment, sends.
    assert sending.sweep(gateway, not_before).enqueued == 1
    outcome = sending.send(gateway, message_id, now=not_before)
    for _ in range(40):
        if outcome.status == "sent":
            break
        # The sweep handed it to the session's worker too, which on the real clock (still night) defers
        # it again while holding the row ("skipped" here); or the sender is busy with another test's
        # retries. Either way: ask again, as the next sweep would.
        time.sleep(outcome.retry_in.total_seconds() if outcome.retry_in else 0.2)
        with db.sessions() as session:
            due = session.get(OutboundMessage, message_id).not_before
        outcome = sending.send(gateway, message_id, now=max(not_before, due or not_before))
    assert outcome.status == "sent"
    wait_for(lambda: [m.body for m in at_provider(db, to=phone)] == ["Sale"])
    history = client.get(f"/v1/messages/{message_id}", headers=headers).json["history"]
    steps = [(h["status"], h["reason"]) for h in history]
    assert steps[0] == ("deferred", "quiet_hours")
    assert steps[steps.index(("sent", None)) - 1] == ("sending", None)
    assert all(status in ("deferred", "sending", "queued") for status, _ in steps[:steps.index(("sent", None))])


def test_a_burst_through_the_worker_keeps_to_the_senders_rate(worker_process, client, headers, db, example_programs,
                                                              quick_sandbox):
    sender = "+18885550182"
    own_program(db, example_programs, "bursty", sender, mps=3)
    phones = [f"+1415555{i:04d}" for i in range(300, 312)]
    opted_in(db, "bursty", *phones)
    answer = client.post("/v1/messages/batch", headers=headers,
                         json={"recipients": phones, "program": "bursty", "body": "Flash notice"})
    assert answer.json["accepted"] == 12
    wait_for(lambda: len(at_provider(db, sender=sender)) == 12, timeout=60)
    moments = sorted(m.date_created for m in at_provider(db, sender=sender))
    # Four workers' threads raced for the sender; never more than 3 within a second reached Twilio.
    for first, fourth in zip(moments, moments[3:]):
        assert (fourth - first).total_seconds() > 0.8, moments
    with db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(PhoneNumber)) == 12


def test_deferred_messages_are_released_at_their_senders_pace_by_the_worker(worker_process, db, gateway,
                                                                           example_programs, quick_sandbox):
    """The sweep gives each message its slot and hands it to the real worker for it (a Celery ETA):
    the worker sends them spread at the sender's rate, not all at the window's opening."""
    sender = "+18885550183"
    own_program(db, example_programs, "paced", sender, mps=2)
    phones = [f"+1415555{i:04d}" for i in range(320, 326)]
    opted_in(db, "paced", *phones)
    opening = utcnow() + timedelta(seconds=1)
    with db.transaction() as session:
        program = programs.by_slug(session, "paced")
        for phone in phones:
            number = store_consents.number_row(session, parse(phone))
            outbox.accept(session, number=number, program=program, kind=Kind.TRANSACTIONAL, body=f"Ready {phone}",
                          decision=Decision(False, Reason.QUIET_HOURS, opening))
    swept = sending.sweep(gateway)
    assert (swept.paced, swept.enqueued) == (6, 6)  # all six slots come before the next sweep
    wait_for(lambda: len(at_provider(db, sender=sender)) == 6, timeout=60)
    moments = [m.date_created for m in at_provider(db, sender=sender)]
    assert min(moments) >= opening
    for first, third in zip(moments, moments[2:]):  # never 3 within a second at 2 a second
        assert (third - first).total_seconds() > 0.8, moments
    assert (moments[-1] - moments[0]).total_seconds() >= 2.0, moments  # six at 2 a second: 2.5 s from first to last
    # The sandbox has each text before its worker records it sent.
    wait_for(lambda: set(statuses(db, sender=sender)) <= {"sent", "delivered"}, timeout=20)

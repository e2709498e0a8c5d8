"""The worker's side in-process, against the sandbox over real HTTP: a sender's throughput, the
sweeper (lost tasks, due deferrals, claims of dead workers) and the reconciler."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from gateway.domain import pacing
from gateway.domain.consent import Input, Source
from gateway.domain.gate import ALLOW, Decision, Kind, Reason
from gateway.domain.numbers import parse
from gateway.domain.outbound import DeliveryReport, Status
from gateway.services import consents, delivery, sending, throughput
from gateway.store import consents as store_consents
from gateway.store import outbox, programs
from gateway.store.models import OutboundMessage, PhoneNumber, utcnow
from gateway.twilio.client import Provider
from gateway.twilio.sandbox.models import SandboxMessage
from tests.conftest import wait_for
from tests.outbound_support import captured_queue, fresh_limits  # noqa: F401  (fixtures)
from tests.sandbox_support import instant_sandbox, sandbox_config  # noqa: F401  (a fixture)

PHONE = "+14155550161"
BURST_SENDER = "+18885550150"
EVIDENCE = consents.Evidence(Source.IMPORT, actor="test")


@pytest.fixture(autouse=True)
def queue(captured_queue):
    """What the sweeper enqueues, kept from the session's worker (it would send it)."""
    return captured_queue


@pytest.fixture
def burst(db, example_programs):
    """A transactional program on its own sender, 3 messages a second."""
    spec = replace(next(p for p in example_programs if p.slug == "orders"), slug="burst", sender=BURST_SENDER,
                   mps=3, join_keywords=("BURST",))
    with db.transaction() as session:
        programs.store(session, [spec])
    return spec


def accept(db, slug="orders", phone=PHONE, count=1, body="Your order shipped", now=None):
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(phone))
        program = programs.by_slug(session, slug)
        if store_consents.consent_row(session, row, program) is None:
            consents.apply(session, row, program, Input.IMPORT_OPT_IN, EVIDENCE)
        return [outbox.accept(session, number=row, program=program, kind=Kind(program.category),
                              body=f"{body} {i}" if count > 1 else body, decision=ALLOW, now=now).id
                for i in range(count)]


def message(db, message_id) -> OutboundMessage:
    with db.sessions() as session:
        found = session.get(OutboundMessage, message_id)
        found.events  # load the history while the session is open
        return found


def provider_texts(db, phone=PHONE) -> list[SandboxMessage]:
    with db.sessions() as session:
        return list(session.scalars(select(SandboxMessage).where(SandboxMessage.to_number == phone,
                                                                 SandboxMessage.direction == "outbound-api")
                                    .order_by(SandboxMessage.date_created)))


def deliver(gateway, message_id, now=None, attempts=20) -> sending.Outcome:
    """send(), waiting out a busy sender as the task would (the session's worker may be using the
    same sender for another test's retries: the limiter is shared through Redis)."""
    outcome = sending.send(gateway, message_id, now=now)
    for _ in range(attempts):
        if outcome.reason != "sender_busy":
            return outcome
        time.sleep(outcome.retry_in.total_seconds())
        outcome = sending.send(gateway, message_id, now=now and message(gateway.db, message_id).not_before)
    return outcome


def assert_paced(receipts, per_second):
    """No `per_second + 1` provider receipts within one second. A receipt lands up to its send's
    duration after the limiter let it go, so each window is short by the first send's duration."""
    receipts = sorted(receipts)
    for (first, lag), (last, _) in zip(receipts, receipts[per_second:]):
        assert (last - first).total_seconds() > 1 - lag, receipts


# --- throughput ------------------------------------------------------------------------------------


def test_a_burst_is_paced_to_the_senders_rate(gateway, db, live_server, instant_sandbox, burst):
    ids = accept(db, "burst", count=9)
    took = {}  # body -> how long the send that reached the provider took

    def timed_send(message_id, **options):
        started = time.monotonic()
        outcome = sending.send(gateway, message_id, **options)
        if outcome.status == "sent":
            took[message(db, message_id).body] = time.monotonic() - started
        return outcome

    started = time.monotonic()
    outcomes = {message_id: timed_send(message_id) for message_id in ids}
    # On a loaded machine the burst itself can take over a second; the rate bounds what went meanwhile.
    elapsed = time.monotonic() - started
    allowed = 3 * (1 + int(elapsed))
    busy = [i for i, o in outcomes.items() if o.reason == "sender_busy"]
    assert len(outcomes) - len(busy) == len(provider_texts(db))  # a busy sender is never called
    assert len(provider_texts(db)) <= allowed and len(busy) >= len(ids) - allowed
    # Some found the sender busy, unless the machine was so loaded that the burst itself went no
    # faster than the rate (then the pacing is checked below all the same).
    assert busy or elapsed >= (len(ids) - 1) / 3
    for message_id in busy:
        waiting = message(db, message_id)
        # Still queued as it was: no claim, no step in its history, only held back.
        assert (waiting.status, waiting.attempts, [e.status for e in waiting.events]) == ("queued", 0, ["queued"])
        # The sweeper takes its task for lost only once the lost-task time has passed since then.
        assert waiting.not_before is not None and waiting.recheck_at == waiting.not_before
    # Run what waits when it is due, as the task retries do, until everything went.
    waited = {message_id: 0 for message_id in busy}
    deadline = time.monotonic() + 30
    while waited and time.monotonic() < deadline:
        for message_id in list(waited):
            if message(db, message_id).not_before <= utcnow():
                waited[message_id] += 1
                if timed_send(message_id, waited=waited[message_id]).status == "sent":
                    del waited[message_id]
        time.sleep(0.02)
    texts = provider_texts(db)
    assert sorted(t.body for t in texts) == sorted(f"Your order shipped {i}" for i in range(9))
    assert_paced([(t.date_created, took[t.body]) for t in texts], 3)


def test_programs_on_one_sender_share_the_slowest_rate(db, example_programs):
    deals = next(p for p in example_programs if p.slug == "deals")
    with db.transaction() as session:
        programs.store(session, [replace(deals, slug="fast", mps=50, join_keywords=("FAST",)),
                                 replace(deals, slug="slow", mps=4, join_keywords=("SLOW",))])
        # deals and alerts, on the same sender, say nothing: the rate of those that do applies.
        assert throughput.sender_mps(session, "+15005550006") == 4
        assert throughput.sender_mps(session, "+18885550199") == throughput.DEFAULT_MPS
        assert throughput.sender_mps(session, "+19995550000") == throughput.DEFAULT_MPS


def test_waits_for_a_busy_sender_spread_out_as_they_repeat():
    first = [throughput.wait_time(0.5, 1, 0).total_seconds() for _ in range(200)]
    later = [throughput.wait_time(0.5, 1, 5).total_seconds() for _ in range(200)]
    assert all(0.5 <= w <= 1.5 for w in first)
    assert all(0.5 <= w <= 32.5 for w in later) and max(later) > 2
    assert all(w <= 60.5 for w in (throughput.wait_time(0.5, 1, 40).total_seconds() for _ in range(200)))


# --- the sweeper -----------------------------------------------------------------------------------


def test_a_lost_task_is_enqueued_again(gateway, db, queue):
    [message_id] = accept(db)
    assert sending.sweep(gateway).enqueued == 0  # its task is presumed on its way
    later = utcnow() + timedelta(seconds=gateway.settings.outbox_lost_task_seconds + 1)
    assert sending.sweep(gateway, later) == sending.Sweep(1, 0, 0, 0, lost=1)
    assert queue.ids() == [message_id]
    assert message(db, message_id).recheck_at == later + outbox.REQUEUE_HOLD
    assert sending.sweep(gateway, later).enqueued == 0  # not again until that task is lost too


def test_a_deferred_message_is_released_when_due(gateway, db, live_server, instant_sandbox, queue):
    night = utcnow()
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(PHONE))
        program = programs.by_slug(session, "deals")
        consents.apply(session, row, program, Input.IMPORT_OPT_IN, EVIDENCE)
        morning = night + timedelta(hours=9)
        deferred = outbox.accept(session, number=row, program=program, kind=Kind.MARKETING, body="Sale",
                                 decision=Decision(False, Reason.QUIET_HOURS, morning), now=night).id
    assert sending.sweep(gateway, night + timedelta(hours=1)).enqueued == 0
    assert sending.send(gateway, deferred, now=night + timedelta(hours=1)) == sending.SKIPPED  # not yet due
    assert sending.sweep(gateway, morning).enqueued == 1
    assert queue.ids() == [deferred]
    # Released at its slot: the window's opening plus its sender's jitter.
    slot = message(db, deferred).not_before
    assert morning <= slot <= morning + pacing.JITTER and message(db, deferred).reason == "paced"
    # The worker asks the gate again at that moment: whatever the real clock, it is out of quiet
    # hours then (nine hours after the real "now" may still be night at the number).
    opening = max(gateway.quiet_hours.next_allowed(PHONE, slot) or slot, slot)
    assert deliver(gateway, deferred, now=opening).status == "sent"
    assert [t.body for t in provider_texts(db)] == ["Sale"]


def test_a_message_the_workers_gate_defers_waits_as_deferred_not_as_a_claim(gateway, db, queue):
    # Accepted by day; by the time the worker takes it, it is 02:00 in San Francisco.
    [message_id] = accept(db, slug="deals", body="Sale")
    night = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    opening = gateway.quiet_hours.next_allowed(PHONE, night)
    assert opening is not None and opening > night
    outcome = sending.send(gateway, message_id, now=night)
    assert (outcome.status, outcome.reason) == ("deferred", "quiet_hours")
    found = message(db, message_id)
    # Not left "sending" for the dead-claim sweep to find once its lease ends: deferred, until opening.
    assert (found.status, found.not_before, found.claimed_at) == ("deferred", opening, None)
    assert [step.status for step in outbox.history(found)][-2:] == ["sending", "deferred"]
    assert sending.sweep(gateway, night + sending.claim_lease(gateway) + timedelta(seconds=1)).enqueued == 0
    assert sending.sweep(gateway, opening).enqueued == 1
    assert queue.ids() == [message_id]


def test_a_dead_workers_claim_that_was_sent_is_recorded_not_resent(gateway, db, live_server, instant_sandbox):
    [message_id] = accept(db)
    claimed_at = utcnow()
    with db.transaction() as session:
        claimed = outbox.claim(session, message_id, claimed_at)
        to, sender, body = claimed.number.e164, claimed.sender, claimed.body
    # The worker called the provider, then died before writing down the result.
    sid = gateway.provider.send(to=to, sender=sender, body=body).sid
    wait_for(lambda: provider_texts(db)[0].date_sent is not None)
    not_stale_yet = claimed_at + sending.claim_lease(gateway) / 2
    assert sending.sweep(gateway, not_stale_yet) == sending.Sweep(0, 0, 0, 0)
    result = sending.sweep(gateway, claimed_at + sending.claim_lease(gateway) + timedelta(seconds=1))
    assert (result.found_sent, result.requeued) == (1, 0)
    found = message(db, message_id)
    # Recorded as sent, from Twilio's log; the sandbox's own "delivered" callback may land after the
    # sweep (it knows the message now) and move it on, which is as it should be.
    assert (found.provider_sid, found.reason) == (sid, "recovered")
    sent_steps = [(step.status, step.reason) for step in outbox.history(found) if step.status == "sent"]
    assert sent_steps == [("sent", "recovered")]
    assert found.status in ("sent", "delivered")
    assert len(provider_texts(db)) == 1


def test_a_dead_workers_claim_that_twilio_accepted_but_has_not_sent_is_not_sent_again(gateway, db, app,
                                                                                     live_server):
    [message_id] = accept(db)
    claimed_at = utcnow()
    with db.transaction() as session:
        claimed = outbox.claim(session, message_id, claimed_at)
        to, sender, body = claimed.number.e164, claimed.sender, claimed.body
    # Twilio accepted it and queued it behind the sender's rate: no DateSent yet when the sweep asks.
    with sandbox_config(app, sent_delay=600.0, final_delay=600.0):
        sid = gateway.provider.send(to=to, sender=sender, body=body).sid
        assert provider_texts(db)[0].date_sent is None
        result = sending.sweep(gateway, claimed_at + sending.claim_lease(gateway) + timedelta(seconds=1))
    assert (result.found_sent, result.requeued) == (1, 0)
    found = message(db, message_id)
    assert (found.status, found.provider_sid, found.reason) == ("sent", sid, "recovered")
    assert len(provider_texts(db)) == 1


def test_a_dead_workers_claim_that_never_went_is_queued_again(gateway, db, live_server, instant_sandbox, queue):
    [first, second] = accept(db, count=2)
    claimed_at = utcnow()
    with db.transaction() as session:
        outbox.claim(session, first, claimed_at)
        claimed = outbox.claim(session, second, claimed_at)
    # Another message with the same text went out before: it is not this one.
    assert deliver(gateway, accept(db, body=claimed.body)[0]).status == "sent"
    result = sending.sweep(gateway, claimed_at + sending.claim_lease(gateway) + timedelta(seconds=1))
    assert (result.found_sent, result.requeued, result.enqueued) == (0, 2, 2)
    assert sorted(queue.ids()) == sorted([first, second])
    found = message(db, second)
    assert (found.status, found.reason, [e.status for e in found.events]) == (
        "queued", "claim_expired", ["queued", "sending", "queued"])
    assert deliver(gateway, second).status == "sent"
    assert sorted(t.body for t in provider_texts(db)) == sorted([claimed.body, claimed.body])


def test_a_claim_too_slow_to_commit_never_calls_the_provider(gateway, db, live_server, instant_sandbox,
                                                              monkeypatch):
    # The claim's transaction took half the lease (a stalled store): a call now could outlast the
    # lease, and the sweeper, finding nothing at the provider yet, would queue it for a second send.
    [message_id] = accept(db)
    clock = iter([0.0, sending.claim_lease(gateway).total_seconds() / 2 + 1])
    monkeypatch.setattr(sending, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    outcome = sending.send(gateway, message_id)
    assert (outcome.status, outcome.reason, outcome.retry_in) == ("queued", "claim_late", timedelta(seconds=1))
    found = message(db, message_id)
    assert (found.status, [e.status for e in found.events]) == ("queued", ["queued", "sending", "queued"])
    assert provider_texts(db) == []
    monkeypatch.undo()
    assert deliver(gateway, message_id).status == "sent"
    assert len(provider_texts(db)) == 1


def test_a_claim_is_left_alone_while_the_provider_cannot_be_asked(gateway, db, settings):
    [message_id] = accept(db)
    claimed_at = utcnow()
    with db.transaction() as session:
        outbox.claim(session, message_id, claimed_at)
    unreachable = replace(gateway, make_provider=lambda: Provider(
        settings.twilio_account_sid, settings.twilio_auth_token, api_base_url="http://127.0.0.1:9", status_callback="",
        timeout=2))
    result = sending.sweep(unreachable, claimed_at + sending.claim_lease(unreachable) + timedelta(seconds=1))
    assert (result.unresolved, result.requeued, result.found_sent) == (1, 0, 0)
    assert message(db, message_id).status == "sending"


# --- the reconciler --------------------------------------------------------------------------------


def _sent_without_callbacks(gateway, db, settings, phone=PHONE):
    """A message sent through a provider whose status callbacks go nowhere."""
    [message_id] = accept(db, phone=phone)
    silent = replace(gateway, make_provider=lambda: Provider(
        settings.twilio_account_sid, settings.twilio_auth_token, api_base_url=settings.twilio_api_base_url,
        status_callback="http://127.0.0.1:9/status"))
    assert deliver(silent, message_id).status == "sent"
    return message_id


def test_a_final_status_that_never_came_is_fetched(gateway, db, settings, live_server, instant_sandbox):
    message_id = _sent_without_callbacks(gateway, db, settings)
    sid = message(db, message_id).provider_sid
    wait_for(lambda: provider_texts(db)[0].status == "delivered")
    assert sending.reconcile(gateway) == 0  # too early to ask
    later = utcnow() + outbox.RECONCILE_AFTER + timedelta(seconds=1)
    assert sending.reconcile(gateway, later) == 1
    found = message(db, message_id)
    assert (found.status, found.provider_sid, found.recheck_at) == ("delivered", sid, None)


def test_a_landline_learnt_by_reconciling_is_marked(gateway, db, settings, live_server, instant_sandbox):
    landline = "+14155550100"  # the sandbox's landline: undelivered, 30006
    message_id = _sent_without_callbacks(gateway, db, settings, phone=landline)
    wait_for(lambda: provider_texts(db, landline)[0].status == "undelivered")
    assert sending.reconcile(gateway, utcnow() + outbox.RECONCILE_AFTER + timedelta(seconds=1)) == 1
    found = message(db, message_id)
    assert (found.status, found.error_code) == ("undelivered", 30006)
    with db.sessions() as session:
        assert session.scalar(select(PhoneNumber.reachability).where(PhoneNumber.e164 == landline)) == "landline"


def test_a_message_still_in_flight_is_asked_about_less_and_less(gateway, db, settings):
    [message_id] = accept(db)
    sent_at = utcnow()
    with db.transaction() as session:
        found = session.get(OutboundMessage, message_id)
        found.provider_sid = "SM" + "0" * 32  # Twilio does not know it: fetching fails
        outbox.advance(session, found, "sent", now=sent_at)
    first = sent_at + outbox.RECONCILE_AFTER
    assert sending.reconcile(gateway, first) == 0
    assert message(db, message_id).recheck_at == first + outbox.RECONCILE_AFTER
    much_later = sent_at + outbox.RECONCILE_FOR
    sending.reconcile(gateway, much_later)
    assert message(db, message_id).recheck_at is None  # given up: three days without a final status


# --- claim and result --------------------------------------------------------------------------------


def test_a_message_is_claimed_once(gateway, db):
    [message_id] = accept(db)
    now = utcnow()
    with db.transaction() as session:
        claimed = outbox.claim(session, message_id, now)
        if db.dialect == "postgresql":
            # Another worker meanwhile: the row is locked, so it is not its to take (and it does not wait).
            with db.transaction() as other:
                assert outbox.claim(other, message_id, now) is None
    assert (claimed.id, claimed.number.e164, claimed.attempts) == (message_id, PHONE, 1)
    with db.transaction() as session:
        assert outbox.claim(session, message_id, now) is None  # committed: "sending" is nobody's to claim
    found = message(db, message_id)
    assert (found.status, found.claimed_at, found.attempts, [e.status for e in found.events]) == (
        "sending", now, 1, ["queued", "sending"])


def test_claims_of_one_numbers_texts_take_turns(gateway, db):
    """A claim holds its number's turn until its transaction ends: a second worker's claim of another
    text to that number waits for it (so its gate sees the first one sending), and a claim of a text
    to any other number does not. SQLite: every claim takes the one write lock at BEGIN anyway."""
    first, second = accept(db, count=2)
    [elsewhere] = accept(db, phone="+14155550162")
    now = utcnow()
    with db.transaction() as session:
        assert outbox.claim(session, first, now) is not None
        if db.dialect == "postgresql":
            with db.transaction() as other:
                assert outbox.claim(other, elsewhere, now) is not None
            with pytest.raises(OperationalError, match="lock timeout"), db.transaction() as other:
                other.execute(text("SET LOCAL lock_timeout = '300ms'"))
                outbox.claim(other, second, now)
    with db.transaction() as session:  # the first claim committed: the second's turn
        assert outbox.claim(session, second, now) is not None


def test_a_text_sent_while_an_earlier_one_waited_counts_against_the_cap(gateway, db, example_programs):
    """Web process A stamps a text, stalls, and commits it after web process B's later text went
    out: at the worker, A's text sees B's among those sent and is blocked, not sent past the cap."""
    daily = replace(next(p for p in example_programs if p.slug == "orders"), slug="once", join_keywords=("ONCE",),
                    max_messages=1, per="day", frequency="Up to 1 msg/day")
    with db.transaction() as session:
        programs.store(session, [daily])
    now = utcnow()
    [later] = accept(db, slug="once", now=now - timedelta(seconds=1))
    with db.transaction() as session:
        outbox.advance_by_id(session, later, Status.SENT, now=now)
    [stalled] = accept(db, slug="once", now=now - timedelta(seconds=2))  # stamped before `later`
    outcome = sending.send(gateway, stalled, now=now)
    assert (outcome.status, outcome.reason) == ("blocked", "frequency_cap")


def test_sent_never_undoes_a_status_callback_that_came_first(gateway, db):
    [message_id] = accept(db)
    with db.transaction() as session:
        outbox.claim(session, message_id)
    # Twilio calls back (with our id on the URL) before the worker has written down its answer.
    sid = "SM" + "7" * 32
    assert delivery.record(gateway, DeliveryReport(sid, Status.DELIVERED, message_id=message_id)).moved
    with db.statements() as connection:
        assert not outbox.advance_by_id(connection, message_id, "sent", now=utcnow(), provider_sid=sid)
    found = message(db, message_id)
    assert (found.status, found.provider_sid, [e.status for e in found.events]) == (
        "delivered", sid, ["queued", "sending", "delivered"])


def test_a_final_status_stays_final_when_moved_by_id(gateway, db):
    [message_id] = accept(db)
    now = utcnow()
    with db.statements() as connection:
        assert outbox.advance_by_id(connection, message_id, "blocked", now=now, reason="opted_out")
        assert not outbox.advance_by_id(connection, message_id, "queued", now=now)  # final stays final
    found = message(db, message_id)
    assert (found.status, found.reason, found.recheck_at, [e.status for e in found.events]) == (
        "blocked", "opted_out", None, ["queued", "blocked"])

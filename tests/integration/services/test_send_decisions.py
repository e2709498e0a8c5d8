"""Each send decision kept with the message's history, on the real store: at acceptance (API, batch,
confirmation), in the worker (allowed, deferred, refused) and at a deferral's release; what the
console's page says of them; the export; and that erasure leaves no number in them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from gateway.domain.consent import Input, Source
from gateway.domain.gate import ALLOW, Decision, Kind, Reason
from gateway.domain.numbers import parse
from gateway.services import consents, privacy, release, sending
from gateway.store import consents as store_consents
from gateway.store import outbox, programs
from gateway.store.models import MessageEvent, OutboundMessage, PhoneNumber, utcnow
from tests.console_support import PASSWORD, csrf_of, make_user, web_request
from tests.outbound_support import captured_queue, fresh_limits, weekly  # noqa: F401  (fixtures)
from tests.sandbox_support import instant_sandbox, sandbox_config  # noqa: F401  (a fixture)

NYC = "+12125550171"  # federal rules only, America/New_York
NOON = datetime(2026, 3, 10, 17, 0, tzinfo=UTC)  # 13:00 in New York, a Tuesday
NIGHT = datetime(2026, 3, 11, 3, 0, tzinfo=UTC)  # 23:00 in New York
EVIDENCE = consents.Evidence(Source.IMPORT, actor="test")


@pytest.fixture(autouse=True)
def queue(captured_queue):
    return captured_queue


@pytest.fixture
def headers(make_key):
    return {"Authorization": f"Bearer {make_key('send', 'read', 'admin')}"}



def opt_in(db, phone=NYC, slug="deals", at=NOON - timedelta(days=30)):
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(phone))
        consents.apply(session, row, programs.by_slug(session, slug), Input.IMPORT_OPT_IN, EVIDENCE, now=at)


def accept(db, phone=NYC, slug="deals", at=NOON, decision=ALLOW) -> str:
    """A message stored as accepted without asking the gate (as one accepted before a change would be)."""
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(phone))
        program = programs.by_slug(session, slug)
        return outbox.accept(session, number=row, program=program, kind=Kind(program.category), body="Sale",
                             decision=decision, now=at).id


def steps(db, message_id) -> list[tuple[str, dict | None]]:
    with db.sessions() as session:
        return [(status, json.loads(decision) if decision else None) for status, decision in session.execute(
            select(MessageEvent.status, MessageEvent.decision).where(MessageEvent.message_id == message_id)
            .order_by(MessageEvent.id))]


def last_event(db, phone=NYC, slug="deals"):
    with db.sessions() as session:
        row = store_consents.find_number(session, phone)
        program = programs.by_slug(session, slug)
        event = [e for e in consents.events(session, row) if e.program_id == program.id][-1]
        return {"id": event.id, "seq": event.seq, "hash": event.hash}


# --- where each decision is kept --------------------------------------------------------------------


def test_the_api_keeps_its_decision_on_the_first_step_with_the_ledger_event_behind_the_consent(
        client, headers, db):
    opt_in(db)
    response = client.post("/v1/messages", headers=headers, json={"to": NYC, "program": "deals", "body": "Sale"})
    assert response.status_code == 202
    [(status, kept)] = steps(db, response.json["id"])
    assert status == response.json["status"]  # queued or deferred, by the real clock
    assert kept["stage"] == "api" and kept["outcome"] in ("allowed", "deferred")
    assert kept["consent"]["status"] == "opted_in"
    assert kept["consent"]["event"] == last_event(db)
    assert kept["suppressed"] is False and kept["region"] == "US"
    assert kept["quiet_hours"]["local"][0]["zone"] == "America/New_York"


def test_a_batch_keeps_a_decision_for_each_message_it_stored(client, headers, db):
    other = "+12125550172"
    opt_in(db)
    opt_in(db, other)
    response = client.post("/v1/messages/batch", headers=headers, json={
        "recipients": [NYC, other, "+12125550179"], "program": "deals", "body": "Sale"})
    assert response.json["accepted"] == 2
    with db.sessions() as session:
        ids = list(session.scalars(select(OutboundMessage.id).where(
            OutboundMessage.batch_id == response.json["batch_id"])))
    kept = [steps(db, message_id)[0][1] for message_id in ids]
    assert [k["stage"] for k in kept] == ["batch", "batch"]
    assert {k["consent"]["event"]["id"] for k in kept} == {last_event(db)["id"], last_event(db, other)["id"]}


def test_a_confirmation_text_keeps_the_decision_that_queued_it(gateway, db):
    web_request(gateway, NYC)
    with db.sessions() as session:
        message_id = session.scalars(select(OutboundMessage.id).where(OutboundMessage.kind == "confirmation")).one()
    [(_, kept)] = steps(db, message_id)
    assert (kept["stage"], kept["outcome"], kept["kind"]) == ("confirmation", "allowed", "confirmation")
    assert kept["consent"]["status"] == "pending" and kept["consent"]["event"] == last_event(db)


def test_the_worker_keeps_a_deferral_for_quiet_hours_with_the_local_time(gateway, db):
    opt_in(db)
    message_id = accept(db, at=NIGHT - timedelta(minutes=5))
    assert sending.send(gateway, message_id, now=NIGHT).status == "deferred"
    [(_, first), (claimed, none), (deferred, kept)] = steps(db, message_id)
    assert first is None and (claimed, none) == ("sending", None)  # given ALLOW by hand: no record
    assert deferred == "deferred"
    assert (kept["stage"], kept["outcome"], kept["reason"]) == ("worker", "deferred", "quiet_hours")
    assert kept["quiet_hours"]["local"][0]["time"] == "2026-03-10T23:00:00-04:00"
    assert kept["decided_by"]["rule"] == "federal"


def test_the_worker_keeps_a_refusal_for_an_opt_out_with_the_stop_event(gateway, db):
    opt_in(db)
    with db.transaction() as session:
        row = store_consents.find_number(session, NYC)
        consents.apply(session, row, programs.by_slug(session, "deals"), Input.KEYWORD_STOP, EVIDENCE,
                       now=NOON - timedelta(hours=1))
    message_id = accept(db)
    assert sending.send(gateway, message_id, now=NOON).reason == "opted_out"
    status, kept = steps(db, message_id)[-1]
    assert (status, kept["outcome"], kept["reason"]) == ("blocked", "refused", "opted_out")
    assert kept["consent"] == {"status": "opted_out", "expires_at": None, "event": last_event(db)}


def test_the_worker_keeps_a_refusal_for_the_programs_cap(gateway, db, weekly):
    opt_in(db, slug="weekly")
    first, second, third = (accept(db, slug="weekly", at=NOON + timedelta(minutes=n)) for n in range(3))
    assert sending.send(gateway, third, now=NOON + timedelta(minutes=5)).reason == "frequency_cap"
    _, kept = steps(db, third)[-1]
    assert kept["program_cap"]["reached"] is True and kept["program_cap"]["max"] == 2
    assert kept["program_cap"]["reached_at"] is not None
    assert kept["decided_by"]["citation"] == "Up to 2 msgs/week"
    assert kept["program"]["version"] and kept["decided_by"]["version"] == kept["program"]["version"]


def test_the_worker_keeps_an_allowed_decision_on_its_sending_step_before_the_provider_call(
        gateway, db, live_server, instant_sandbox, fresh_limits):
    opt_in(db, slug="orders")
    message_id = accept(db, slug="orders")
    outcome = sending.send(gateway, message_id)
    assert outcome.status == "sent", outcome
    history = steps(db, message_id)
    [(_, kept)] = [(status, kept) for status, kept in history if status == "sending"]
    assert (kept["stage"], kept["outcome"], kept["kind"]) == ("worker", "allowed", "transactional")
    assert kept["quiet_hours"]["applies"] is False


def test_a_released_deferral_is_decided_again_as_a_release(gateway, db, live_server, instant_sandbox, fresh_limits):
    # Real clocks: the release pass gives slots from the clock. A transactional text, which no quiet
    # hours hold back, deferred until a moment just past.
    opt_in(db, slug="orders")
    opening = utcnow() - timedelta(minutes=1)
    message_id = accept(db, slug="orders", at=opening - timedelta(hours=1),
                        decision=Decision(False, Reason.QUIET_HOURS, opening))
    assert release.release(gateway, utcnow()).paced == 1
    with db.sessions() as session:
        slot = session.get(OutboundMessage, message_id).not_before
    outcome = sending.send(gateway, message_id, now=max(slot, utcnow()) + timedelta(seconds=1))
    assert outcome.status == "sent", outcome
    [kept] = [kept for status, kept in steps(db, message_id) if status == "sending"]
    assert (kept["stage"], kept["outcome"]) == ("release", "allowed")


# --- what the console and the export show -------------------------------------------------------------


def _sign_in(client, db):
    make_user(db, "vera", "viewer")
    page = client.get("/console/login")
    client.post("/console/login", data={"name": "vera", "password": PASSWORD,
                                         "csrf_token": csrf_of(page.get_data(as_text=True))})


def _page(client, db, phone=NYC) -> str:
    with db.sessions() as session:
        number_id = session.scalars(select(PhoneNumber.id).where(PhoneNumber.e164 == phone)).one()
    response = client.get(f"/console/numbers/{number_id}?tz=America/New_York")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def test_the_console_says_why_texts_waited_were_refused_or_went_out(client, gateway, db, weekly, live_server,
                                                                    instant_sandbox,
                                                                    fresh_limits):
    gateway.limiter.reset()
    opt_in(db)
    night = accept(db, at=NIGHT - timedelta(minutes=5))
    sending.send(gateway, night, now=NIGHT)
    opt_in(db, slug="weekly")
    capped = [accept(db, slug="weekly", at=NOON + timedelta(minutes=n)) for n in range(3)][-1]
    sending.send(gateway, capped, now=NOON + timedelta(minutes=5))
    opt_in(db, slug="orders")
    sent = accept(db, slug="orders")
    assert sending.send(gateway, sent).status == "sent"
    with db.transaction() as session:
        row = store_consents.find_number(session, NYC)
        consents.apply(session, row, programs.by_slug(session, "deals"), Input.KEYWORD_STOP, EVIDENCE)
    stopped = accept(db)
    sending.send(gateway, stopped)

    _sign_in(client, db)
    html = _page(client, db)
    assert "Deferred by the worker right before sending, " in html
    assert "quiet hours at the recipient, until " in html
    assert "recipient&#39;s local time 23:00 in America/New_York" in html
    assert "Refused by the worker right before sending" in html
    assert "a frequency cap was reached, under the message frequency the person agreed to" in html
    assert "the person opted out of this program" in html
    assert "Allowed by the worker right before sending" in html
    assert f"made so by ledger event #{last_event(db)['seq']}" in html
    assert "Quiet hours and daily caps do not apply to a transactional text" in html


def test_the_export_carries_each_decision_in_the_messages_history(gateway, db):
    opt_in(db)
    message_id = accept(db, at=NIGHT - timedelta(minutes=5))
    sending.send(gateway, message_id, now=NIGHT)
    with db.sessions() as session:
        document = privacy.export(session, store_consents.find_number(session, NYC))
    [message] = document["outbound_messages"]
    assert [step["status"] for step in message["history"]] == ["queued", "sending", "deferred"]
    assert message["history"][-1]["decision"]["reason"] == "quiet_hours"


def test_erasure_leaves_the_decisions_without_the_number(gateway, db):
    opt_in(db)
    message_id = accept(db, at=NIGHT - timedelta(minutes=5))
    sending.send(gateway, message_id, now=NIGHT)
    with db.transaction() as session:
        row = store_consents.find_number(session, NYC)
        privacy.erase(session, row, gateway.settings.suppression_key, EVIDENCE)
    with db.sessions() as session:
        kept = list(session.scalars(select(MessageEvent.decision).where(MessageEvent.message_id == message_id,
                                                                        MessageEvent.decision.is_not(None))))
    assert kept and all(NYC not in text and NYC[2:] not in text for text in kept)
    # The worker asked about the erased number again refuses it for its suppression, and keeps that too.
    with db.transaction() as session:
        session.execute(OutboundMessage.__table__.update().where(OutboundMessage.id == message_id)
                        .values(status="queued", not_before=None))
    assert sending.send(gateway, message_id, now=NOON).reason == "suppressed"
    status, decision = steps(db, message_id)[-1]
    assert (status, decision["reason"], decision["suppressed"], decision["region"]) == (
        "blocked", "suppressed", True, None)

"""The outbound path end to end: outbox row -> real Celery worker -> provider (the real twilio client)
-> sandbox over HTTP -> signed status callbacks -> our webhook -> the row's final status."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from gateway.store.models import Consent, LedgerEvent, PhoneNumber
from tests.conftest import wait_for
from tests.sandbox_support import (  # noqa: F401  (fixtures)
    opt_in,
    phone_text,
    queue,
    quick_sandbox,
    sandbox_config,
    sandbox_message,
    wait_for_status,
)

pytestmark = pytest.mark.e2e
SID = re.compile(r"^SM[0-9a-f]{32}$")


def test_an_opted_in_number_receives_and_the_callback_marks_it_delivered(worker_process, gateway, db, quick_sandbox):
    handset = "+14155552671"
    opt_in(db, handset, "orders")

    message_id = queue(gateway, handset, "orders", "Acme Orders: order 1234 shipped.")

    message = wait_for_status(db, message_id, "delivered")
    assert SID.match(message.provider_sid)
    assert [e.status for e in message.events] == ["queued", "sending", "sent", "delivered"]
    assert message.attempts == 1 and message.error_code is None
    at_twilio = sandbox_message(db, message.provider_sid)
    assert (at_twilio.to_number, at_twilio.from_number, at_twilio.body) == (
        handset, "+18885550199", "Acme Orders: order 1234 shipped.")
    assert at_twilio.status == "delivered"


def test_a_21610_blocks_the_message_and_records_a_carrier_opt_out(app, worker_process, gateway, db, live_server,
                                                                   quick_sandbox):
    handset = "+14155552672"
    opt_in(db, handset, "deals", "alerts", "orders")
    # The person texted STOP to +15005550006 while our webhook was unreachable: only Twilio knows.
    with sandbox_config(app, sms_url="http://127.0.0.1:9/sms"):
        sid = phone_text(live_server, handset, "+15005550006", "STOP").json()["sid"]
        wait_for(lambda: sandbox_message(db, sid).webhook_error_code == 11205)

    message_id = queue(gateway, handset, "alerts", "Acme Alerts: maintenance tonight.")

    message = wait_for_status(db, message_id, "blocked")
    assert (message.reason, message.error_code, message.provider_sid) == ("opted_out", 21610, None)
    with db.sessions() as session:
        number = session.scalars(select(PhoneNumber).where(PhoneNumber.e164 == handset)).one()
        statuses = {c.program.slug: c.status for c in session.scalars(
            select(Consent).where(Consent.number_id == number.id))}
        carrier_events = [(e.program.slug, e.type, e.actor, e.evidence.get("error_code"))
                          for e in session.scalars(select(LedgerEvent).where(
                              LedgerEvent.number_id == number.id, LedgerEvent.source == "carrier"))]
    # Twilio blocks per sender: both programs on +15005550006, not the one on another number.
    assert statuses == {"deals": "opted_out", "alerts": "opted_out", "orders": "opted_in"}
    assert sorted(carrier_events) == [("alerts", "carrier_opt_out", "twilio", 21610),
                                      ("deals", "carrier_opt_out", "twilio", 21610)]


def test_a_number_twilio_calls_not_mobile_fails_and_is_marked_landline(worker_process, gateway, db, quick_sandbox):
    handset = "+15005550009"  # Twilio's test number that cannot receive SMS: 21614 at create
    opt_in(db, handset, "orders")

    message = wait_for_status(db, queue(gateway, handset, "orders", "Order shipped."), "failed")

    # The reason a status callback's 21614 gives too, and the gate's refusal from now on.
    assert (message.reason, message.error_code, message.provider_sid) == ("landline", 21614, None)
    with db.sessions() as session:
        number = session.scalars(select(PhoneNumber).where(PhoneNumber.e164 == handset)).one()
    assert (number.reachability, number.reachability_code) == ("landline", 21614)


def test_a_landline_ends_undelivered_30006_and_is_marked_landline(worker_process, gateway, db, quick_sandbox):
    handset = "+14155550100"  # the sandbox's landline: accepted, then undelivered 30006
    opt_in(db, handset, "orders")

    message = wait_for_status(db, queue(gateway, handset, "orders", "Order shipped."), "undelivered")

    assert message.error_code == 30006 and SID.match(message.provider_sid)
    assert [e.status for e in message.events][-2:] == ["sent", "undelivered"]
    with db.sessions() as session:
        number = session.scalars(select(PhoneNumber).where(PhoneNumber.e164 == handset)).one()
    assert (number.reachability, number.reachability_code) == ("landline", 30006)


def test_a_retryable_refusal_is_retried_and_then_delivered(worker_process, gateway, db, quick_sandbox):
    handset = "+14155550103"  # the sandbox answers 429 / 20429 to the first create, then accepts
    opt_in(db, handset, "orders")

    message_id = queue(gateway, handset, "orders", "Order shipped.")

    # The worker backs off 10 s after the first refusal (outbox.retry_delay), then sends again.
    message = wait_for_status(db, message_id, "delivered", timeout=45.0)
    assert message.attempts == 2
    events = [(e.status, e.reason, e.error_code) for e in message.events]
    assert ("queued", "provider_retry", 20429) in events
    assert [s for s, _, _ in events][-3:] == ["sending", "sent", "delivered"]

"""Status callbacks: messages move forward only, and error codes teach us about the number."""

import itertools

import pytest
from sqlalchemy import func, select

from gateway.domain.consent import Input, Source
from gateway.domain.gate import ALLOW, Kind
from gateway.domain.numbers import parse
from gateway.domain.outbound import DeliveryReport, ErrorKind, Status
from gateway.services import consents, delivery, policy
from gateway.store import consents as store_consents
from gateway.store import outbox, programs
from gateway.store.models import Consent, LedgerEvent, MessageEvent, OutboundMessage, PhoneNumber, Program, utcnow

STATUS = "/webhooks/twilio/status"
PERSON = "+14155552671"
_sids = itertools.count(1)


def sent_message(db, slug="deals", number=PERSON):
    """A message the worker handed to Twilio: opted in, accepted, sent with a provider sid."""
    now = utcnow()
    sid = f"SM{next(_sids):032x}"
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(number))
        program = programs.by_slug(session, slug)
        if store_consents.consent_row(session, row, program) is None:
            consents.apply(session, row, program, Input.IMPORT_OPT_IN, consents.Evidence(Source.IMPORT), now=now)
        message = outbox.accept(session, number=row, program=program, kind=Kind.INFORMATIONAL, body="Hi",
                                decision=ALLOW, now=now)
        outbox.advance(session, message, "sending", now=now)
        message.provider_sid = sid
        outbox.advance(session, message, "sent", now=now)
    return sid


def callback(sid, status, **fields):
    return {"MessageSid": sid, "SmsSid": sid, "MessageStatus": status, "AccountSid": "AC" + "1" * 32,
            "From": "+15005550006", "To": PERSON, "ApiVersion": "2010-04-01", **fields}


def message(db, sid):
    with db.sessions() as session:
        row = session.scalars(select(OutboundMessage).where(OutboundMessage.provider_sid == sid)).one()
        return row, [e.status for e in session.scalars(
            select(MessageEvent).where(MessageEvent.message_id == row.id).order_by(MessageEvent.id))]


def number_row(db, e164=PERSON):
    with db.sessions() as session:
        return store_consents.find_number(session, e164)


def gate(db, gateway, slug="deals", e164=PERSON):
    with db.sessions() as session:
        return policy.gate_of(gateway).may_send(session, store_consents.find_number(session, e164),
                                                programs.by_slug(session, slug), Kind.INFORMATIONAL, utcnow())


def test_delivered_is_recorded_and_answered_with_twiml(twilio_post, db):
    sid = sent_message(db)
    response = twilio_post(STATUS, callback(sid, "delivered"))
    assert response.status_code == 200
    assert response.mimetype == "application/xml"
    row, history = message(db, sid)
    assert row.status == "delivered"
    assert history[-1] == "delivered"


def test_a_late_sent_never_undoes_delivered(twilio_post, db):
    sid = sent_message(db)
    twilio_post(STATUS, callback(sid, "delivered"))
    twilio_post(STATUS, callback(sid, "sent"))
    twilio_post(STATUS, callback(sid, "queued"))
    row, history = message(db, sid)
    assert row.status == "delivered"
    assert history.count("delivered") == 1 and history[-1] == "delivered"


def test_undelivered_keeps_the_error_code(twilio_post, db):
    sid = sent_message(db)
    twilio_post(STATUS, callback(sid, "undelivered", ErrorCode="30008", ErrorMessage="Unknown error"))
    row, _ = message(db, sid)
    assert (row.status, row.error_code, row.error_message) == ("undelivered", 30008, "Unknown error")
    assert number_row(db).reachability == "ok"


@pytest.mark.parametrize(("code", "reachability"), [
    ("30003", "unreachable"), ("30005", "unreachable"), ("30006", "landline"), ("21614", "landline"),
])
def test_unreachable_and_landline_codes_mark_the_number_and_the_gate_refuses(twilio_post, db, gateway, code,
                                                                             reachability):
    sid = sent_message(db)
    twilio_post(STATUS, callback(sid, "undelivered" if code.startswith("3") else "failed", ErrorCode=code))
    row, _ = message(db, sid)
    assert row.error_code == int(code) and row.reason == reachability
    number = number_row(db)
    assert (number.reachability, number.reachability_code) == (reachability, int(code))
    decision = gate(db, gateway)
    assert not decision.allowed and decision.reason.value == reachability


def test_21610_records_a_carrier_opt_out_for_that_sender_only(twilio_post, db):
    sid = sent_message(db, "deals")
    sent_message(db, "orders")
    twilio_post(STATUS, callback(sid, "failed", ErrorCode="21610", ErrorMessage="Attempt to send to unsubscribed"))
    row, _ = message(db, sid)
    assert (row.status, row.reason, row.error_code) == ("failed", "opted_out", 21610)
    with db.sessions() as session:
        statuses = dict(session.execute(
            select(Program.slug, Consent.status).join(Consent, Consent.program_id == Program.id)
        ).all())
        event = session.scalars(select(LedgerEvent).where(LedgerEvent.type == "carrier_opt_out")).first()
    assert statuses == {"deals": "opted_out", "alerts": "opted_out", "orders": "opted_in"}
    assert (event.source, event.actor, event.reference) == ("carrier", "twilio", sid)
    assert event.evidence["ErrorCode"] == "21610" and event.evidence["MessageSid"] == sid


def test_a_repeated_21610_callback_records_the_opt_out_once(twilio_post, db):
    sid = sent_message(db)
    for _ in range(2):
        twilio_post(STATUS, callback(sid, "failed", ErrorCode="21610"))
    with db.sessions() as session:
        # One event per program on the sender (deals, alerts), from the first callback only.
        assert session.scalar(select(func.count()).where(LedgerEvent.type == "carrier_opt_out")) == 2


def test_an_unknown_message_sid_is_200_and_changes_nothing(twilio_post, db):
    sid = sent_message(db)
    response = twilio_post(STATUS, callback("SM" + "f" * 32, "failed", ErrorCode="21610"))
    assert response.status_code == 200
    row, _ = message(db, sid)
    assert row.status == "sent"
    with db.sessions() as session:
        assert session.scalar(select(func.count()).where(LedgerEvent.type == "carrier_opt_out")) == 0


@pytest.mark.parametrize("missing", ["MessageSid", "MessageStatus"])
def test_a_callback_without_its_sid_or_status_is_400(twilio_post, db, missing):
    sid = sent_message(db)
    params = callback(sid, "delivered")
    del params[missing]
    params.pop("SmsSid" if missing == "MessageSid" else "SmsStatus", None)
    response = twilio_post(STATUS, params)
    assert response.status_code == 400
    assert message(db, sid)[0].status == "sent"


@pytest.mark.parametrize("fields", [
    {"MessageStatus": "receiving"},
    {"MessageStatus": "made-up-status"},
    {"MessageStatus": "failed", "ErrorCode": "not-a-number"},
    {"MessageStatus": "failed", "ErrorCode": "9" * 40},
])
def test_odd_callbacks_get_a_clean_answer(twilio_post, db, fields):
    sid = sent_message(db)
    response = twilio_post(STATUS, {**callback(sid, "x"), **fields})
    assert response.status_code == 200


@pytest.mark.parametrize("fields", [
    {"MessageSid": "SM\x00" + "1" * 31},
    {"MessageStatus": "delivered\x00"},
    {"MessageStatus": "failed", "ErrorMessage": "bad\x00"},
])
def test_a_nul_anywhere_in_a_callback_gets_a_clean_answer(twilio_post, db, fields):
    sid = sent_message(db)
    response = twilio_post(STATUS, {**callback(sid, "x"), **fields})
    assert response.status_code == 200


def test_a_21610_with_odd_fields_still_records_the_carrier_opt_out(twilio_post, db):
    sid = sent_message(db)
    response = twilio_post(STATUS, callback(sid, "failed", ErrorCode="21610", ErrorMessage="unsubscribed\x00",
                                            **{"Odd\x00Name": "x\x00y"}))
    assert response.status_code == 200
    with db.sessions() as session:
        event = session.scalars(select(LedgerEvent).where(LedgerEvent.type == "carrier_opt_out")).first()
        assert set(session.scalars(select(Consent.status))) == {"opted_out"}
    assert event.evidence["Odd\ufffdName"] == "x\ufffdy"
    assert event.evidence["ErrorMessage"] == "unsubscribed\ufffd"


def test_the_core_reports_what_it_did(gateway, db):
    sid = sent_message(db)
    assert delivery.record(gateway, DeliveryReport(sid, Status.DELIVERED)) == delivery.Recorded(
        True, "delivered", True)
    assert delivery.record(gateway, DeliveryReport(sid, Status.SENT)) == delivery.Recorded(True, "delivered", False)
    assert delivery.record(gateway, DeliveryReport("SM" + "0" * 32, Status.SENT)) == delivery.Recorded(False)


def test_a_landline_stays_a_landline(gateway, db):
    first, second = sent_message(db), sent_message(db)
    delivery.record(gateway, DeliveryReport(first, Status.FAILED, 30006, error_kind=ErrorKind.NOT_MOBILE))
    delivery.record(gateway, DeliveryReport(second, Status.UNDELIVERED, 30003, error_kind=ErrorKind.UNREACHABLE))
    with db.sessions() as session:
        assert session.scalars(select(PhoneNumber.reachability)).one() == "landline"


def sending_message(db, number=PERSON):
    """A message a worker has claimed but whose Twilio sid it has not stored yet."""
    now = utcnow()
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(number))
        program = programs.by_slug(session, "deals")
        consents.apply(session, row, program, Input.IMPORT_OPT_IN, consents.Evidence(Source.IMPORT), now=now)
        message = outbox.accept(session, number=row, program=program, kind=Kind.INFORMATIONAL, body="Hi",
                                decision=ALLOW, now=now)
        outbox.advance(session, message, "sending", now=now)
        return message.id


def test_a_callback_that_beats_the_worker_finds_its_message_by_our_id(twilio_post, db):
    message_id = sending_message(db)
    sid = f"SM{next(_sids):032x}"
    response = twilio_post(f"{STATUS}?message_id={message_id}", callback(sid, "delivered"))
    assert response.status_code in (200, 204)
    row, history = message(db, sid)
    assert row.id == message_id and row.status == "delivered"
    assert history[-1] == "delivered"


def test_our_id_does_not_let_a_callback_claim_a_message_with_another_sid(twilio_post, db):
    sid = sent_message(db)
    with db.sessions() as session:
        message_id = session.scalars(select(OutboundMessage.id).where(OutboundMessage.provider_sid == sid)).one()
    twilio_post(f"{STATUS}?message_id={message_id}", callback(f"SM{next(_sids):032x}", "failed", ErrorCode="30003"))
    row, _ = message(db, sid)
    assert row.status == "sent" and row.error_code is None

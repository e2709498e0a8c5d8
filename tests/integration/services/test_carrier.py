"""What Twilio's answers teach about a number, learnt the same way whether the code came back from a
send or in a status callback (one table, one place that learns): 30003 marks the number unreachable,
21635 a landline, and 21407 refuses that one message without marking the number at all."""

import itertools
import time

import pytest
from sqlalchemy import select

from gateway.domain.consent import Input, Source
from gateway.domain.gate import ALLOW, Kind
from gateway.domain.numbers import parse
from gateway.domain.outbound import Status
from gateway.services import consents, policy, sending
from gateway.store import consents as store_consents
from gateway.store import outbox, programs
from gateway.store.models import OutboundMessage, PhoneNumber, utcnow
from gateway.twilio.sandbox.config import TestNumber
from tests.outbound_support import captured_queue, fresh_limits  # noqa: F401  (fixtures)
from tests.sandbox_support import sandbox_config

STATUS = "/webhooks/twilio/status"
_numbers = itertools.count(0)

# code -> (the number's reachability after it, the send gate's refusal afterwards, or None: allowed;
# the failed message's reason where the code says something about the recipient)
LEARNT = {
    30003: ("unreachable", "unreachable", "unreachable"),
    21635: ("landline", "landline", "landline"),
    21407: ("ok", None, None),
}


@pytest.fixture(autouse=True)
def queue(captured_queue):
    """Nothing here goes to the session's worker."""
    return captured_queue


def a_number() -> str:
    return f"+1415555{next(_numbers) + 180:04d}"


def accepted(db, phone: str) -> str:
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(phone))
        program = programs.by_slug(session, "orders")
        consents.apply(session, row, program, Input.IMPORT_OPT_IN, consents.Evidence(Source.IMPORT, actor="test"))
        return outbox.accept(session, number=row, program=program, kind=Kind(program.category), body="Shipped",
                             decision=ALLOW).id


def learnt(db, gateway, phone: str, message_id: str):
    """The number's reachability, the message's status and reason, and what the gate now says."""
    with db.sessions() as session:
        number = session.scalars(select(PhoneNumber).where(PhoneNumber.e164 == phone)).one()
        message = session.get(OutboundMessage, message_id)
        decision = policy.gate_of(gateway).may_send(session, number, programs.by_slug(session, "orders"),
                                                    Kind.TRANSACTIONAL, utcnow())
        refusal = None if decision.allowed else decision.reason.value
        return number.reachability, (message.status, message.error_code, message.reason), refusal


def refused_at_send(app, gateway, db, code: int):
    phone = a_number()
    message_id = accepted(db, phone)
    with sandbox_config(app, test_numbers={phone: TestNumber(phone, "refused", create_error=code)}):
        outcome = sending.send(gateway, message_id)
        while outcome.reason == "sender_busy":  # the limiter is shared with the session's worker
            time.sleep(outcome.retry_in.total_seconds())
            outcome = sending.send(gateway, message_id)
    assert outcome.status == Status.FAILED
    return learnt(db, gateway, phone, message_id)


def reported_by_callback(twilio_post, gateway, db, code: int):
    phone = a_number()
    message_id = accepted(db, phone)
    sid = f"SM{next(_numbers):032x}"
    with db.transaction() as session:
        message = session.get(OutboundMessage, message_id)
        outbox.advance(session, message, Status.SENDING)
        message.provider_sid = sid
        outbox.advance(session, message, Status.SENT)
    response = twilio_post(STATUS, {"MessageSid": sid, "MessageStatus": "failed", "ErrorCode": str(code),
                                    "To": phone, "From": "+15005550006"})
    assert response.status_code == 200
    return learnt(db, gateway, phone, message_id)


@pytest.mark.parametrize("code", sorted(LEARNT))
def test_a_send_and_a_status_callback_learn_the_same_from_a_code(app, gateway, db, live_server, twilio_post, code):
    reachability, refusal, reason = LEARNT[code]
    at_send = refused_at_send(app, gateway, db, code)
    in_callback = reported_by_callback(twilio_post, gateway, db, code)
    # A refusal that teaches nothing still fails the send it refused; a callback leaves no reason.
    assert at_send == (reachability, (Status.FAILED, code, reason or "provider_error"), refusal)
    assert in_callback == (reachability, (Status.FAILED, code, reason), refusal)

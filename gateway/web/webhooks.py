"""Twilio's webhooks: inbound texts and status callbacks. Verify → parse → core → TwiML.

Both routes are POST only (GET is 405) and signed (auth.twilio_signed, which also caps the body at
64 kB). The core commits before we answer, so an opt-out is durable before Twilio hears back; when the
store cannot take a text, it is journaled on disk first and answered with an empty TwiML (inbound_journal).
"""

from __future__ import annotations

from flask import Blueprint, Response, request

from gateway.services import delivery, inbound, inbound_journal
from gateway.twilio import callbacks, twiml
from gateway.web.auth import twilio_signed
from gateway.web.context import current
from gateway.web.errors import ApiError

bp = Blueprint("webhooks", __name__)

# Well-formed but not ours to act on: 422. A request missing what Twilio always sends: 400.
_UNPROCESSABLE = frozenset({"invalid_number", "unknown_sender"})


def _answer(reply: str | None = None) -> Response:
    """A TwiML answer: one <Message> with `reply`, or an empty <Response/> (no reply)."""
    return Response(twiml.reply(reply), status=200, mimetype=twiml.MIMETYPE)


@bp.post("/webhooks/twilio/sms")
@twilio_signed
def inbound_sms():
    try:
        handled = inbound_journal.receive(current(), inbound.InboundText.from_form(request.form))
    except inbound.BadInbound as problem:
        raise ApiError(422 if problem.code in _UNPROCESSABLE else 400, problem.code, str(problem)) from None
    return _answer(handled.reply)


@bp.post("/webhooks/twilio/status")
@twilio_signed
def status_callback():
    try:
        report = callbacks.delivery_report(request.form, message_id=request.args.get("message_id"))
    except callbacks.BadCallback as problem:
        raise ApiError(400, "missing_field", str(problem)) from None
    delivery.record(current(), report)
    return _answer()

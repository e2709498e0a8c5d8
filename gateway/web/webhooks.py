"""Twilio's webhooks: inbound texts and status callbacks. Verify → parse → core → TwiML.

Both routes are POST only (GET is 405) and signed (auth.twilio_signed, which also caps the body at
64 kB). The core commits before we answer, so an opt-out is durable before Twilio hears back.
"""

from __future__ import annotations

import functools

from flask import Blueprint, Response, request
from twilio.twiml.messaging_response import MessagingResponse

from gateway.services import delivery, inbound
from gateway.bootstrap import current
from gateway.web.auth import twilio_signed
from gateway.web.errors import ApiError

bp = Blueprint("webhooks", __name__)

# Well-formed but not ours to act on: 422. A request missing what Twilio always sends: 400.
_UNPROCESSABLE = frozenset({"invalid_number", "unknown_sender"})


def twiml(reply: str | None = None) -> Response:
    """A TwiML answer: one <Message> with `reply`, or an empty <Response/> (no reply)."""
    return Response(_twiml_document(reply), status=200, mimetype="application/xml")


@functools.lru_cache(maxsize=256)  # replies come from a few templates: build each document once
def _twiml_document(reply: str | None) -> str:
    response = MessagingResponse()
    if reply:
        response.message(reply)
    return str(response)


@bp.post("/webhooks/twilio/sms")
@twilio_signed
def inbound_sms():
    try:
        handled = inbound.handle(current(), inbound.InboundText.from_form(request.form))
    except inbound.BadInbound as problem:
        raise ApiError(422 if problem.code in _UNPROCESSABLE else 400, problem.code, str(problem)) from None
    return twiml(handled.reply)


@bp.post("/webhooks/twilio/status")
@twilio_signed
def status_callback():
    try:
        callback = delivery.StatusCallback.from_form(request.form, message_id=request.args.get("message_id"))
    except delivery.BadCallback as problem:
        raise ApiError(400, "missing_field", str(problem)) from None
    delivery.record(current(), callback)
    return twiml()

"""TwiML answers to Twilio's webhooks."""

from __future__ import annotations

import functools

from twilio.twiml.messaging_response import MessagingResponse

MIMETYPE = "application/xml"


@functools.lru_cache(maxsize=256)  # replies come from a few templates: build each document once
def reply(text: str | None = None) -> str:
    """One <Message> with `text`, or an empty <Response/> (no reply)."""
    response = MessagingResponse()
    if text:
        response.message(text)
    return str(response)

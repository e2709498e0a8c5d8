"""Status callbacks: what Twilio tells us became of a message we sent.

The message moves only forward (outbox.advance: a late "sent" never undoes "delivered"), keeps
Twilio's error code, and some codes teach us about the number: 21610 is an opt-out the person made
at Twilio, 30003/30005 an unreachable handset, 30006/21614 a landline. The send gate then refuses
that number with the matching reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from gateway import metrics
from gateway.store import outbox
from gateway.domain import storable
from gateway.services import carrier
from gateway.domain.consent import Source
from gateway.services.consents import Evidence
from gateway.bootstrap import Gateway
from gateway.store.models import OutboundMessage, PhoneNumber, utcnow
from gateway.domain.numbers import mask
from gateway.twilio.client import STATUSES, our_status

log = logging.getLogger(__name__)

OPTED_OUT_CODE = 21610
UNREACHABLE_CODES = frozenset({30003, 30005})  # unreachable / unknown destination handset
LANDLINE_CODES = frozenset({30006, 21614})  # landline or unreachable carrier / not a mobile number
# Why the message ended as it did, for GET /v1/messages/{id}; matches the send gate's reasons.
_REASONS = {OPTED_OUT_CODE: "opted_out", **{c: "unreachable" for c in UNREACHABLE_CODES},
            **{c: "landline" for c in LANDLINE_CODES}}


class BadCallback(ValueError):
    """A status callback without the fields we need; nothing was changed."""


@dataclass(frozen=True)
class StatusCallback:
    message_sid: str
    status: str  # Twilio's word: queued, sent, delivered, undelivered, failed…
    error_code: int | None = None
    error_message: str | None = None
    fields: Mapping[str, str] | None = None  # everything Twilio sent: the evidence of a 21610
    message_id: str | None = None  # ours, from the callback URL we gave Twilio

    @classmethod
    def from_form(cls, form: Mapping[str, str], message_id: str | None = None) -> StatusCallback:
        """Read Twilio's callback fields; raise BadCallback when MessageSid or the status is missing."""
        # Nothing in a callback may stop it being recorded (a 21610 is an opt-out): what the store
        # cannot hold (NUL, lone surrogates) becomes U+FFFD, in names and values alike.
        form = {storable.storable_text(name): storable.storable_text(form.get(name, "")) for name in form}
        sid = form.get("MessageSid", "").strip() or form.get("SmsSid", "").strip()
        status = (form.get("MessageStatus", "") or form.get("SmsStatus", "")).strip().lower()
        if not sid or len(sid) > 40:
            raise BadCallback("MessageSid is required")
        if not status or len(status) > 40:
            raise BadCallback("MessageStatus is required")
        raw_code = form.get("ErrorCode", "").strip()
        code = int(raw_code) if raw_code.isdigit() and len(raw_code) < 10 else None
        message = form.get("ErrorMessage", "").strip() or None
        return cls(sid, status, code, message, form, storable.storable_text(message_id or "")[:36] or None)


@dataclass(frozen=True)
class Recorded:
    found: bool  # False: not a message of ours (or not yet known): nothing changed
    status: str | None = None  # the message's status after the callback
    moved: bool = False


def record(gateway: Gateway, callback: StatusCallback, *, now: datetime | None = None) -> Recorded:
    """Apply one status callback in one transaction; unknown MessageSids change nothing."""
    now = now or utcnow()
    metrics.DELIVERY_STATUS.labels(status=callback.status if callback.status in STATUSES else "other").inc()
    with gateway.db.transaction() as session:
        # Our id first: Twilio can call back before the worker has stored its sid.
        match = OutboundMessage.provider_sid == callback.message_sid
        if callback.message_id:
            match = (OutboundMessage.id == callback.message_id) & (
                (OutboundMessage.provider_sid == callback.message_sid) | OutboundMessage.provider_sid.is_(None))
        message = session.scalars(
            select(OutboundMessage).where(match).with_for_update().execution_options(populate_existing=True)
        ).one_or_none()
        if message is None:
            # Twilio must not retry: answer 200. The reconciler fetches statuses we never matched.
            log.info("status callback for unknown message %s (%s)", callback.message_sid, callback.status)
            return Recorded(found=False)
        if message.provider_sid is None:
            message.provider_sid = callback.message_sid
        code = callback.error_code
        first_report = code is not None and message.error_code != code
        status = our_status(callback.status)
        moved = status is not None and outbox.advance(
            session, message, status, now=now, reason=_REASONS.get(code), error_code=code,
            error_message=callback.error_message,
        )
        if first_report and (code == OPTED_OUT_CODE or code in UNREACHABLE_CODES or code in LANDLINE_CODES):
            if not moved:
                message.error_code = code  # remember it, so a repeated callback acts once
            _learn_about_number(session, message, callback, code, now)
        return Recorded(True, message.status, moved)


def _learn_about_number(session, message: OutboundMessage, callback: StatusCallback, code: int,
                        now: datetime) -> None:
    number = session.scalars(
        select(PhoneNumber).where(PhoneNumber.id == message.number_id).with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    if code == OPTED_OUT_CODE:
        carrier.record_opt_out(session, number, message.sender, Evidence(
            source=Source.CARRIER, actor="twilio", reference=callback.message_sid,
            details={**(callback.fields or {}), "stage": "status_callback", "message_id": message.id},
        ), now=now)
        log.info("carrier opt-out of %s on %s (21610 in a status callback)", mask(number.e164), message.sender)
    elif code in LANDLINE_CODES:
        number.reachability, number.reachability_code = "landline", code
    elif number.reachability != "landline":  # a landline stays a landline; it is the stronger fact
        number.reachability, number.reachability_code = "unreachable", code


__all__ = ["BadCallback", "Recorded", "StatusCallback", "record"]

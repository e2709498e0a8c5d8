"""Twilio's status callbacks read into DeliveryReports: Twilio's field names, statuses and codes stop here."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.domain import storable
from gateway.domain.outbound import DeliveryReport
from gateway.twilio.errors import error_kind
from gateway.twilio.statuses import our_status


class BadCallback(ValueError):
    """A status callback without the fields we need; nothing was changed."""


def delivery_report(form: Mapping[str, str], message_id: str | None = None) -> DeliveryReport:
    """Read Twilio's callback fields; raise BadCallback when MessageSid or the status is missing.

    `message_id` is ours, from the query of the callback URL we gave Twilio.
    """
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
    return DeliveryReport(
        sid=sid, status=our_status(status), error_code=code, error_message=form.get("ErrorMessage", "").strip() or None,
        error_kind=error_kind(code) if code is not None else None, provider_status=status, fields=form,
        message_id=storable.storable_text(message_id or "")[:36] or None,
    )


def fetched_report(sid: str, status: str, code: int | None) -> DeliveryReport:
    """A status we fetched from Twilio (the reconciler), as if Twilio had called back with it."""
    return DeliveryReport(
        sid=sid, status=our_status(status), error_code=code, error_kind=error_kind(code) if code is not None else None,
        provider_status=status, fields={"MessageSid": sid, "MessageStatus": status, "ErrorCode": str(code or ""),
                                        "Source": "reconcile"},
    )

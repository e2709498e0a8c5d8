"""Sending one outbox message: claim, ask the gate again, call the provider, record the outcome.

This is the worker's whole job for a message; the Celery task only calls `send` and schedules a
retry when told to. The gate runs in the same transaction that claims the row, so an opt-out
committed before the claim always wins, and the provider is called only after that commit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from gateway import metrics, outbox, policy
from gateway.consent import carrier
from gateway.consent.machine import Source
from gateway.consent.service import Evidence
from gateway.context import Gateway
from gateway.models import OutboundMessage, PhoneNumber, utcnow
from gateway.numbers import mask
from gateway.provider import ErrorKind, ProviderError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What happened to the message; `retry_in` asks the caller to run it again after a delay."""

    status: str
    reason: str | None = None
    retry_in: timedelta | None = None


SKIPPED = Outcome("skipped")


@dataclass(frozen=True)
class _Request:
    id: str
    to: str
    sender: str
    body: str
    kind: str
    attempts: int


def _prepare(gateway: Gateway, message_id: str, now: datetime) -> _Request | Outcome:
    with gateway.db.transaction() as session:
        message = outbox.claim(session, message_id, now)
        if message is None:
            return SKIPPED
        decision = policy.may_send(
            session, message.number, message.program, policy.Kind(message.kind), now,
            suppression_key=gateway.settings.suppression_key, rules=gateway.quiet_hours, message_id=message.id,
        )
        if decision.deferred:
            outbox.advance(session, message, "deferred", now=now, reason=decision.reason.value,
                           not_before=decision.not_before)
            return Outcome("deferred", decision.reason.value)
        if not decision.allowed:
            outbox.advance(session, message, "blocked", now=now, reason=decision.reason.value)
            metrics.MESSAGES_REFUSED.labels(reason=decision.reason.value, stage="worker").inc()
            log.info("blocked %s to %s: %s", message.id, mask(message.number.e164), decision.reason.value)
            return Outcome("blocked", decision.reason.value)
        return _Request(message.id, message.number.e164, message.sender, message.body, message.kind, message.attempts)


def send(gateway: Gateway, message_id: str, now: datetime | None = None) -> Outcome:
    """Send one message if it is still ours to send and still allowed."""
    now = now or utcnow()
    prepared = _prepare(gateway, message_id, now)
    if isinstance(prepared, Outcome):
        return prepared
    try:
        sent = gateway.provider.send(to=prepared.to, sender=prepared.sender, body=prepared.body)
    except ProviderError as error:
        return _record_failure(gateway, prepared, error)
    with gateway.db.transaction() as session:
        message = session.get(OutboundMessage, prepared.id)
        message.provider_sid = sent.sid
        # A callback may have beaten us here with "delivered"; advance() keeps the furthest status.
        outbox.advance(session, message, "sent", now=utcnow())
    metrics.MESSAGES_SENT.labels(kind=prepared.kind).inc()
    return Outcome("sent")


def _record_failure(gateway: Gateway, request: _Request, error: ProviderError) -> Outcome:
    now = utcnow()
    with gateway.db.transaction() as session:
        message = session.get(OutboundMessage, request.id)
        number = session.scalars(
            select(PhoneNumber).where(PhoneNumber.id == message.number_id).with_for_update()
        ).one()
        if error.kind is ErrorKind.RETRYABLE and request.attempts < outbox.MAX_ATTEMPTS:
            delay = outbox.retry_delay(request.attempts)
            outbox.advance(session, message, "queued", now=now, reason="provider_retry", error_code=error.code,
                           error_message=error.message, not_before=now + delay)
            return Outcome("queued", "provider_retry", retry_in=delay)
        if error.kind is ErrorKind.RETRYABLE:
            outbox.advance(session, message, "failed", now=now, reason="provider_unavailable",
                           error_code=error.code, error_message=error.message)
            return Outcome("failed", "provider_unavailable")
        if error.kind is ErrorKind.OPTED_OUT:
            outbox.advance(session, message, "blocked", now=now, reason="opted_out", error_code=error.code,
                           error_message=error.message)
            carrier.record_opt_out(session, number, message.sender, Evidence(
                source=Source.CARRIER, actor="twilio", reference=message.id,
                details={"error_code": error.code, "error_message": error.message, "stage": "send"},
            ), now=now)
            return Outcome("blocked", "opted_out")
        reason = {ErrorKind.INVALID_NUMBER: "invalid_number", ErrorKind.NOT_MOBILE: "not_mobile"}.get(
            error.kind, "provider_error")
        if error.kind is ErrorKind.INVALID_NUMBER:
            number.reachability, number.reachability_code = "unreachable", error.code
        elif error.kind is ErrorKind.NOT_MOBILE:
            number.reachability, number.reachability_code = "landline", error.code
        outbox.advance(session, message, "failed", now=now, reason=reason, error_code=error.code,
                       error_message=error.message)
        log.info("failed %s to %s: %s", message.id, mask(request.to), error)
        return Outcome("failed", reason)

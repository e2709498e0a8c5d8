"""Delivery reports: what the provider tells us became of a message we sent.

The message moves only forward (outbox.advance: a late "sent" never undoes "delivered") and keeps
the provider's error code. A code that says something about the recipient (an opt-out made at
Twilio, an unreachable handset, a landline) is learnt once, the way a refused send learns it
(services.carrier), and the send gate then refuses that number with the matching reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from gateway import metrics
from gateway.domain.consent import Source
from gateway.domain.numbers import mask
from gateway.domain.outbound import DeliveryReport, ErrorKind, Status
from gateway.services import carrier
from gateway.services.consents import Evidence
from gateway.services.ports import Gateway
from gateway.store import outbox
from gateway.store.models import OutboundMessage, PhoneNumber, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recorded:
    found: bool  # False: not a message of ours (or not yet known): nothing changed
    status: Status | None = None  # the message's status after the report
    moved: bool = False


def record(gateway: Gateway, report: DeliveryReport, *, now: datetime | None = None) -> Recorded:
    """Apply one delivery report in one transaction; unknown sids change nothing."""
    now = now or utcnow()
    metrics.DELIVERY_STATUS.labels(status=report.provider_status if report.status is not None else "other").inc()
    with gateway.db.transaction() as session:
        # Our id first: the provider can call back before the worker has stored its sid.
        match = OutboundMessage.provider_sid == report.sid
        if report.message_id:
            match = (OutboundMessage.id == report.message_id) & (
                (OutboundMessage.provider_sid == report.sid) | OutboundMessage.provider_sid.is_(None))
        message = session.scalars(
            select(OutboundMessage).where(match).with_for_update().execution_options(populate_existing=True)
        ).one_or_none()
        if message is None:
            # The provider must not retry: answer 200. The reconciler fetches statuses we never matched.
            log.info("status callback for unknown message %s (%s)", report.sid, report.provider_status)
            return Recorded(found=False)
        if message.provider_sid is None:
            message.provider_sid = report.sid
        code, kind = report.error_code, report.error_kind
        first_report = code is not None and message.error_code != code
        moved = report.status is not None and outbox.advance(
            session, message, report.status, now=now, reason=kind.reason if kind else None, error_code=code,
            error_message=report.error_message,
        )
        if first_report and kind is not None and (kind is ErrorKind.OPTED_OUT or kind.reachability is not None):
            if not moved:
                message.error_code = code  # remember it, so a repeated report acts once
            _learn_about_number(session, message, report, kind, now)
        return Recorded(True, Status(message.status), moved)


def _learn_about_number(session, message: OutboundMessage, report: DeliveryReport, kind: ErrorKind,
                        now: datetime) -> None:
    number = session.scalars(
        select(PhoneNumber).where(PhoneNumber.id == message.number_id).with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    if kind is ErrorKind.OPTED_OUT:
        learnt = carrier.learn_refusal_21610(session, number, message.sender, Evidence(
            source=Source.CARRIER, actor="twilio", reference=report.sid,
            details={**(report.fields or {}), "stage": "status_callback", "message_id": message.id},
        ), now=now, message_id=message.id)
        if not learnt:
            message.reason = carrier.TWILIO_BLOCKED  # the block we knew of: the refusal is expected
            log.info("%s refused with %s: Twilio's known block of %s on %s", message.id, report.error_code,
                     mask(number.e164), message.sender)
    else:
        carrier.learn_reachability(number, kind.reachability, report.error_code)


__all__ = ["Recorded", "record"]

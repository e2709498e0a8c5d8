"""The outbox: outbound messages as rows, moved through their statuses one way only.

A message is a row before it is a task: `accept` stores it, the caller enqueues its id after commit,
`claim` lets exactly one worker take it, and `advance` is the only writer of its status.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from gateway.models import MessageEvent, OutboundMessage, PhoneNumber, Program, utcnow
from gateway.policy import Decision, Kind
from gateway.segments import count as count_segments

# Rank of each status: a message only ever moves to a higher rank (a late "sent" callback must
# not undo "delivered"). Equal ranks do not replace each other, except deferred <-> queued.
RANK = {
    "queued": 0, "deferred": 0,
    "sending": 1,
    "sent": 2,
    "delivered": 3, "undelivered": 3, "failed": 3, "blocked": 3,
}
FINAL = frozenset(s for s, r in RANK.items() if r == 3)
# A claim older than this is presumed to belong to a dead worker (see `claim` and the sweeper).
CLAIM_TIMEOUT = timedelta(minutes=5)
MAX_ATTEMPTS = 6


def advance(
    session: Session,
    message: OutboundMessage,
    status: str,
    *,
    now: datetime | None = None,
    reason: str | None = None,
    error_code: int | None = None,
    error_message: str | None = None,
    not_before: datetime | None = None,
) -> bool:
    """Move `message` to `status` if that is forward; record the step. Return whether it moved."""
    current = message.status
    forward = RANK[status] > RANK[current] or (
        RANK[status] == RANK[current] == 0 and status != current
    )
    # A retry puts a claimed message back in the queue: the one permitted step backwards.
    retry = current == "sending" and status == "queued"
    if not (forward or retry):
        return False
    now = now or utcnow()
    message.status = status
    message.updated_at = now
    if reason is not None:
        message.reason = reason
    if error_code is not None:
        message.error_code = error_code
    if error_message is not None:
        message.error_message = error_message[:500]
    message.not_before = not_before
    if status != "sending":
        message.claimed_at = None
    session.add(MessageEvent(message_id=message.id, status=status, reason=reason, error_code=error_code, occurred_at=now))
    return True


def accept(
    session: Session,
    *,
    number: PhoneNumber,
    program: Program,
    kind: Kind,
    body: str,
    decision: Decision,
    now: datetime | None = None,
    api_key_id: int | None = None,
    idempotency_key: str | None = None,
    batch_id: str | None = None,
) -> OutboundMessage:
    """Store a message the gate allowed (or deferred). The caller enqueues `queued` ones after commit."""
    if not (decision.allowed or decision.deferred):
        raise ValueError(f"the gate refused this message: {decision.reason}")
    now = now or utcnow()
    segments = count_segments(body)
    status = "deferred" if decision.deferred else "queued"
    message = OutboundMessage(
        number_id=number.id, program_id=program.id, kind=kind.value, sender=program.sender_key, body=body,
        segments=segments.segments, encoding=segments.encoding, status=status,
        reason=decision.reason.value if decision.reason else None, not_before=decision.not_before,
        api_key_id=api_key_id, idempotency_key=idempotency_key, batch_id=batch_id, created_at=now, updated_at=now,
    )
    session.add(message)
    session.flush()
    session.add(MessageEvent(message_id=message.id, status=status, reason=message.reason, occurred_at=now))
    return message


def claim(session: Session, message_id: str, now: datetime | None = None) -> OutboundMessage | None:
    """Take the message for sending, or None if it is not ours to send (done, held, or not yet due).

    The row lock plus the status check make two workers racing for one id send it once.
    """
    now = now or utcnow()
    query = select(OutboundMessage).where(OutboundMessage.id == message_id).with_for_update(skip_locked=True)
    message = session.scalars(query.execution_options(populate_existing=True)).one_or_none()
    if message is None:
        return None
    due = message.not_before is None or message.not_before <= now
    if message.status in ("queued", "deferred") and due:
        advance(session, message, "sending", now=now)
        message.claimed_at = now
        message.attempts += 1
        return message
    return None


def stale_claims(session: Session, now: datetime, limit: int = 500) -> list[OutboundMessage]:
    """Messages a worker claimed and never finished: it died between claim and result."""
    return list(session.scalars(
        select(OutboundMessage)
        .where(OutboundMessage.status == "sending", OutboundMessage.claimed_at < now - CLAIM_TIMEOUT)
        .order_by(OutboundMessage.claimed_at).limit(limit).with_for_update(skip_locked=True)
    ))


def due_ids(session: Session, now: datetime, older_than: timedelta, limit: int = 1000) -> list[str]:
    """Ids to (re-)enqueue: deferred ones now due, and queued ones whose task seems lost."""
    return list(session.scalars(
        select(OutboundMessage.id)
        .where(or_(
            (OutboundMessage.status == "deferred") & (OutboundMessage.not_before <= now),
            (OutboundMessage.status == "queued")
            & (OutboundMessage.updated_at < now - older_than)
            & or_(OutboundMessage.not_before.is_(None), OutboundMessage.not_before <= now),
        ))
        .order_by(OutboundMessage.created_at).limit(limit)
    ))


def retry_delay(attempts: int) -> timedelta:
    """Exponential backoff for retryable provider errors: 10 s, 20 s, 40 s … capped at 10 min."""
    return timedelta(seconds=min(600, 10 * 2 ** max(0, attempts - 1)))


@dataclass(frozen=True)
class History:
    status: str
    reason: str | None
    error_code: int | None
    at: datetime


def history(message: OutboundMessage) -> list[History]:
    return [History(e.status, e.reason, e.error_code, e.occurred_at) for e in message.events]

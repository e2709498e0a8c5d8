"""Pending double opt-in requests that nobody confirmed in time."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.domain.consent import Input, Source, Status
from gateway.services import consents
from gateway.store.models import Consent, PhoneNumber, utcnow


def expire_pending(session: Session, now: datetime | None = None, batch: int = 500) -> int:
    """Move every pending consent past its deadline to expired; return how many."""
    now = now or utcnow()
    due = session.execute(
        select(Consent.number_id, Consent.program_id)
        .where(Consent.status == Status.PENDING.value, Consent.expires_at <= now)
        .limit(batch)
    ).all()
    evidence = consents.Evidence(source=Source.SYSTEM, actor="system", details={"rule": "pending_ttl"})
    expired = 0
    for number_id, program_id in due:
        number = session.scalars(
            select(PhoneNumber).where(PhoneNumber.id == number_id).with_for_update()
        ).one()
        consent = session.scalars(
            select(Consent).where(Consent.number_id == number_id, Consent.program_id == program_id)
        ).one()
        # Re-checked under the lock: a YES may have confirmed it since the query above.
        if consent.status == Status.PENDING.value and consent.expires_at and consent.expires_at <= now:
            consents.apply(session, number, consent.program, Input.DOI_EXPIRED, evidence, now=now)
            expired += 1
    return expired

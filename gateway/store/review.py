"""The review list's reads: replies kept for review that no later event has settled (the rule is
gateway/domain/review.py; services/review.py resolves them).

A review event is read through the partial index of review events (ix_ledger_events_review), newest
first; whether a later event settles it is one probe of the number's chain on its (number_id, seq) key.
Nothing is stored beside the ledger: what awaits review is what the chains say, so a rebuilt or
replayed store lists the same replies.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from sqlalchemy import String, and_, cast, exists, literal, or_, select
from sqlalchemy.orm import Session

from gateway.domain.review import ERASURE_EVENT, NOT_REVOCATION_EVENT, REFERENCE_PREFIX, REVIEW_EVENT, SETTLING_INPUTS
from gateway.store.models import Consent, LedgerEvent, PhoneNumber, Program

EVENTS, NUMBERS, PROGRAMS, CONSENTS = (LedgerEvent.__table__, PhoneNumber.__table__, Program.__table__,
                                       Consent.__table__)
_REVIEW, _LATER = EVENTS.alias("review"), EVENTS.alias("later")


def _settles(review, later):
    """`later` settles `review` (two aliases of the ledger): see gateway/domain/review.py."""
    resolves_it = and_(later.c.type == NOT_REVOCATION_EVENT,
                       later.c.reference == literal(REFERENCE_PREFIX) + cast(review.c.id, String))
    return and_(later.c.number_id == review.c.number_id, later.c.seq > review.c.seq,
                or_(later.c.type == ERASURE_EVENT,
                    and_(later.c.program_id == review.c.program_id,
                         or_(later.c.input.in_(sorted(SETTLING_INPUTS)), resolves_it))))


class Pending(NamedTuple):
    """One reply awaiting review, with what the list shows of it."""

    event_id: int
    number_id: int
    seq: int
    occurred_at: datetime
    evidence: dict
    e164: str
    program_slug: str
    program_name: str
    consent: str | None  # the program's consent status now (None: none held)


def pending(session: Session, *, program_id: int | None = None, number_id: int | None = None,
            limit: int | None = None, before: int | None = None) -> list[Pending]:
    """Replies awaiting review, newest recorded first: at most `limit`, of one program or one number if
    given, and only those recorded before event id `before` (the next page)."""
    query = (
        select(_REVIEW.c.id, _REVIEW.c.number_id, _REVIEW.c.seq, _REVIEW.c.occurred_at, _REVIEW.c.evidence,
               NUMBERS.c.e164, PROGRAMS.c.slug, PROGRAMS.c.name, CONSENTS.c.status)
        .select_from(_REVIEW.join(NUMBERS, NUMBERS.c.id == _REVIEW.c.number_id)
                     .join(PROGRAMS, PROGRAMS.c.id == _REVIEW.c.program_id)
                     .outerjoin(CONSENTS, and_(CONSENTS.c.number_id == _REVIEW.c.number_id,
                                               CONSENTS.c.program_id == _REVIEW.c.program_id)))
        .where(_REVIEW.c.type == REVIEW_EVENT, ~exists().where(_settles(_REVIEW, _LATER)))
        .order_by(_REVIEW.c.id.desc()).limit(limit)
    )
    if program_id is not None:
        query = query.where(_REVIEW.c.program_id == program_id)
    if number_id is not None:
        query = query.where(_REVIEW.c.number_id == number_id)
    if before is not None:
        query = query.where(_REVIEW.c.id < before)
    return [Pending(*row) for row in session.execute(query)]


def event(session: Session, event_id: int) -> LedgerEvent | None:
    return session.get(LedgerEvent, event_id)


def settled_by(session: Session, review_event_id: int) -> LedgerEvent | None:
    """The first later event that settled review event `review_event_id`, or None while it awaits review.
    The caller holds the number's row lock, so no event can be appended between this and its write."""
    later = (select(_LATER.c.id).select_from(_REVIEW.join(_LATER, _settles(_REVIEW, _LATER)))
             .where(_REVIEW.c.id == review_event_id).order_by(_LATER.c.seq).limit(1))
    return session.scalars(select(LedgerEvent).where(LedgerEvent.id == later.scalar_subquery())).one_or_none()

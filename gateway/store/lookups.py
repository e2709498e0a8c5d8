"""The reads and writes of carrier look-ups and the Deactivations list (services/lookups.py and
services/deactivations.py)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.domain.consent import Status as ConsentStatus
from gateway.domain.outbound import WAITING
from gateway.store.models import (
    Consent,
    DeactivationCheck,
    DeactivationDay,
    LedgerEvent,
    OutboundMessage,
    PhoneNumber,
    Program,
)

# Consents a deactivation or a reassignment ends: those that let a text go (or will, on a YES).
LIVE = (ConsentStatus.OPTED_IN.value, ConsentStatus.PENDING.value)


@dataclass(frozen=True)
class Due:
    """What the worker needs to know, before claiming a message, to decide whether to look its number up."""

    number_id: int
    e164: str
    region: str | None
    program_id: int
    consent_status: str | None
    line_checked_at: datetime | None
    reassigned_since: date | None
    reassigned_checked_at: datetime | None


def before_send(session: Session, message_id: str, now: datetime) -> Due | None:
    """The message's number and consent, if the message is still waiting and due (one read)."""
    row = session.execute(
        select(PhoneNumber.id, PhoneNumber.e164, PhoneNumber.region, OutboundMessage.program_id, Consent.status,
               PhoneNumber.line_checked_at, PhoneNumber.reassigned_since, PhoneNumber.reassigned_checked_at)
        .select_from(OutboundMessage)
        .join(PhoneNumber, PhoneNumber.id == OutboundMessage.number_id)
        .outerjoin(Consent, (Consent.number_id == PhoneNumber.id) & (Consent.program_id == OutboundMessage.program_id))
        .where(OutboundMessage.id == message_id, OutboundMessage.status.in_([s.value for s in WAITING]),
               (OutboundMessage.not_before.is_(None)) | (OutboundMessage.not_before <= now))
    ).one_or_none()
    if row is None or not row[1]:
        return None
    return Due(*row)


def consent_date(session: Session, number_id: int, program_id: int) -> date | None:
    """The day the number's consent to the program was last given (its newest move to opted_in)."""
    given = session.scalar(select(func.max(LedgerEvent.occurred_at)).where(
        LedgerEvent.number_id == number_id, LedgerEvent.program_id == program_id,
        LedgerEvent.status_after == ConsentStatus.OPTED_IN.value))
    if given is None:
        return None
    return given.date()


def locked_number(session: Session, number_id: int) -> PhoneNumber:
    return session.scalars(select(PhoneNumber).where(PhoneNumber.id == number_id).with_for_update()
                           .execution_options(populate_existing=True)).one()


def live_programs(session: Session, number_id: int) -> list[Program]:
    """The programs the number holds a live consent to (opted in, or a request pending)."""
    return list(session.scalars(select(Program).join(Consent, Consent.program_id == Program.id)
                                .where(Consent.number_id == number_id, Consent.status.in_(LIVE))
                                .order_by(Program.id)))


# --- the Deactivations list -----------------------------------------------------------------------


def finished_day(session: Session, day: date) -> DeactivationDay | None:
    return session.get(DeactivationDay, day)


def finished_days(session: Session, first: date, last: date) -> set[date]:
    return set(session.scalars(select(DeactivationDay.day).where(DeactivationDay.day.between(first, last))))


def to_check(session: Session, day: date, e164s: Iterable[str]) -> list[tuple[int, str]]:
    """(id, e164) of the listed numbers we hold a live consent for and have not handled for `day` yet."""
    wanted = sorted(set(e164s))
    found: list[tuple[int, str]] = []
    for start in range(0, len(wanted), 1000):  # bounded IN lists
        chunk = wanted[start:start + 1000]
        handled = select(DeactivationCheck.number_id).where(DeactivationCheck.day == day)
        found.extend((number_id, e164) for number_id, e164 in session.execute(
            select(PhoneNumber.id, PhoneNumber.e164).where(
                PhoneNumber.e164.in_(chunk), PhoneNumber.id.not_in(handled),
                select(Consent.id).where(Consent.number_id == PhoneNumber.id, Consent.status.in_(LIVE)).exists())
            .order_by(PhoneNumber.id)))
    return found


def counted(session: Session, day: date) -> dict[str, int]:
    """How many numbers of `day` were handled, by verdict."""
    rows = session.execute(select(DeactivationCheck.verdict, func.count())
                           .where(DeactivationCheck.day == day).group_by(DeactivationCheck.verdict))
    return {verdict: count for verdict, count in rows}


def check(session: Session, day: date, number_id: int, verdict: str, now: datetime) -> None:
    session.add(DeactivationCheck(day=day, number_id=number_id, verdict=verdict, checked_at=now))


def finish_day(session: Session, day: date, *, listed: int, held: int, ended: int, ported: int,
               now: datetime) -> DeactivationDay:
    finished = DeactivationDay(day=day, listed=listed, held=held, ended=ended, ported=ported, finished_at=now)
    session.add(finished)
    return finished

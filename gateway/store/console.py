"""The console's tables: staff accounts, server-side sessions, the access log; and the reads of one
number's whole record that the console's pages show."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, selectinload

from gateway.store.models import (
    ConsoleAccess,
    ConsoleSession,
    ConsoleUser,
    InboundMessage,
    OutboundMessage,
    PhoneNumber,
    Suppression,
)


def user_by_name(session: Session, name: str) -> ConsoleUser | None:
    return session.scalars(select(ConsoleUser).where(ConsoleUser.name == name)).one_or_none()


def user_by_name_locked(session: Session, name: str) -> ConsoleUser | None:
    """The account, locked for this transaction: two wrong passwords at once both count."""
    return session.scalars(select(ConsoleUser).where(ConsoleUser.name == name).with_for_update()).one_or_none()


def add_user(session: Session, name: str, role: str, password_hash: str) -> ConsoleUser:
    user = ConsoleUser(name=name, role=role, password_hash=password_hash, failed_logins=0)
    session.add(user)
    session.flush()
    return user


def all_users(session: Session) -> list[ConsoleUser]:
    return list(session.scalars(select(ConsoleUser).order_by(ConsoleUser.name)))


def session_with_user(session: Session, digest: str) -> tuple[ConsoleSession, ConsoleUser | None] | None:
    """A session row and its signed-in user (None before sign-in), in one query."""
    row = session.execute(
        select(ConsoleSession, ConsoleUser).outerjoin(ConsoleUser, ConsoleUser.id == ConsoleSession.user_id)
        .where(ConsoleSession.id == digest)
    ).first()
    return None if row is None else (row[0], row[1])


def add_session(session: Session, digest: str, user_id: int | None, data: dict, now: datetime,
                expires_at: datetime) -> None:
    session.add(ConsoleSession(id=digest, user_id=user_id, data=data, created_at=now, last_seen_at=now,
                               expires_at=expires_at))


def touch_session(session: Session, digest: str, data: dict | None, now: datetime) -> None:
    values = {"last_seen_at": now} if data is None else {"last_seen_at": now, "data": data}
    session.execute(update(ConsoleSession).where(ConsoleSession.id == digest).values(**values))


def delete_session(session: Session, digest: str) -> None:
    session.execute(delete(ConsoleSession).where(ConsoleSession.id == digest))


def delete_sessions_of(session: Session, user_id: int) -> int:
    """End every session of one account (disabled, or its password reset)."""
    return session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == user_id)).rowcount


def delete_sessions_before(session: Session, moment: datetime) -> int:
    """Forget sessions past their absolute end (their cookies are refused already)."""
    return session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at < moment)).rowcount


def log_access(session: Session, *, user_id: int | None, user_name: str, action: str, number_id: int | None,
               detail: str | None, address: str | None, now: datetime) -> None:
    session.add(ConsoleAccess(user_id=user_id, user_name=user_name, action=action, number_id=number_id,
                              detail=detail, address=address, at=now))


def access_log(session: Session, *, limit: int, number_id: int | None = None) -> list[tuple[ConsoleAccess, str | None]]:
    """The newest entries first, each with the number it names (None once erased)."""
    query = (select(ConsoleAccess, PhoneNumber.e164).outerjoin(PhoneNumber, PhoneNumber.id == ConsoleAccess.number_id)
             .order_by(ConsoleAccess.id.desc()).limit(limit))
    if number_id is not None:
        query = query.where(ConsoleAccess.number_id == number_id)
    return [(row[0], row[1]) for row in session.execute(query)]


def number_by_id(session: Session, number_id: int, *, lock: bool = False) -> PhoneNumber | None:
    query = select(PhoneNumber).where(PhoneNumber.id == number_id)
    if lock:
        query = query.with_for_update()
    return session.scalars(query).one_or_none()


def suppression(session: Session, digest: str) -> Suppression | None:
    return session.get(Suppression, digest)


def outbound_of(session: Session, number_id: int) -> list[OutboundMessage]:
    """Every text we sent or meant to send the number, oldest first, with each one's status history."""
    return list(session.scalars(
        select(OutboundMessage).where(OutboundMessage.number_id == number_id)
        .options(selectinload(OutboundMessage.events), selectinload(OutboundMessage.program))
        .order_by(OutboundMessage.created_at, OutboundMessage.id)))


def inbound_of(session: Session, number_id: int) -> list[InboundMessage]:
    return list(session.scalars(
        select(InboundMessage).where(InboundMessage.number_id == number_id).order_by(InboundMessage.id)))

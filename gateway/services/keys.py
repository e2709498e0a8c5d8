"""API keys: created once, stored as SHA-256, checked by hash lookup."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.store.models import ApiKey, utcnow

SCOPES = ("send", "subscribe", "read", "admin")


class KeyProblem(ValueError):
    """Bad key name or scope."""


def _digest(key: str) -> str:
    # A plain hash is enough: keys are 256 bits of randomness, not guessable passwords.
    return hashlib.sha256(key.encode()).hexdigest()


def create(session: Session, name: str, scopes: list[str]) -> tuple[ApiKey, str]:
    """Make a key; return the row and the key itself, which is never stored."""
    if not name.strip() or len(name) > 120:
        raise KeyProblem("a key needs a name of 1-120 characters")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        named = f"; unknown: {', '.join(unknown)}" if unknown else ""
        raise KeyProblem(f"scopes must be some of {', '.join(SCOPES)}{named}")
    if session.scalars(select(ApiKey).where(ApiKey.name == name)).first():
        raise KeyProblem(f"a key named {name!r} exists already")
    prefix = secrets.token_hex(4)
    key = f"sgk_{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(name=name, prefix=prefix, key_hash=_digest(key), scopes=sorted(set(scopes)))
    session.add(row)
    session.flush()
    return row, key


def authenticate(session: Session, key: str) -> ApiKey | None:
    """The live key matching `key`, or None."""
    row = session.scalars(select(ApiKey).where(ApiKey.key_hash == _digest(key))).one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    return row


def listed(session: Session) -> list[ApiKey]:
    """Every key, oldest first (a row holds only the key's hash, never the key)."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


def revoke(session: Session, name: str) -> bool:
    row = session.scalars(select(ApiKey).where(ApiKey.name == name)).one_or_none()
    if row is None:
        return False
    row.revoked_at = utcnow()
    forget()
    return True


@dataclass(frozen=True)
class Caller:
    """Who a valid key belongs to, as a request needs it."""

    id: int
    name: str
    scopes: tuple[str, ...]


# A key found valid is trusted for this long without asking the store again: the lookup is a
# transaction of its own, a fifth of a send request. A revoked key stops working in every process
# within this time (at once in the process that revoked it).
TRUST_SECONDS = 10.0
_trusted: dict[str, tuple[float, Caller]] = {}


def caller(database, key: str) -> Caller | None:
    """The live key matching `key`, from a short-lived cache or the store (`database.transaction()`)."""
    digest = _digest(key)
    now = time.monotonic()
    hit = _trusted.get(digest)
    if hit is not None and hit[0] > now:
        return hit[1]
    with database.transaction() as session:
        row = authenticate(session, key)
        found = Caller(row.id, row.name, tuple(row.scopes)) if row is not None else None
    if found is None:
        _trusted.pop(digest, None)
        return None
    if len(_trusted) > 10_000:  # keys are few; this only bounds a flood of made-up ones
        _trusted.clear()
    _trusted[digest] = (now + TRUST_SECONDS, found)
    return found


def forget() -> None:
    """Ask the store again for every key (after a revocation; tests)."""
    _trusted.clear()

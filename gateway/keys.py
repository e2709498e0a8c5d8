"""API keys: created once, stored as SHA-256, checked by hash lookup."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.models import ApiKey, utcnow

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
        raise KeyProblem(f"scopes must be some of {', '.join(SCOPES)}" + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
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


def revoke(session: Session, name: str) -> bool:
    row = session.scalars(select(ApiKey).where(ApiKey.name == name)).one_or_none()
    if row is None:
        return False
    row.revoked_at = utcnow()
    return True

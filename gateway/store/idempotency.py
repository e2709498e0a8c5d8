"""Idempotency keys: the first answer to a keyed request is kept and replayed for every repeat.

`begin` runs first in the request's transaction and takes the key (per API key) with an insert
that does nothing on conflict. On PostgreSQL that insert waits for a concurrent request holding
the same key to commit, then finds its answer, so two identical requests racing make one message.
(SQLite runs one writer at a time, which gives the same.) The answer is written by `finish` in the
same transaction as the work, so a stored key always has its answer; work that fails rolls back
both, and the key is free again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from sqlalchemy import select, update

from gateway.store import dialect
from gateway.store.database import Store
from gateway.store.models import IdempotencyRecord, utcnow

MAX_KEY_LENGTH = 200


class KeyReused(Exception):
    """The key was used before for a different request."""


@dataclass(frozen=True)
class Answer:
    status_code: int
    body: dict


def digest(path: str, request: dict) -> str:
    """What identifies a request: its path and its fields (normalised JSON)."""
    text = json.dumps({"path": path, "request": request}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def begin(session: Store, api_key_id: int, key: str, request_digest: str) -> Answer | None:
    """Take `key` for this request, or return the first answer given to it; raise KeyReused."""
    taken = session.execute(
        dialect.insert_for(session, IdempotencyRecord)
        .values(api_key_id=api_key_id, key=key, request_digest=request_digest, status_code=0, response={},
                created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["api_key_id", "key"])
        .returning(IdempotencyRecord.key)
    ).first()
    if taken is not None:
        return None
    record = session.execute(
        select(IdempotencyRecord.request_digest, IdempotencyRecord.status_code, IdempotencyRecord.response)
        .where(IdempotencyRecord.api_key_id == api_key_id, IdempotencyRecord.key == key)
    ).one()
    if record.request_digest != request_digest:
        raise KeyReused(key)
    return Answer(record.status_code, record.response)


def finish(session: Store, api_key_id: int, key: str, answer: Answer) -> None:
    """Keep the answer to replay for repeats of this key."""
    session.execute(
        update(IdempotencyRecord)
        .where(IdempotencyRecord.api_key_id == api_key_id, IdempotencyRecord.key == key)
        .values(status_code=answer.status_code, response=answer.body)
        .execution_options(synchronize_session=False)
    )

"""The append-only ledger: one SHA-256 hash chain per number (docs/decisions/0002-ledger-chain.md).

A chain per number keeps writers for different numbers independent (no global lock on every
webhook) while still catching an edited, removed or reordered event: each event hashes the one
before it, and the number row records the head, so even the last event cannot vanish unseen.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.models import GENESIS_HASH, LedgerEvent, PhoneNumber


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def evidence_digest(evidence: dict) -> str:
    return hashlib.sha256(_canonical(evidence)).hexdigest()


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="microseconds") if moment else None


# What an event's hash covers: all of its content (evidence through its digest) and the hash before it.
_HASHED = ("number_id", "seq", "type", "input", "program_id", "status_before", "status_after", "expires_at",
           "source", "actor", "reference", "evidence_digest", "occurred_at", "prev_hash")


def event_hash(event: LedgerEvent | Event) -> str:
    """The hash of an event's content and of the event before it."""
    return _content_hash({name: getattr(event, name) for name in _HASHED})


def _content_hash(fields: dict) -> str:
    content = {name: fields[name] for name in _HASHED}
    content["expires_at"] = _iso(content["expires_at"])
    content["occurred_at"] = _iso(content["occurred_at"])
    return hashlib.sha256(_canonical(content)).hexdigest()


@dataclass(frozen=True)
class Event:
    """One event as appended: the content of a ledger row, with its place in the chain."""

    number_id: int
    seq: int
    type: str
    input: str
    program_id: int | None
    status_before: str | None
    status_after: str | None
    expires_at: datetime | None
    source: str
    actor: str | None
    reference: str | None
    evidence: dict
    evidence_digest: str
    occurred_at: datetime
    prev_hash: str
    hash: str


def chain(number_id: int, seq: int, head: str, drafts: list[dict]) -> list[Event]:
    """Chain `drafts` (an event's content without its place) after the head at `seq`.

    Pure: the caller holds the number's row lock and writes the events and the new head together.
    """
    events = []
    for draft in drafts:
        seq += 1
        placed = dict(draft, number_id=number_id, seq=seq, prev_hash=head,
                      evidence_digest=evidence_digest(draft["evidence"]))
        head = _content_hash(placed)
        events.append(Event(**placed, hash=head))
    return events


@dataclass(frozen=True)
class Break:
    """Where a chain stops being trustworthy."""

    number_id: int
    event_id: int | None
    seq: int | None
    problem: str

    def __str__(self) -> str:
        where = f"event {self.event_id} (number {self.number_id}, seq {self.seq})" if self.event_id else f"number {self.number_id}"
        return f"{where}: {self.problem}"


def _check_chain(number: PhoneNumber, events: list[LedgerEvent]) -> Break | None:
    previous = GENESIS_HASH
    # Evidence may only be missing where the chain itself records an erasure.
    erased = any(event.type == "erasure" for event in events)
    for position, event in enumerate(events, start=1):
        at = dict(number_id=number.id, event_id=event.id, seq=event.seq)
        if event.seq != position:
            return Break(**at, problem=f"expected seq {position}: an event was removed or reordered")
        if event.prev_hash != previous:
            return Break(**at, problem="does not follow the event before it: an event was removed or reordered")
        redacted = erased and event.evidence.get("redacted") is True
        if not redacted and evidence_digest(event.evidence) != event.evidence_digest:
            return Break(**at, problem="evidence was changed")
        if event_hash(event) != event.hash:
            return Break(**at, problem="content was changed")
        previous = event.hash
    if number.ledger_seq != len(events) or number.ledger_head != previous:
        last = events[-1] if events else None
        return Break(
            number.id,
            last.id if last else None,
            last.seq if last else None,
            f"the chain ends at seq {len(events)} but the number's head says {number.ledger_seq}: events were removed",
        )
    return None


def verify(session: Session, batch: int = 500) -> Iterator[Break]:
    """Walk every number's chain; yield the first break of each broken chain."""
    last_id = 0
    while True:
        numbers = session.scalars(
            select(PhoneNumber).where(PhoneNumber.id > last_id).order_by(PhoneNumber.id).limit(batch)
        ).all()
        if not numbers:
            return
        ids = [n.id for n in numbers]
        events: dict[int, list[LedgerEvent]] = {i: [] for i in ids}
        # Ordered by id (insertion order), not seq: a swapped seq must show, not be sorted away.
        for event in session.scalars(
            select(LedgerEvent).where(LedgerEvent.number_id.in_(ids)).order_by(LedgerEvent.id)
        ):
            events[event.number_id].append(event)
        for number in numbers:
            problem = _check_chain(number, events[number.id])
            if problem:
                yield problem
        last_id = ids[-1]
        session.expunge_all()

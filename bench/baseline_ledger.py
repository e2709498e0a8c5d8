"""The ledger check as it was before issue 18 (main at 4a704ff), frozen here so that
bench/ledger_verify.py can run it side by side with today's: one process, a batch of 500 numbers
at a time read by an IN list, every event's hash and evidence digest through `json.dumps` with
its options (an encoder built per call). The replay and the comparisons are today's (they did not
change). Not used by the gateway.
"""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.domain.ledger import (
    GENESIS_HASH,
    Break,
    SignedHeads,
    _iso,
    check_against_checkpoint,
    check_projection,
    number_label,
)
from gateway.store.ledger import Tally, number_batches
from gateway.store.models import Consent, LedgerEvent, PhoneNumber, Program

_NUMBERS, _EVENTS, _CONSENTS, _PROGRAMS = (
    PhoneNumber.__table__, LedgerEvent.__table__, Consent.__table__, Program.__table__)
_HASHED = ("number_id", "seq", "type", "input", "program_id", "status_before", "status_after", "expires_at",
           "source", "actor", "reference", "evidence_digest", "occurred_at", "prev_hash")


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def evidence_digest(evidence: dict) -> str:
    return hashlib.sha256(_canonical(evidence)).hexdigest()


def event_hash(event) -> str:
    content = {name: getattr(event, name) for name in _HASHED}
    content["expires_at"] = _iso(content["expires_at"])
    content["occurred_at"] = _iso(content["occurred_at"])
    return hashlib.sha256(_canonical(content)).hexdigest()


def check_chain(number, events: list, label: str) -> Break | None:
    previous = GENESIS_HASH
    erased = any(event.type == "erasure" for event in events)
    for position, event in enumerate(events, start=1):
        at = dict(number_id=number.id, number=label, event_id=event.id, seq=event.seq)
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
        return Break(number.id, label, "events were removed")
    return None


def verify(session: Session, *, checkpoint=None, batch: int = 500, tally: Tally | None = None, replay: bool = True):
    tally = tally if tally is not None else Tally()
    slugs = dict(session.execute(select(_PROGRAMS.c.id, _PROGRAMS.c.slug)).all())
    signed = SignedHeads(checkpoint)
    for numbers in number_batches(session, batch):
        ids = [number.id for number in numbers]
        events: dict[int, list] = {number_id: [] for number_id in ids}
        for event in session.execute(select(_EVENTS).where(_EVENTS.c.number_id.in_(ids)).order_by(_EVENTS.c.id)).all():
            events[event.number_id].append(event)
        consents: dict[int, dict] = {number_id: {} for number_id in ids}
        for row in session.execute(
            select(_CONSENTS.c.number_id, _CONSENTS.c.program_id, _CONSENTS.c.status, _CONSENTS.c.restorable,
                   _CONSENTS.c.expires_at).where(_CONSENTS.c.number_id.in_(ids))
        ).all():
            consents[row.number_id][row.program_id] = row
        for number in numbers:
            head, missing = signed.take(number.id)
            yield from missing
            chain = events[number.id]
            if chain:
                tally.chains += 1
                tally.events += len(chain)
            label = number_label(number.id, number.e164)
            broken = check_chain(number, chain, label)
            if broken:
                yield broken
                continue
            if head is not None:
                moved = check_against_checkpoint(number, chain, label, head, signed.signed_at)
                if moved:
                    yield moved
            if replay:
                yield from check_projection(number, chain, consents[number.id], label, slugs)
    yield from signed.rest()

"""Reading the append-only ledger back: `verify` walks every number's chain in the store.

The chains themselves (hashing, chaining, checking, replaying) are gateway/domain/ledger.py.
Someone who can write to the database can still recompute a chain and its head; signed
checkpoints of every head, kept outside the database, catch that (`checkpoints`,
docs/decisions/0009-ledger-checkpoints.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.domain.ledger import (
    Break,
    SignedHeads,
    check_against_checkpoint,
    check_chain,
    check_projection,
    number_label,
)
from gateway.store.models import Consent, LedgerEvent, PhoneNumber, Program


@dataclass
class Tally:
    """What a verification walked, for its report."""

    chains: int = 0
    events: int = 0


_NUMBERS, _EVENTS, _CONSENTS, _PROGRAMS = (
    PhoneNumber.__table__, LedgerEvent.__table__, Consent.__table__, Program.__table__)


def verify(session: Session, *, checkpoint=None, batch: int = 500, tally: Tally | None = None,
           number_id: int | None = None) -> Iterator[Break]:
    """Walk every number's chain; yield what disagrees.

    For each number: the first break of its hash chain (a broken chain is not replayed: what it leads
    to means nothing); else whether it still holds the head `checkpoint` (a verified
    `checkpoints.Checkpoint`) signed for it, and whether replaying it gives the consents the gate
    reads. Numbers the checkpoint holds that are gone from the store are breaks too. Reads a batch
    of numbers at a time, as rows (no ORM objects), so memory stays bounded whatever the ledger's size.
    `number_id`: only that number's chain (the checkpoint's other numbers are not looked for).
    """
    tally = tally if tally is not None else Tally()
    slugs = dict(session.execute(select(_PROGRAMS.c.id, _PROGRAMS.c.slug)).all())
    signed = SignedHeads(checkpoint)
    for numbers in number_batches(session, batch, only=number_id):
        ids = [number.id for number in numbers]
        events: dict[int, list] = {number_id: [] for number_id in ids}
        # Ordered by id (insertion order), not seq: a swapped seq must show, not be sorted away.
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
            if number_id is None:  # else the missing ones are other numbers, not asked about
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
            yield from check_projection(number, chain, consents[number.id], label, slugs)
    if number_id is None:
        yield from signed.rest()


def number_batches(session: Session, batch: int, *, chained_only: bool = False,
                   only: int | None = None) -> Iterator[list]:
    """Every number as a row (id, e164, ledger_seq, ledger_head), `batch` at a time in id order, by keyset:
    memory stays bounded and a number added during the walk is read once or not at all, never twice.
    `only`: just the number with that id."""
    last_id = 0
    while True:
        query = select(_NUMBERS.c.id, _NUMBERS.c.e164, _NUMBERS.c.ledger_seq, _NUMBERS.c.ledger_head).where(
            _NUMBERS.c.id > last_id)
        if only is not None:
            query = query.where(_NUMBERS.c.id == only)
        if chained_only:
            query = query.where(_NUMBERS.c.ledger_seq > 0)
        rows = session.execute(query.order_by(_NUMBERS.c.id).limit(batch)).all()
        if not rows:
            return
        yield rows
        last_id = rows[-1].id

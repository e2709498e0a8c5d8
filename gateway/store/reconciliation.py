"""Inbound reconciliation's SQL: how far each sender's message log was read, which of the listed
texts the store already holds, which senders there are to read, whether a number's consents moved
after a text was sent, and the record of a text a later move overtook.

A watermark only moves forward: two runs that overlap (a slow one and the next beat) cannot take it
back, so the later one's reading is never undone by the earlier one finishing last.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, or_, select

from gateway.store import dialect
from gateway.store.database import Store
from gateway.store.models import InboundMessage, InboundWatermark, LedgerEvent, PhoneNumber, Program, utcnow

_WATERMARKS, _INBOUND = InboundWatermark.__table__, InboundMessage.__table__
_LEDGER, _NUMBERS = LedgerEvent.__table__, PhoneNumber.__table__
# The longest IN list we send at once (SQLite's default bound on parameters is far above it).
_CHUNK = 500


@dataclass(frozen=True)
class Sender:
    """One sender whose texts the provider logs: our number, or a Messaging Service with the numbers
    its programs list (none: the service's texts are found among the whole account's)."""

    key: str  # the number, or the service's MG… id: the watermark's key
    numbers: tuple[str, ...] = ()
    messaging_service_sid: str | None = None


def senders(store: Store) -> list[Sender]:
    """Every sender of every program, once each."""
    found: dict[str, Sender] = {}
    rows = store.execute(select(Program.sender, Program.messaging_service_sid, Program.settings).order_by(Program.id))
    for sender, service, settings in rows:
        if sender:
            found.setdefault(sender, Sender(sender, (sender,)))
        elif service:
            listed = tuple((settings or {}).get("spec", {}).get("service_numbers", ()))
            before = found.get(service)
            numbers = tuple(dict.fromkeys((before.numbers if before else ()) + listed))
            found[service] = Sender(service, numbers, service)
    return list(found.values())


def watermarks(store: Store, keys: Iterable[str]) -> dict[str, datetime]:
    """How far each of `keys` was read; a key never read is missing."""
    keys = list(keys)
    if not keys:
        return {}
    rows = store.execute(select(_WATERMARKS.c.sender, _WATERMARKS.c.listed_through)
                         .where(_WATERMARKS.c.sender.in_(keys)))
    return {row.sender: row.listed_through for row in rows}


def advance(store: Store, key: str, listed_through: datetime) -> None:
    """Move `key`'s watermark to `listed_through`, unless it is there or further already."""
    statement = dialect.insert_for(store, _WATERMARKS).values(sender=key, listed_through=listed_through,
                                                              updated_at=utcnow())
    store.execute(statement.on_conflict_do_update(
        index_elements=[_WATERMARKS.c.sender],
        set_={"listed_through": statement.excluded.listed_through, "updated_at": statement.excluded.updated_at},
        where=_WATERMARKS.c.listed_through < statement.excluded.listed_through,
    ))


def known_message_sids(store: Store, sids: Iterable[str]) -> set[str]:
    """Those of `sids` the store holds an inbound text for."""
    sids = list(dict.fromkeys(sids))
    known: set[str] = set()
    for start in range(0, len(sids), _CHUNK):
        chunk = sids[start:start + _CHUNK]
        known.update(store.scalars(select(_INBOUND.c.message_sid).where(_INBOUND.c.message_sid.in_(chunk))))
    return known


def consent_moved_after(store: Store, e164: str, program_ids: Iterable[int], after: datetime) -> bool:
    """Whether a consent of `e164` on one of `program_ids` changed state after `after`. Records that
    change nothing (a HELP) do not count."""
    return store.execute(
        select(_LEDGER.c.id).join(_NUMBERS, _NUMBERS.c.id == _LEDGER.c.number_id)
        .where(_NUMBERS.c.e164 == e164, _LEDGER.c.program_id.in_(list(program_ids)), _LEDGER.c.occurred_at > after,
               _LEDGER.c.status_after.is_not(None))
        .limit(1)
    ).first() is not None


def intents_texted_after(store: Store, e164: str, senders: Iterable[str] | None, after: datetime) -> set[str]:
    """The intents of the texts `e164` sent to `senders` (numbers or Messaging Services; None: to any
    of ours) that the store holds with a receipt time after `after`."""
    query = (select(_INBOUND.c.intent).distinct().join(_NUMBERS, _NUMBERS.c.id == _INBOUND.c.number_id)
             .where(_NUMBERS.c.e164 == e164, _INBOUND.c.received_at > after))
    if senders is not None:
        senders = list(senders)
        query = query.where(or_(_INBOUND.c.to_number.in_(senders), _INBOUND.c.messaging_service_sid.in_(senders)))
    return set(store.scalars(query))


def record_overtaken(store: Store, *, message_sid: str, account_sid: str | None, e164: str, to: str,
                     messaging_service_sid: str | None, body: str, intent: str, received_at: datetime) -> None:
    """Store a text whose effect a later move overtook: known from now on, changing nothing, no reply.
    The number has a row (its consents moved later)."""
    number_id = select(_NUMBERS.c.id).where(_NUMBERS.c.e164 == e164).scalar_subquery()
    store.execute(insert(_INBOUND).values(
        message_sid=message_sid, account_sid=account_sid, number_id=number_id, to_number=to,
        messaging_service_sid=messaging_service_sid, body=body, intent=intent, opt_out_type=None, reply=None,
        received_at=received_at,
    ))

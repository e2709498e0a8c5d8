"""Consent service: the only writer of consents and ledger events.

Every change goes through `apply`, which runs the state machine, appends the ledger event with its
evidence and updates the projection in the caller's transaction.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby
from operator import attrgetter
from typing import NamedTuple

from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from gateway.domain import ledger
from gateway.store.database import Writes, driver_sql, rows
from gateway.domain.consent import EVENT_TYPES, IllegalTransition, Input, Source, State, Status, allowed
from gateway.domain.consent import apply as transition
from gateway.store.models import Consent, LedgerEvent, PhoneNumber, Program, Suppression, utcnow
from gateway.domain.numbers import Number


@dataclass(frozen=True)
class Evidence:
    """Who or what caused a consent event, and the proof of it."""

    source: Source
    actor: str | None = None  # the API key's name, "twilio", "system", a staff member…
    reference: str | None = None  # MessageSid, request id, message id
    details: dict = field(default_factory=dict)  # the exact text seen or sent, address, user agent…


@dataclass(frozen=True)
class Change:
    program: Program | None
    before: Status | None
    after: Status | None
    event: ledger.Event


def create_number(connection: Connection, number: Number) -> None:
    """Make the row for `number` unless it exists (a concurrent creator wins quietly)."""
    insert = pg_insert if connection.dialect.name == "postgresql" else sqlite_insert
    connection.execute(
        insert(PhoneNumber)
        .values(e164=number.e164, kind=number.kind, region=number.region, reachability="ok", ledger_seq=0,
                ledger_head=ledger.GENESIS_HASH, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["e164"])
    )


def number_row(session: Session, number: Number, *, lock: bool = True) -> PhoneNumber:
    """The row for `number`, created if new, locked for this transaction (serialises its chain)."""
    session.flush()
    create_number(session.connection(), number)
    query = select(PhoneNumber).where(PhoneNumber.e164 == number.e164)
    if lock:
        query = query.with_for_update()
    return session.scalars(query.execution_options(populate_existing=True)).one()


def find_number(session: Session, e164: str) -> PhoneNumber | None:
    return session.scalars(select(PhoneNumber).where(PhoneNumber.e164 == e164)).one_or_none()


def consent_row(session: Session, number: PhoneNumber, program: Program) -> Consent | None:
    return session.scalars(
        select(Consent).where(Consent.number_id == number.id, Consent.program_id == program.id)
    ).one_or_none()


def state_of(consent) -> State:
    """The machine's state of a consent: a Consent row, any row with status and restorable, or None."""
    if consent is None:
        return State()
    return State(Status(consent.status), consent.restorable)


@dataclass(frozen=True)
class Held:
    """A number's ledger head and its consents to some programs, read together: what a change follows.

    `consents` maps program ids to rows with id, status and restorable (absent: no row).
    """

    number_id: int
    seq: int
    head: str
    consents: Mapping[int, object]
    reachability: str = "ok"


class HeldConsent(NamedTuple):
    """One consent of a number as `held` reads it."""

    id: int
    program_id: int
    status: str
    restorable: bool


def held(connection: Connection, e164: str, program_ids: list[int]) -> Held | None:
    """What `e164` holds now, in one statement (one snapshot), without a lock: a change planned from
    it is written only if the head has not moved since (see `plan`). None: no such number."""
    # With programs asked about, all the number's consents come back (a handful at most) and are
    # picked here, so each statement stays one text whatever the programs.
    statement, sql = (_HELD, _HELD_SQL) if program_ids else (_HEAD, _HEAD_SQL)
    found = rows(connection, statement, {"b_e164": e164}, sql)
    if not found:
        return None
    number_id, seq, head, reachability = found[0][:4]
    wanted = set(program_ids)
    consents = {row[5]: HeldConsent(*row[4:]) for row in found if program_ids and row[5] in wanted}
    return Held(number_id, seq, head, consents, reachability)


@dataclass(frozen=True)
class Plan:
    """A change worked out from what was read: the changes to report and the writes that make them.

    The writes are guarded by the head as read: on a number whose chain moved in between they write
    nothing (Writes.execute is False) and the caller reads again.
    """

    changes: list[Change]
    events: list[ledger.Event]
    moves: list[_Move]
    writes: Writes


def plan(state: Held, programs: list[Program], input: Input, evidence: Evidence, *, now: datetime,
         expires_at: datetime | None = None) -> Plan:
    """Move (number, program) by `input` for each program; raise IllegalTransition for any (nothing planned)."""
    befores, moves, drafts = [], [], []
    for program in programs:
        row = state.consents.get(program.id)
        before = state_of(row)
        after = transition(before, input)
        until = expires_at if after.status is Status.PENDING else None
        befores.append(before.status)
        moves.append(_Move(program.id, None if row is None else row.id, after, until))
        drafts.append(_draft(EVENT_TYPES[input], input.value, program.id, before.status, after.status, until,
                             evidence, now))
    events, writes = _chained(state, drafts, moves, now)
    changes = [Change(program, before, move.after.status, event)
               for program, before, move, event in zip(programs, befores, moves, events)]
    return Plan(changes, events, moves, writes)


def plan_record(state: Held, event_type: str, evidence: Evidence, *, now: datetime,
                program: Program | None = None) -> Plan:
    """An event that changes no state (a HELP request, an erasure marker)."""
    draft = _draft(event_type, event_type, program.id if program else None, None, None, None, evidence, now)
    events, writes = _chained(state, [draft], [], now)
    return Plan([], events, [], writes)


# The default of apply(consent=…): read the row here.
LOOK_UP = object()


def apply(
    session: Session,
    number: PhoneNumber,
    program: Program,
    input: Input,
    evidence: Evidence,
    *,
    now: datetime | None = None,
    expires_at: datetime | None = None,
    consent: Consent | None | object = LOOK_UP,
) -> Change:
    """Move (number, program) by `input`, append the ledger event; raise IllegalTransition.

    `number` is a PhoneNumber row the caller has locked in this transaction. A caller that already
    read the consent after taking that lock may pass it as `consent` (None: there is none).
    """
    known = None if consent is LOOK_UP else {program.id: consent}
    return apply_many(session, number, [program], input, evidence, now=now, expires_at=expires_at,
                      consents=known)[0]


def apply_many(
    session: Session,
    number: PhoneNumber,
    programs: list[Program],
    input: Input,
    evidence: Evidence,
    *,
    now: datetime | None = None,
    expires_at: datetime | None = None,
    consents: Mapping[int, object | None] | None = None,
) -> list[Change]:
    """`apply` for several programs, written together; IllegalTransition for any one writes nothing.

    `consents` maps program ids to consents read after the number's lock (None: no row); the
    programs it does not name are looked up, all in one query.
    """
    state = _held_in(session, number, [program.id for program in programs], consents)
    planned = plan(state, programs, input, evidence, now=now or utcnow(), expires_at=expires_at)
    _write(session, number, planned)
    return planned.changes


def record(
    session: Session,
    number: PhoneNumber,
    event_type: str,
    evidence: Evidence,
    *,
    program: Program | None = None,
    now: datetime | None = None,
) -> ledger.Event:
    """Append an event that changes no state (a HELP request, an erasure marker)."""
    state = Held(number.id, number.ledger_seq, number.ledger_head, {})
    planned = plan_record(state, event_type, evidence, now=now or utcnow(), program=program)
    _write(session, number, planned)
    return planned.events[0]


def opt_out(
    session: Session,
    number: PhoneNumber,
    programs: list[Program],
    input: Input,
    evidence: Evidence,
    *,
    now: datetime | None = None,
    consents: Mapping[int, object | None] | None = None,
) -> list[Change]:
    """Opt the number out of every program given (an opt-out always applies), in one write."""
    return apply_many(session, number, programs, input, evidence, now=now, consents=consents)


@dataclass(frozen=True)
class _Move:
    """What one (number, program) consent becomes."""

    program_id: int
    consent_id: int | None  # None: there is no row yet
    after: State
    expires_at: datetime | None


def _draft(event_type: str, input: str, program_id: int | None, before: Status | None, after: Status | None,
           expires_at: datetime | None, evidence: Evidence, now: datetime) -> dict:
    return {
        "type": event_type, "input": input, "program_id": program_id,
        "status_before": before.value if before else None, "status_after": after.value if after else None,
        "expires_at": expires_at, "source": evidence.source.value, "actor": evidence.actor,
        "reference": evidence.reference, "evidence": evidence.details, "occurred_at": now,
    }


def _chained(state: Held, drafts: list[dict], moves: list[_Move], now: datetime) -> tuple[list[ledger.Event], Writes]:
    """The events chained after the head as read, and the writes: the head moved (only from where it
    was read), the events, the consents' new states."""
    events = ledger.chain(state.number_id, state.seq, state.head, drafts)
    last = events[-1]
    writes = Writes().guarded_by(_NUMBERS, state.number_id, {"ledger_seq": state.seq},
                                 {"ledger_seq": last.seq, "ledger_head": last.hash})
    for event in events:
        writes.insert(_EVENTS, vars(event))
    for move in moves:
        if move.after.status is None:
            if move.consent_id is not None:
                writes.delete(_CONSENTS, move.consent_id)
            continue
        values = {"status": move.after.status.value, "restorable": move.after.restorable,
                  "expires_at": move.expires_at, "updated_at": now}
        if move.consent_id is None:
            writes.insert(_CONSENTS, {"number_id": state.number_id, "program_id": move.program_id, **values})
        else:
            writes.update(_CONSENTS, move.consent_id, values)
    return events, writes


def _held_in(session: Session, number: PhoneNumber, program_ids: list[int],
             consents: Mapping[int, object | None] | None) -> Held:
    """What a locked number holds, from its row and the consents given or looked up (one query)."""
    known = dict(consents or {})
    missing = [program_id for program_id in program_ids if program_id not in known]
    if missing:
        session.flush()  # consents the caller added through the session count
        known.update({row.program_id: row for row in session.connection().execute(
            _CONSENTS_OF, {"b_number_id": number.id, "b_program_ids": missing})})
    return Held(number.id, number.ledger_seq, number.ledger_head,
                {program_id: row for program_id, row in known.items() if row is not None})


def _write(session: Session, number: PhoneNumber, planned: Plan) -> None:
    """Write a plan in the session's transaction. The caller holds the number's row lock, so the
    head cannot have moved. ORM objects the session holds for these rows are brought up to date
    without a query (the rows were written in Core: building them through the unit of work cost
    more than the rest of an opt-out, bench/README.md)."""
    session.flush()  # whatever the caller added (a program, a number) exists before we refer to it
    if not planned.writes.execute(session.connection()):
        raise RuntimeError(f"number {number.id}: its ledger head moved while its row was locked")
    last = planned.events[-1]
    set_committed_value(number, "ledger_seq", last.seq)
    set_committed_value(number, "ledger_head", last.hash)
    for move in planned.moves:
        held_row = session.identity_map.get(identity_key(Consent, move.consent_id)) if move.consent_id else None
        if held_row is None:
            continue
        if move.after.status is None:
            session.expunge(held_row)
            continue
        for key, value in (("status", move.after.status.value), ("restorable", move.after.restorable),
                           ("expires_at", move.expires_at), ("updated_at", last.occurred_at)):
            set_committed_value(held_row, key, value)


_NUMBERS, _CONSENTS, _EVENTS = PhoneNumber.__table__, Consent.__table__, LedgerEvent.__table__
# Built once: SQLAlchemy then only binds parameters.
_CONSENTS_OF = select(_CONSENTS.c.id, _CONSENTS.c.program_id, _CONSENTS.c.status, _CONSENTS.c.restorable).where(
    _CONSENTS.c.number_id == bindparam("b_number_id"),
    _CONSENTS.c.program_id.in_(bindparam("b_program_ids", expanding=True)))
_HEAD = select(_NUMBERS.c.id, _NUMBERS.c.ledger_seq, _NUMBERS.c.ledger_head, _NUMBERS.c.reachability).where(
    _NUMBERS.c.e164 == bindparam("b_e164"))
_HELD = (
    select(_NUMBERS.c.id, _NUMBERS.c.ledger_seq, _NUMBERS.c.ledger_head, _NUMBERS.c.reachability,
           _CONSENTS.c.id, _CONSENTS.c.program_id, _CONSENTS.c.status, _CONSENTS.c.restorable)
    .select_from(_NUMBERS.outerjoin(_CONSENTS, _CONSENTS.c.number_id == _NUMBERS.c.id))
    .where(_NUMBERS.c.e164 == bindparam("b_e164"))
)
_HEAD_SQL, _HELD_SQL = driver_sql(_HEAD), driver_sql(_HELD)


def consents(session: Session, number: PhoneNumber) -> list[Consent]:
    return list(
        session.scalars(select(Consent).where(Consent.number_id == number.id).order_by(Consent.program_id))
    )


def events(session: Session, number: PhoneNumber) -> list[LedgerEvent]:
    return list(
        session.scalars(select(LedgerEvent).where(LedgerEvent.number_id == number.id).order_by(LedgerEvent.seq))
    )


def suppression_digest(key: bytes, e164: str) -> str:
    """Keyed, so a leaked list cannot be reversed by hashing every possible number."""
    return hmac.new(key, e164.encode(), hashlib.sha256).hexdigest()


def suppression_digests(key: bytes, e164s: list[str]) -> list[str]:
    """`suppression_digest` of many numbers: the keyed pads are hashed once, not once per number
    (half the cost for the 100,000 numbers of a batch)."""
    block = hashlib.sha256().block_size
    padded = (hashlib.sha256(key).digest() if len(key) > block else key).ljust(block, b"\0")
    inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in padded))
    outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in padded))
    digests = []
    for e164 in e164s:
        first, second = inner.copy(), outer.copy()
        first.update(e164.encode())
        second.update(first.digest())
        digests.append(second.hexdigest())
    return digests


def suppress(session: Session, key: bytes, e164: str, reason: str) -> None:
    digest = suppression_digest(key, e164)
    if session.get(Suppression, digest) is None:
        session.add(Suppression(digest=digest, reason=reason))


def is_suppressed(session: Session, key: bytes, e164: str) -> bool:
    return session.get(Suppression, suppression_digest(key, e164)) is not None


def rebuild(session: Session) -> int:
    """Recompute every consent from the ledger alone; return how many consents result.

    Replays each chain through the state machine (`ledger.replay`, the replay `ledger verify`
    compares with), so a ledger that could not have happened (an illegal sequence) raises
    IllegalTransition rather than being trusted.
    """
    session.execute(delete(Consent))
    replayable = (select(_EVENTS.c.number_id, _EVENTS.c.program_id, _EVENTS.c.input, _EVENTS.c.expires_at,
                         _EVENTS.c.occurred_at, _EVENTS.c.id, _EVENTS.c.seq)
                  .order_by(_EVENTS.c.number_id, _EVENTS.c.seq))
    count, rows = 0, []
    for number_id, chain in groupby(session.execute(replayable).all(), key=attrgetter("number_id")):
        for program_id, replayed in ledger.replay(chain).items():
            if replayed.state.status is None:
                continue
            rows.append({"number_id": number_id, "program_id": program_id, "status": replayed.state.status.value,
                         "restorable": replayed.state.restorable, "expires_at": replayed.expires_at,
                         "updated_at": replayed.updated_at})
        if len(rows) >= 1000:
            count += _insert_consents(session, rows)
    return count + _insert_consents(session, rows)


def _insert_consents(session: Session, rows: list[dict]) -> int:
    if rows:
        session.execute(insert(_CONSENTS), rows)
    written = len(rows)
    rows.clear()
    return written


__all__ = [
    "Change", "Evidence", "Held", "IllegalTransition", "Plan", "allowed", "apply", "apply_many", "consents",
    "create_number", "events", "find_number", "held",
    "is_suppressed", "number_row", "opt_out", "plan", "plan_record", "rebuild", "record", "suppress", "suppression_digest",
    "suppression_digests",
]

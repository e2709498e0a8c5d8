"""The consent store: a number's row, what it holds, and the writes of a consent change.

One write path: a change is planned in Python from what was read (gateway/services/consents.py) and
written as one guarded `Writes` (0006): the number's ledger head moves only from where it was read,
and everything else is written only if it did. Inbound texts read without a lock (`held`) and read
again when the head moved; other writers hold the number's row lock (`number_row`, `held_locked`),
so for them the guard always holds (`write_locked`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from sqlalchemy import bindparam, delete, exists, false, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from gateway.domain import ledger
from gateway.domain.consent import OWN_OPT_INS as OWN_OPT_IN_INPUTS
from gateway.domain.consent import REVOCATIONS, State, Status
from gateway.domain.gate import Reason
from gateway.domain.numbers import Number
from gateway.store import bulk, dialect, outbox
from gateway.store import ledger as ledger_store
from gateway.store.database import Encoded, Writes, driver_sql, rows
from gateway.store.models import (
    Consent,
    InboundMessage,
    LedgerEvent,
    OutboundMessage,
    PhoneNumber,
    Program,
    Suppression,
    UTCDateTime,
    utcnow,
)

NUMBERS, CONSENTS, EVENTS = PhoneNumber.__table__, Consent.__table__, LedgerEvent.__table__
_INBOUND, _SUPPRESSIONS = InboundMessage.__table__, Suppression.__table__


def create_number(connection: Connection, number: Number) -> None:
    """Make the row for `number` unless it exists (a concurrent creator wins quietly)."""
    connection.execute(
        dialect.insert_for(connection, PhoneNumber)
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


class HeldConsent(NamedTuple):
    """One consent of a number as `held` reads it."""

    id: int
    program_id: int
    status: str
    restorable: bool
    expires_at: datetime | None = None  # of a pending request


@dataclass(frozen=True)
class Held:
    """A number's ledger head and its consents to some programs, read together: what a change follows.

    `consents` maps program ids to rows with id, status and restorable (absent: no row). `kind`,
    `region` and `suppressed` are what the send gate needs of the number to judge a confirmation
    text (`suppressed` only when `held` was given the number's suppression digest).
    """

    number_id: int
    seq: int
    head: str
    consents: Mapping[int, object]
    reachability: str = "ok"
    kind: str | None = None
    region: str | None = None
    suppressed: bool = False
    twilio_blocks: str = ""  # the senders Twilio blocks the number on (domain/twilio_filter.py)
    # Whether the number may have messages waiting (queued or deferred) that a change ending a consent
    # must block in its write. True unless the read looked and found none.
    waiting: bool = True


def held(connection: Connection, e164: str, program_ids: list[int], *, digest: str | None = None,
         waiting: bool = False) -> Held | None:
    """What `e164` holds now, in one statement (one snapshot), without a lock: a change planned from
    it is written only if the head has not moved since. None: no such number.

    `digest`: the number's suppression digest, when the change may text it (a join keyword).
    `waiting`: look whether the number has messages waiting, when the change may end a consent (an
    opt-out). The write of a change that ends nothing never touches the outbox; without the look, a
    change that does end something blocks whatever it finds waiting (Held.waiting stays True).
    """
    # With programs asked about, all the number's consents come back (a handful at most) and are
    # picked here, so each statement stays one text whatever the programs.
    statement, sql = _READS[bool(program_ids), digest is not None, waiting]
    found = rows(connection, statement, {"b_e164": e164, "b_digest": digest}, sql)
    if not found:
        return None
    number_id, seq, head, reachability, kind, region, suppressed, blocks, has_waiting = found[0][:9]
    wanted = set(program_ids)
    consents = {row[10]: HeldConsent(*row[9:13], _utc(row[13])) for row in found if program_ids and row[10] in wanted}
    return Held(number_id, seq, head, consents, reachability, kind, region, bool(suppressed), blocks or "",
                bool(has_waiting) or not waiting)


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)  # psycopg gives the server's zone


def held_locked(session: Session, number: PhoneNumber, program_ids: list[int],
                consents: Mapping[int, object | None] | None = None) -> Held:
    """What a locked number holds, from its row and the consents given or looked up (one query)."""
    known = dict(consents or {})
    missing = [program_id for program_id in program_ids if program_id not in known]
    if missing:
        session.flush()  # consents the caller added through the session count
        known.update({row.program_id: row for row in session.connection().execute(
            _CONSENTS_OF, {"b_number_id": number.id, "b_program_ids": missing})})
    return Held(number.id, number.ledger_seq, number.ledger_head,
                {program_id: row for program_id, row in known.items() if row is not None}, number.reachability,
                twilio_blocks=number.twilio_blocks or "")


@dataclass(frozen=True)
class Move:
    """What one (number, program) consent becomes."""

    program_id: int
    consent_id: int | None  # None: there is no row yet
    after: State
    expires_at: datetime | None


def writes_for(state: Held, events: list[ledger.Event], moves: list[Move], now: datetime) -> Writes:
    """The writes of a change chained after the head as read: the head moved (only from where it was
    read), the events, the consents' new states, and the number's waiting messages of every program
    the change ends, blocked (an opt-out: opted_out; an erasure: no_consent, as the send gate would
    now answer), so nothing already queued or deferred goes out after the opt-out is written."""
    last = events[-1]
    writes = Writes().guarded_by(NUMBERS, state.number_id, {"ledger_seq": state.seq},
                                 {"ledger_seq": last.seq, "ledger_head": last.hash})
    for event in events:
        writes.insert(EVENTS, Encoded(event.row(), event.json))
    for move in moves:
        if move.after.status is None:
            if move.consent_id is not None:
                writes.delete(CONSENTS, move.consent_id)
            continue
        values = {"status": move.after.status.value, "restorable": move.after.restorable,
                  "expires_at": move.expires_at, "updated_at": now}
        if move.consent_id is None:
            writes.insert(CONSENTS, {"number_id": state.number_id, "program_id": move.program_id, **values})
        else:
            writes.update(CONSENTS, move.consent_id, values)
    if state.waiting:  # an opt-out of a number with nothing waiting leaves the outbox out of its write
        for reason, status in ((Reason.OPTED_OUT, Status.OPTED_OUT), (Reason.NO_CONSENT, None)):
            ended = [move.program_id for move in moves if move.after.status is status]
            outbox.block_waiting_into(writes, number_id=state.number_id, program_ids=ended, reason=reason.value,
                                      now=now)
    return writes


def update_number(writes: Writes, number_id: int, columns: dict) -> None:
    """Columns of the number's row (its reachability, as services/carrier.py learns it), in the same write."""
    writes.update(NUMBERS, number_id, columns)


def set_twilio_blocks(writes: Writes, state: Held, blocks: str) -> None:
    """The senders Twilio blocks the number on, in the same write, and only if they are still what
    `state` read (a concurrent text's change is not overwritten: the write fails and is read again)."""
    if writes.guard is None:
        writes.guarded_by(NUMBERS, state.number_id, {"ledger_seq": state.seq}, {})
    writes.guard[2]["twilio_blocks"] = state.twilio_blocks
    writes.update(NUMBERS, state.number_id, {"twilio_blocks": blocks})


def store_inbound(writes: Writes, row: dict) -> None:
    """The inbound text: its MessageSid is a unique key, so a repeat fails the whole write."""
    writes.insert(_INBOUND, row)


def first_answer(connection: Connection, message_sid: str) -> tuple[str, str | None] | None:
    """(intent, reply) stored for a MessageSid, or None."""
    row = connection.execute(_FIRST_ANSWER, {"message_sid": message_sid}).first()
    return None if row is None else (row.intent, row.reply)


def write_locked(session: Session, number: PhoneNumber, writes: Writes, events: list[ledger.Event],
                 moves: list[Move]) -> None:
    """Write a change in the session's transaction. The caller holds the number's row lock, so the
    head cannot have moved. ORM objects the session holds for these rows are brought up to date
    without a query (the rows were written in Core: building them through the unit of work cost
    more than the rest of an opt-out, bench/README.md)."""
    session.flush()  # whatever the caller added (a program, a number) exists before we refer to it
    if not writes.execute(session.connection()):
        raise RuntimeError(f"number {number.id}: its ledger head moved while its row was locked")
    last = events[-1]
    set_committed_value(number, "ledger_seq", last.seq)
    set_committed_value(number, "ledger_head", last.hash)
    if writes.parts:  # messages the change blocked: what the session holds of them is stale
        for held_message in [row for row in session.identity_map.values()
                             if isinstance(row, OutboundMessage) and row.number_id == number.id]:
            session.expire(held_message)
    for move in moves:
        held_row = session.identity_map.get(identity_key(Consent, move.consent_id)) if move.consent_id else None
        if held_row is None:
            continue
        if move.after.status is None:
            session.expunge(held_row)
            continue
        for key, value in (("status", move.after.status.value), ("restorable", move.after.restorable),
                           ("expires_at", move.expires_at), ("updated_at", last.occurred_at)):
            set_committed_value(held_row, key, value)


def rebuild(session: Session, *, jobs: int = 1, progress: Callable[[int, int], None] | None = None) -> int:
    """Recompute every consent from the ledger alone, in the session's transaction; return how many
    consents result.

    Replays each chain through the state machine (`ledger.replay`, the replay `ledger verify`
    compares with), streamed by ranges of numbers over `jobs` processes (store/ledger.py
    `replay_all`), and writes the rows as each range comes (COPY on PostgreSQL). A ledger that
    could not have happened (an illegal sequence) raises IllegalTransition rather than being
    trusted, and nothing is written.
    """
    session.execute(delete(Consent))
    count = 0
    for replayed in ledger_store.replay_all(session, jobs=jobs, progress=progress):
        bulk.insert_rows(session, CONSENTS, _REBUILT, replayed)
        count += len(replayed)
    return count


_REBUILT = ("number_id", "program_id", "status", "restorable", "expires_at", "updated_at")


# Built once: SQLAlchemy then only binds parameters (measurably cheaper than building and
# cache-keying a new statement per request; see bench/README.md).
_CONSENTS_OF = select(CONSENTS.c.id, CONSENTS.c.program_id, CONSENTS.c.status, CONSENTS.c.restorable,
                      CONSENTS.c.expires_at).where(
    CONSENTS.c.number_id == bindparam("b_number_id"),
    CONSENTS.c.program_id.in_(bindparam("b_program_ids", expanding=True)))


def _read(consents: bool, suppression: bool, waiting: bool):
    """`held`'s statement: the number's row, with its consents, whether its digest is suppressed and
    whether it has messages waiting, each when asked. Fixed statements, not one with a NULL digest:
    PostgreSQL re-plans a prepared statement whose best plan depends on a parameter being NULL on
    every execution (it did, for every plain text)."""
    suppressed = (exists().where(_SUPPRESSIONS.c.digest == bindparam("b_digest")) if suppression
                  else false()).label("suppressed")
    has_waiting = (outbox.waiting_of(NUMBERS.c.id) if waiting else false()).label("waiting")
    columns = (NUMBERS.c.id, NUMBERS.c.ledger_seq, NUMBERS.c.ledger_head, NUMBERS.c.reachability, NUMBERS.c.kind,
               NUMBERS.c.region, suppressed, NUMBERS.c.twilio_blocks, has_waiting)
    if not consents:
        statement = select(*columns).where(NUMBERS.c.e164 == bindparam("b_e164"))
    else:
        statement = (select(*columns, CONSENTS.c.id, CONSENTS.c.program_id, CONSENTS.c.status, CONSENTS.c.restorable,
                            CONSENTS.c.expires_at)
                     .select_from(NUMBERS.outerjoin(CONSENTS, CONSENTS.c.number_id == NUMBERS.c.id))
                     .where(NUMBERS.c.e164 == bindparam("b_e164")))
    return statement, driver_sql(statement)


_READS = {(consents, suppression, waiting): _read(consents, suppression, waiting) for consents in (False, True)
          for suppression in (False, True) for waiting in (False, True)}
_FIRST_ANSWER = select(_INBOUND.c.intent, _INBOUND.c.reply).where(_INBOUND.c.message_sid == bindparam("message_sid"))


# What ends and what lifts a STOP that binds for years (a rule pack's stop_binds_years): any revocation,
# and only the person's own opt-in by text. An import or API request is neither. Both from the domain
# (gateway/domain/consent.py says which opt-outs are revocations, and why a number that changed hands is not).
STOPS = tuple(sorted(input.value for input in REVOCATIONS))
OWN_OPT_INS = tuple(sorted(input.value for input in OWN_OPT_IN_INPUTS))
_STANDING_STOP = text(f"""
    SELECT input, occurred_at FROM ledger_events
    WHERE number_id = :number_id
      AND (input IN ({", ".join(f"'{i}'" for i in STOPS)})
           OR (input IN ({", ".join(f"'{i}'" for i in OWN_OPT_INS)}) AND source = 'sms'))
    ORDER BY seq DESC LIMIT 1
""").columns(occurred_at=UTCDateTime())


def standing_stop(session: Session, number_id: int) -> datetime | None:
    """When the number's newest opt-out was made, unless the person has texted an opt-in since.

    One read of the number's ledger, newest first on its (number_id, seq) key.
    """
    row = session.execute(_STANDING_STOP, {"number_id": number_id}).first()
    if row is None or row[0] not in STOPS:
        return None
    return row[1]

"""The statements of a bulk import (services/imports.py): a chunk of rows read and written set-wise.

Per chunk, in one transaction: the chunk's numbers are looked up as arrays (PostgreSQL) or staged in
a temporary table (SQLite); one statement says which are suppressed, one reads and locks the stored
ones with their consents (in id order), and the missing ones take ids from the table's sequence
(PostgreSQL) or are created (SQLite). The chained events go back by COPY, the numbers' new heads
through a staging table and one UPDATE, and the import's progress moves in the same transaction,
guarded by where it was read: what is committed and how far the import got can never disagree.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime

from sqlalchemy import bindparam, delete, func, insert, select, text, update
from sqlalchemy.orm import Session

from gateway.domain import ledger
from gateway.domain.outbound import WAITING
from gateway.store import bulk, dialect, outbox
from gateway.store.consents import OWN_OPT_INS, STOPS
from gateway.store.database import Database
from gateway.store.models import (
    Consent,
    Import,
    ImportPart,
    ImportRefusal,
    LedgerEvent,
    OutboundMessage,
    PhoneNumber,
    UTCDateTime,
)

NUMBERS, CONSENTS, EVENTS = PhoneNumber.__table__, Consent.__table__, LedgerEvent.__table__
IMPORTS, REFUSALS, PARTS = Import.__table__, ImportRefusal.__table__, ImportPart.__table__
_MESSAGES = OutboundMessage.__table__

EVENT_COLUMNS = ledger.COLUMNS
_EVIDENCE = EVENT_COLUMNS.index("evidence")
CONSENT_COLUMNS = ("number_id", "program_id", "status", "restorable", "expires_at", "updated_at")


def new_id() -> str:
    return "imp_" + uuid.uuid4().hex


def create(session: Session, *, digest: str, name: str, actor: str, status: str, total_lines: int | None,
           now: datetime) -> Import:
    row = Import(id=new_id(), digest=digest, name=name[:200], actor=actor[:120], status=status,
                 total_lines=total_lines, line_done=1, applied=0, refused=0, created_at=now, updated_at=now)
    session.add(row)
    session.flush()
    return row


def get(session: Session, import_id: str) -> Import | None:
    return session.get(Import, import_id)


def newest(session: Session, limit: int) -> list[Import]:
    """The newest imports, uploads still arriving left out."""
    return list(session.scalars(select(Import).where(Import.status != "receiving")
                                .order_by(Import.created_at.desc()).limit(limit)))


def latest_of(session: Session, digest: str) -> Import | None:
    """The newest import of the file with this digest."""
    return session.scalars(select(Import).where(Import.digest == digest)
                           .order_by(Import.created_at.desc()).limit(1)).one_or_none()


def set_status(session: Session, import_id: str, status: str, now: datetime, *, error: str | None = None,
               finished: bool = False) -> None:
    values = {"status": status, "updated_at": now, "error": error}
    if finished:
        values["finished_at"] = now
    session.execute(update(IMPORTS).where(IMPORTS.c.id == import_id).values(values))


def claim(session: Session, import_id: str, statuses: Sequence[str], now: datetime) -> bool:
    """Move the import to running if it is in one of `statuses` (a guarded write: two runners, one wins)."""
    moved = session.execute(update(IMPORTS).where(IMPORTS.c.id == import_id, IMPORTS.c.status.in_(statuses))
                            .values(status="running", updated_at=now))
    return moved.rowcount == 1


# --- one chunk --------------------------------------------------------------------------------------

def writes_overlap(db: Database) -> bool:
    """Whether a chunk may be read and planned in a transaction of its own while the chunk before it
    is written (PostgreSQL). SQLite has one write lock: an import that asked for it again while
    committing would keep it from the gateway's other writers (a STOP would wait for the import)."""
    return dialect.is_postgresql(db.engine)


_STAGE = {"e164": "VARCHAR(20)", "kind": "VARCHAR(20)", "region": "VARCHAR(3)", "digest": "VARCHAR(64)"}

# SQLite: the chunk's numbers staged in a temporary table, the missing ones created from it.
_SUPPRESSED = text("SELECT s.e164 FROM import_stage s JOIN suppressions x ON x.digest = s.digest")
_CREATE = text(f"""
    INSERT INTO numbers (e164, kind, region, reachability, twilio_blocks, ledger_seq, ledger_head, created_at)
    SELECT s.e164, s.kind, s.region, 'ok', '', 0, '{ledger.GENESIS_HASH}', :now FROM import_stage s
    WHERE NOT EXISTS (SELECT 1 FROM suppressions x WHERE x.digest = s.digest)
    AND NOT EXISTS (SELECT 1 FROM numbers n WHERE n.e164 = s.e164)
    ON CONFLICT (e164) DO NOTHING
""").bindparams(bindparam("now", type_=UTCDateTime()))
_HELD = """
    SELECT n.id, n.e164, n.ledger_seq, n.ledger_head, c.id, c.program_id, c.status, c.restorable
    FROM import_stage s JOIN numbers n ON n.e164 = s.e164 LEFT JOIN consents c ON c.number_id = n.id
    ORDER BY n.id
"""
# PostgreSQL: the chunk's numbers as arrays (half the server's work of staging them, analysing the
# table and joining it twice), each sent as one comma-separated text (the driver writes a list
# parameter element by element in Python, at 20 times the cost; E.164 numbers and hex digests hold
# no comma); the new numbers' ids taken from the table's own sequence, so their rows are written
# once, with the head of the chain the import gives them (not created, then updated).
_SUPPRESSED_OF = text("SELECT digest FROM suppressions WHERE digest = ANY(string_to_array(:digests, ','))")
_HELD_LOCKED = text("""
    SELECT n.id, n.e164, n.ledger_seq, n.ledger_head, c.id, c.program_id, c.status, c.restorable
    FROM numbers n LEFT JOIN consents c ON c.number_id = n.id WHERE n.e164 = ANY(string_to_array(:e164s, ','))
    ORDER BY n.id FOR UPDATE OF n
""")
_NEW_IDS = text("SELECT nextval(pg_get_serial_sequence('numbers', 'id')) FROM generate_series(1, :count)")
NEW_NUMBER_COLUMNS = ("id", "e164", "kind", "region", "reachability", "twilio_blocks", "ledger_seq", "ledger_head",
                      "created_at")


def hold(session: Session, numbers: Sequence[tuple[str, str, str | None, str]], now: datetime
         ) -> tuple[set[str], list, dict[str, int]]:
    """For the chunk's distinct numbers (e164, kind, region, suppression digest): those suppressed;
    every stored one's row, locked for the transaction (in id order, so two writers never wait on
    each other in a circle), one row per consent it holds (id, e164, ledger_seq, ledger_head, consent
    id, program_id, status, restorable; the consent's columns None when it holds none); and the ids
    the new ones will have, given in the order of their numbers (PostgreSQL: `write` stores them with
    their heads; elsewhere they are created here, and are among the stored ones)."""
    if not dialect.is_postgresql(session):
        with bulk.temp_table(session, "import_stage", _STAGE, numbers):
            suppressed = set(session.scalars(_SUPPRESSED))
            session.execute(_CREATE, {"now": now})
            return suppressed, session.execute(text(_HELD)).all(), {}
    barred = set(session.scalars(_SUPPRESSED_OF, {"digests": ",".join(digest for *_, digest in numbers)}))
    suppressed = {e164 for e164, *_, digest in numbers if digest in barred}
    held = session.execute(_HELD_LOCKED, {"e164s": ",".join(e164 for e164, *_ in numbers)}).all()
    stored = {row[1] for row in held}
    missing = sorted(e164 for e164, *_ in numbers if e164 not in stored and e164 not in suppressed)
    ids = sorted(session.scalars(_NEW_IDS, {"count": len(missing)})) if missing else []
    return suppressed, held, dict(zip(missing, ids))


# The newest opt-out of each number, unless the person texted an opt-in since (the set-wise form of
# store.consents.standing_stop, for a STOP that binds for years).
_RELEVANT = (f"(input IN ({', '.join(repr(i) for i in STOPS)}) "
             f"OR (input IN ({', '.join(repr(i) for i in OWN_OPT_INS)}) AND source = 'sms'))")


def standing_stops(session: Session, number_ids: list[int]) -> dict[int, datetime]:
    """number id -> when its standing opt-out was made, for those of `number_ids` that have one."""
    if not number_ids:
        return {}
    newest = (select(EVENTS.c.number_id, func.max(EVENTS.c.seq).label("seq"))
              .where(EVENTS.c.number_id.in_(number_ids), text(_RELEVANT)).group_by(EVENTS.c.number_id).subquery())
    rows = session.execute(select(EVENTS.c.number_id, EVENTS.c.input, EVENTS.c.occurred_at).join(
        newest, (EVENTS.c.number_id == newest.c.number_id) & (EVENTS.c.seq == newest.c.seq))).all()
    return {number_id: occurred_at for number_id, input, occurred_at in rows if input in STOPS}


def numbers_with_waiting(session: Session, number_ids: list[int]) -> set[int]:
    """Which of `number_ids` have queued or deferred messages (an opt-out must block them)."""
    if not number_ids:
        return set()
    return set(session.scalars(select(_MESSAGES.c.number_id).distinct().where(
        _MESSAGES.c.number_id.in_(number_ids), _MESSAGES.c.status.in_([status.value for status in WAITING]))))


def write(session: Session, *, import_id: str, line_from: int, line_to: int, events: list[tuple],
          new_numbers: list[tuple], new_consents: list[tuple], changed_consents: list[dict],
          heads: list[tuple[int, int, str]], blocked: dict[int, list[int]], refusals: list[tuple[int, str]],
          applied: int, now: datetime, reason: str) -> bool:
    """Write one chunk's plan and move the import from `line_from` to `line_to`; False (nothing
    written: the caller rolls back) when the import was not at `line_from` (another run moved it).
    `events`: rows in EVENT_COLUMNS' order, their evidence as canonical JSON text."""
    moved = session.execute(
        update(IMPORTS).where(IMPORTS.c.id == import_id, IMPORTS.c.line_done == line_from,
                              IMPORTS.c.status == "running")
        .values(line_done=line_to, applied=IMPORTS.c.applied + applied, refused=IMPORTS.c.refused + len(refusals),
                updated_at=now))
    if moved.rowcount != 1:
        return False
    postgresql = dialect.is_postgresql(session)
    # A number someone else created since `hold` read makes this fail whole (IntegrityError): the
    # caller runs the chunk again.
    bulk.insert_rows(session, NUMBERS, NEW_NUMBER_COLUMNS, new_numbers)
    if not postgresql:  # the JSON column takes a value there, not its text
        events = [(*event[:_EVIDENCE], json.loads(event[_EVIDENCE]), *event[_EVIDENCE + 1:]) for event in events]
    bulk.insert_rows(session, EVENTS, EVENT_COLUMNS, events, copy_from=0)
    bulk.insert_rows(session, CONSENTS, CONSENT_COLUMNS, new_consents)
    if changed_consents:
        session.execute(update(CONSENTS).where(CONSENTS.c.id == bindparam("b_id")).values(
            status=bindparam("b_status"), restorable=bindparam("b_restorable"), expires_at=None,
            updated_at=bindparam("b_updated_at")), changed_consents)
    _move_heads(session, heads)
    for number_id, program_ids in blocked.items():
        outbox.block_waiting(session.connection(), number_id=number_id, program_ids=program_ids, reason=reason,
                             now=now)
    bulk.insert_rows(session, REFUSALS, ("import_id", "line", "reason"),
                     [(import_id, line, why) for line, why in refusals])
    return True


def _move_heads(session: Session, heads: list[tuple[int, int, str]]) -> None:
    if not heads:
        return
    if dialect.is_postgresql(session):
        columns = {"id": "BIGINT", "seq": "INTEGER", "head": "VARCHAR(64)"}
        with bulk.temp_table(session, "import_heads", columns, heads):
            session.execute(text("UPDATE numbers SET ledger_seq = h.seq, ledger_head = h.head "
                                 "FROM import_heads h WHERE numbers.id = h.id"))
    else:
        session.execute(update(NUMBERS).where(NUMBERS.c.id == bindparam("b_id")).values(
            ledger_seq=bindparam("b_seq"), ledger_head=bindparam("b_head")),
            [{"b_id": id, "b_seq": seq, "b_head": head} for id, seq, head in heads])


# --- results and uploads ----------------------------------------------------------------------------

def refusals(session: Session, import_id: str, *, batch: int = 10_000) -> Iterator[tuple[int, str]]:
    """The import's refused rows in line order, `batch` at a time (memory stays bounded)."""
    after = 0
    while True:
        rows = session.execute(select(REFUSALS.c.line, REFUSALS.c.reason).where(
            REFUSALS.c.import_id == import_id, REFUSALS.c.line > after).order_by(REFUSALS.c.line).limit(batch)).all()
        if not rows:
            return
        yield from rows
        after = rows[-1][0]


def add_part(session: Session, import_id: str, part: int, data: bytes) -> None:
    session.execute(insert(PARTS).values(import_id=import_id, part=part, data=data))


def parts(session_factory, import_id: str) -> Iterator[bytes]:
    """The uploaded file's bytes, part by part, each read in a short transaction of its own."""
    part = 0
    while True:
        with session_factory() as session:
            data = session.scalar(select(PARTS.c.data).where(PARTS.c.import_id == import_id, PARTS.c.part == part))
        if data is None:
            return
        yield bytes(data)
        part += 1


def set_received(session: Session, import_id: str, digest: str, total_lines: int, now: datetime) -> None:
    session.execute(update(IMPORTS).where(IMPORTS.c.id == import_id).values(
        digest=digest, total_lines=total_lines, status="queued", updated_at=now))


def forget(session: Session, import_id: str) -> None:
    """An upload refused whole: its parts and its row."""
    session.execute(delete(PARTS).where(PARTS.c.import_id == import_id))
    session.execute(delete(IMPORTS).where(IMPORTS.c.id == import_id))


def drop_parts(session: Session, import_id: str) -> None:
    """A finished import's upload: the rows are in the ledger now, and personal data is not kept twice."""
    session.execute(delete(PARTS).where(PARTS.c.import_id == import_id))

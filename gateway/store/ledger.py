"""Reading the append-only ledger back: `verify` walks the numbers' chains in the store, `check` splits
that walk across processes.

The chains themselves (hashing, chaining, checking, replaying) are gateway/domain/ledger.py.
Someone who can write to the database can still recompute a chain and its head; signed
checkpoints of every head, kept outside the database, catch that (`checkpoints`,
docs/decisions/0009-ledger-checkpoints.md). How the check keeps up with tens of millions of events:
docs/decisions/0026-ledger-check-at-scale.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import groupby
from multiprocessing import get_context
from operator import attrgetter

from sqlalchemy import JSON, bindparam, func, select, text
from sqlalchemy.orm import Session

from gateway.domain.ledger import (
    GENESIS_HASH,
    HASHED,
    Break,
    SignedHeads,
    check_against_checkpoint,
    check_chain,
    check_head,
    check_projection,
    evidence_changed,
    number_label,
    records_erasure,
)
from gateway.domain.ledger import replay as replay_chain
from gateway.store import dialect
from gateway.store.database import Database
from gateway.store.models import Consent, LedgerEvent, PhoneNumber, Program


@dataclass
class Tally:
    """What a verification walked, for its report."""

    chains: int = 0
    events: int = 0
    # --since-checkpoint: chains whose head is still the one the checkpoint signed, not read again
    unchanged: int = 0
    # CPU seconds the pieces took, in whichever process ran them (bench/ledger_verify.py reads it:
    # the jobs are not this process's children, so its own rusage does not count them)
    cpu: float = 0.0

    def add(self, other: Tally) -> None:
        self.chains += other.chains
        self.events += other.events
        self.unchanged += other.unchanged
        self.cpu += other.cpu


_NUMBERS, _EVENTS, _CONSENTS, _PROGRAMS = (
    PhoneNumber.__table__, LedgerEvent.__table__, Consent.__table__, Program.__table__)

# Ordered by id (insertion order), not seq: a swapped seq must show, not be sorted away.
_CHAINS = select(_EVENTS).order_by(_EVENTS.c.number_id, _EVENTS.c.id)
_HELD = select(_CONSENTS.c.number_id, _CONSENTS.c.program_id, _CONSENTS.c.status, _CONSENTS.c.restorable,
               _CONSENTS.c.expires_at)
_IN_RANGE = (bindparam("low"), bindparam("high"))
_CHAINS_IN_RANGE = _CHAINS.where(_EVENTS.c.number_id.between(*_IN_RANGE))
_CHAINS_OF = _CHAINS.where(_EVENTS.c.number_id.in_(bindparam("ids", expanding=True)))
_HELD_IN_RANGE = _HELD.where(_CONSENTS.c.number_id.between(*_IN_RANGE))
_HELD_OF = _HELD.where(_CONSENTS.c.number_id.in_(bindparam("ids", expanding=True)))


def verify(session: Session, *, checkpoint=None, batch: int = 1000, tally: Tally | None = None,
           number_id: int | None = None, first: int | None = None, last: int | None = None,
           since_checkpoint: bool = False, replay: bool = True) -> Iterator[Break]:
    """Walk the numbers' chains in number order; yield what disagrees.

    For each number: the first break of its hash chain (a broken chain is not replayed: what it leads
    to means nothing); else whether it still holds the head `checkpoint` (a verified
    `checkpoints.Checkpoint`) signed for it, and whether replaying it gives the consents the gate
    reads. Numbers the checkpoint holds that are gone from the store are breaks too. Reads a batch
    of numbers at a time by keyset, their events and consents by the batch's range of ids, as rows
    (no ORM objects): memory stays bounded whatever the ledger's size.

    `number_id`: only that number's chain (the checkpoint's other numbers are not looked for).
    `first`, `last`: only numbers with ids in that range, and the checkpoint's heads in it (a job's
    share of `check`). `since_checkpoint`: a number whose head is still exactly the one the
    checkpoint signed is not read further (counted in `tally.unchanged`): its events were checked
    when it was signed and the signed root still covers its head; every other number is checked
    whole. Its consent rows and old events are then not read: the full check does that.
    `replay=False`: the chains and the checkpoint only, not the consents (bench/ledger_verify.py
    measures what the replay costs).

    On PostgreSQL the database confirms each event as it reads it (`_confirmed_chains`), and the
    session's transaction reads times in UTC from then on (`SET LOCAL`).
    """
    tally = tally if tally is not None else Tally()
    postgresql = dialect.is_postgresql(session)
    if postgresql:  # the slim rows' times as psycopg reads them, in UTC: what UTCDateTime would give, cheaper
        session.execute(_TIMES_IN_UTC)
    slugs = dict(session.execute(select(_PROGRAMS.c.id, _PROGRAMS.c.slug)).all())
    signed = SignedHeads(checkpoint, first=first if number_id is None else number_id,
                         last=last if number_id is None else number_id)
    for numbers in number_batches(session, batch, only=number_id, first=first, last=last):
        heads, moved = [], []
        for number in numbers:
            head, missing = signed.take(number.id)
            if number_id is None:  # else the missing ones are other numbers, not asked about
                yield from missing
            unchanged = head is not None and (number.ledger_seq, number.ledger_head) == (head.seq, head.hash)
            if since_checkpoint and unchanged:
                tally.unchanged += 1
                continue
            heads.append(head)
            moved.append(number)
        if not moved:
            continue
        if since_checkpoint:
            ids = {"ids": [number.id for number in moved]}
            held = session.execute(_HELD_OF, ids).all()
        else:
            ids = {"low": numbers[0].id, "high": numbers[-1].id}
            held = session.execute(_HELD_IN_RANGE, ids).all()
        events, confirmed = (_confirmed_chains(session, moved, ids) if postgresql
                             else (_chains(session, moved, ids), set()))
        consents: dict[int, dict] = {number.id: {} for number in moved}
        for row in held:
            consents[row.number_id][row.program_id] = row
        for number, head in zip(moved, heads):
            chain = events[number.id]
            if chain:
                tally.chains += 1
                tally.events += len(chain)
            label = number_label(number.id, number.e164)
            broken = (check_head if number.id in confirmed else check_chain)(number, chain, label)
            if broken:
                yield broken
                continue
            if head is not None:
                moved_back = check_against_checkpoint(number, chain, label, head, signed.signed_at)
                if moved_back:
                    yield moved_back
            if replay:
                yield from check_projection(number, chain, consents[number.id], label, slugs)
    if number_id is None:
        yield from signed.rest()


def _chains(session: Session, numbers: list, ids: dict) -> dict[int, list]:
    """The numbers' chains as whole rows, each in insertion order: `ids` is {"ids": [...]} or the
    range {"low", "high"}."""
    found = session.execute(_CHAINS_OF if "ids" in ids else _CHAINS_IN_RANGE, ids).all()  # one fetch
    events: dict[int, list] = {number.id: [] for number in numbers}
    for event in found:
        events[event.number_id].append(event)
    return events


# PostgreSQL checks every event itself, in the backend, a second CPU beside this process: its link
# (seq and prev_hash, in insertion order), its hash over the canonical JSON of its content, written
# here in SQL key by key as domain/ledger.py `_hash` writes it in Python (to_json escapes a string as
# Python's encoder does with ensure_ascii=False; a time is isoformat(timespec="microseconds") of the
# UTC time), and its evidence digest over the stored text, which is what the digest covers when the
# text was stored canonical (store/database.py `_json_rows`, store/imports.py). The rows come back
# slim (what the replay, the head and the checkpoint need), the evidence only where its text did not
# match. What SQL confirms is only what the Python check would pass (tests/integration/store/
# test_ledger_in_sql.py holds the two renderings byte-equal); a chain with an event SQL could not
# confirm is read again whole and checked in Python, which names what broke: the same findings.
# docs/decisions/0026-ledger-check-at-scale.md.
_INTEGERS, _TIMES = ("number_id", "seq", "program_id"), ("expires_at", "occurred_at")
# The hashed content's keys in sorted order, as domain/ledger.py `_hash` writes them.
_HASHED_IN_ORDER = tuple(sorted(HASHED))


def _json_sql(column: str) -> str:
    """One column's value as SQL text, as domain/ledger.py `_json` writes it (colons escaped for text())."""
    if column in _INTEGERS:
        value = f"{column}::text"
    elif column in _TIMES:
        value = rf"""'"' || to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24\:MI\:SS.US') || '+00\:00"'"""
    else:
        value = f"to_json({column})::text"
    return f"coalesce({value}, 'null')"


# '{"actor":' || … || ',"evidence_digest":' || … || '}'
_CANONICAL_SQL = " || ".join([*(f"""'{"," if index else "{"}"{column}":' || {_json_sql(column)}"""
                                for index, column in enumerate(_HASHED_IN_ORDER)), "'}'"])


def _sha256_hex(sql: str) -> str:
    return f"encode(sha256(convert_to({sql}, 'UTF8')), 'hex')"


def _confirming(where: str):
    return text(f"""
SELECT number_id, id, seq, type, program_id, input, expires_at, occurred_at, hash,
       linked AND evidence_holds AS confirmed, linked, evidence_holds,
       CASE WHEN evidence_holds THEN NULL ELSE evidence END AS evidence,
       CASE WHEN evidence_holds THEN NULL ELSE evidence_digest END AS evidence_digest
FROM (SELECT number_id, id, seq, type, program_id, input, expires_at, occurred_at, hash, evidence, evidence_digest,
             coalesce(seq = row_number() OVER chain AND prev_hash = coalesce(lag(hash) OVER chain, :genesis)
                      AND {_sha256_hex(_CANONICAL_SQL)} = hash, false) AS linked,
             coalesce({_sha256_hex("evidence::text")} = evidence_digest, false) AS evidence_holds
      FROM ledger_events WHERE {where}
      WINDOW chain AS (PARTITION BY number_id ORDER BY id)) AS checked
ORDER BY number_id, id""").columns(evidence=JSON()).bindparams(genesis=GENESIS_HASH)


# For the rest of the check's transaction (a read-only snapshot): every other time it reads is a
# UTCDateTime column, which reads the same in any zone.
_TIMES_IN_UTC = text("SET LOCAL TIME ZONE 'UTC'")
_CONFIRMING_IN_RANGE = _confirming("number_id BETWEEN :low AND :high")
_CONFIRMING_OF = _confirming("number_id = ANY(:ids)")


def _confirmed_chains(session: Session, numbers: list, ids: dict) -> tuple[dict[int, list], set[int]]:
    """PostgreSQL: the numbers' chains, and which of them SQL and the evidence check confirmed event
    by event (slim rows: only their head is left to check); the others as whole rows, for check_chain."""
    found = session.execute(_CONFIRMING_OF if "ids" in ids else _CONFIRMING_IN_RANGE, ids).all()
    events: dict[int, list] = {number.id: [] for number in numbers}
    unconfirmed = set()
    for event in found:
        events[event.number_id].append(event)
        if not event.confirmed:
            unconfirmed.add(event.number_id)
    confirmed, doubtful = set(), []
    for number in numbers:
        if number.id not in unconfirmed or _evidence_holds(events[number.id]):
            confirmed.add(number.id)
        else:
            doubtful.append(number)
    if doubtful:
        events.update(_chains(session, doubtful, {"ids": [number.id for number in doubtful]}))
    return events, confirmed


def _evidence_holds(chain: list) -> bool:
    """Every event linked, and the evidence SQL did not match (stored in another key order, redacted)
    still what the digest covers, as check_chain sees it."""
    if not all(event.linked for event in chain):
        return False
    erased = records_erasure(chain)
    return not any(not event.evidence_holds and evidence_changed(event, erased) for event in chain)


def number_batches(session: Session, batch: int, *, chained_only: bool = False, only: int | None = None,
                   first: int | None = None, last: int | None = None) -> Iterator[list]:
    """Every number as a row (id, e164, ledger_seq, ledger_head), `batch` at a time in id order, by keyset:
    memory stays bounded and a number added during the walk is read once or not at all, never twice.
    `only`: just the number with that id; `first`, `last`: just the ids in that range."""
    last_id = -1 if first is None else first - 1
    while True:
        query = select(_NUMBERS.c.id, _NUMBERS.c.e164, _NUMBERS.c.ledger_seq, _NUMBERS.c.ledger_head).where(
            _NUMBERS.c.id > last_id)
        if only is not None:
            query = query.where(_NUMBERS.c.id == only)
        if last is not None:
            query = query.where(_NUMBERS.c.id <= last)
        if chained_only:
            query = query.where(_NUMBERS.c.ledger_seq > 0)
        rows = session.execute(query.order_by(_NUMBERS.c.id).limit(batch)).all()
        if not rows:
            return
        yield rows
        last_id = rows[-1].id


# How many numbers one piece of `check`'s work covers: small enough for progress and for the jobs to
# finish together, large enough that a piece's set-up (a transaction, a bisection of the checkpoint
# file, the programs' slugs) is noise. With jobs, a ledger of fewer numbers is cut into at least four
# pieces a job (of no fewer than SMALLEST_PIECE numbers), or one job would be left with most of it.
PIECE = 20_000
SMALLEST_PIECE = 1_000


def check(db: Database, *, checkpoint=None, jobs: int = 1, since_checkpoint: bool = False,
          tally: Tally | None = None, progress: Callable[[int, int], None] | None = None,
          piece: int | None = None, replay: bool = True) -> Iterator[Break]:
    """`verify` every number, split by ranges of number ids over `jobs` processes, all reading one
    snapshot (PostgreSQL; on SQLite each process reads its own moment: docs/ledger.md). Yields the
    breaks in number order, as one `verify` would; `progress(done, total)` counts number ids after
    each piece.
    """
    tally = tally if tally is not None else Tally()
    with db.shared_snapshot() as (session, token):
        low, high = session.execute(select(func.min(_NUMBERS.c.id), func.max(_NUMBERS.c.id))).one()
        pieces = _pieces(low, high, piece, jobs)
        total = 0 if low is None else high - low + 1
        if jobs <= 1:
            results = (_verified(session, checkpoint, first, last, since_checkpoint, replay) for first, last in pieces)
            yield from _reported(results, pieces, low, total, tally, progress)
            return
        pool = ProcessPoolExecutor(jobs, mp_context=_JOBS)
        try:
            results = pool.map(_verify_piece, [(db.url, token, checkpoint, first, last, since_checkpoint, replay)
                                               for first, last in pieces])
            yield from _reported(results, pieces, low, total, tally, progress)
        finally:  # stopped early (a job died, the caller gave up): the pieces not begun are not run
            pool.shutdown(cancel_futures=True)


def replay_all(session: Session, *, jobs: int = 1, progress: Callable[[int, int], None] | None = None,
               piece: int | None = None) -> Iterator[list[tuple]]:
    """Every chain replayed through the state machine, in number order, a piece at a time over `jobs`
    processes (reading what `session`'s transaction reads, on PostgreSQL): for each piece, the consent
    rows its chains lead to, as (number_id, program_id, status, restorable, expires_at, updated_at).
    Raises ImpossibleEvent for a chain that could not have happened. What `ledger rebuild` writes."""
    low, high = session.execute(select(func.min(_NUMBERS.c.id), func.max(_NUMBERS.c.id))).one()
    pieces = _pieces(low, high, piece, jobs)
    total = 0 if low is None else high - low + 1
    if jobs <= 1:
        results = (_replayed(session, first, last) for first, last in pieces)
    else:
        url, token = session.get_bind().url.render_as_string(hide_password=False), Database.exported(session)
        pool = ProcessPoolExecutor(jobs, mp_context=_JOBS)
        results = pool.map(_replay_piece, [(url, token, first, last) for first, last in pieces])
    try:
        for (_, last), rows in zip(pieces, results):
            yield rows
            if progress is not None:
                progress(total if last is None else last - low + 1, total)
    finally:
        if jobs > 1:
            pool.shutdown(cancel_futures=True)


_REPLAYABLE = (select(_EVENTS.c.number_id, _EVENTS.c.program_id, _EVENTS.c.input, _EVENTS.c.expires_at,
                      _EVENTS.c.occurred_at, _EVENTS.c.id, _EVENTS.c.seq)
               .where(_EVENTS.c.number_id.between(*_IN_RANGE)).order_by(_EVENTS.c.number_id, _EVENTS.c.seq))


def _replayed(session: Session, first: int | None, last: int | None, batch: int = 1000) -> list[tuple]:
    rows = []
    for numbers in number_batches(session, batch, chained_only=True, first=first, last=last):
        found = session.execute(_REPLAYABLE, {"low": numbers[0].id, "high": numbers[-1].id}).all()
        for number_id, chain in groupby(found, key=attrgetter("number_id")):
            for program_id, done in replay_chain(chain).items():
                if done.state.status is not None:
                    rows.append((number_id, program_id, done.state.status.value, done.state.restorable,
                                 done.expires_at, done.updated_at))
    return rows


def _replay_piece(task) -> list[tuple]:
    """One piece of `replay_all`, in a job process."""
    url, token, first, last = task
    with _database(url).joined_snapshot(token) as session:
        return _replayed(session, first, last)


def _pieces(low: int | None, high: int | None, piece: int | None, jobs: int) -> list[tuple[int | None, int | None]]:
    """Ranges of number ids covering every id, the first and last open-ended: a checkpoint's heads of
    numbers below or above every stored one are someone's to report. `piece`: numbers a piece, else
    as PIECE says."""
    if low is None:
        return [(None, None)]
    if piece is None:
        piece = PIECE if jobs <= 1 else min(PIECE, max(SMALLEST_PIECE, -(-(high - low + 1) // (4 * jobs))))
    starts = list(range(low, high + 1, piece))
    return [(None if index == 0 else start, None if index == len(starts) - 1 else start + piece - 1)
            for index, start in enumerate(starts)]


def _reported(results, pieces, low, total, tally, progress) -> Iterator[Break]:
    for (_, last), (breaks, counted) in zip(pieces, results):
        yield from breaks
        tally.add(counted)
        if progress is not None:
            progress(total if last is None else last - low + 1, total)


def _verified(session: Session, checkpoint, first, last, since_checkpoint, replay) -> tuple[list[Break], Tally]:
    tally, started = Tally(), time.process_time()
    breaks = list(verify(session, checkpoint=checkpoint, tally=tally, first=first, last=last,
                         since_checkpoint=since_checkpoint, replay=replay))
    tally.cpu = time.process_time() - started
    return breaks, tally


# Jobs are forked from a server process that has imported this module and opened nothing: quicker
# to start than spawned ones, and unlike children forked from the caller they share none of its
# connections.
_JOBS = get_context("forkserver")
_JOBS.set_forkserver_preload([__name__])
_databases: dict[str, Database] = {}  # a job's one engine, kept across its pieces


def _database(url: str) -> Database:
    if url not in _databases:
        _databases[url] = Database(url)
    return _databases[url]


def _verify_piece(task) -> tuple[list[Break], Tally]:
    """One piece of `check`, in a job process."""
    url, token, checkpoint, first, last, since_checkpoint, replay = task
    with _database(url).joined_snapshot(token) as session:
        return _verified(session, checkpoint, first, last, since_checkpoint, replay)

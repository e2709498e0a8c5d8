"""Bulk import of consent collected elsewhere: a million rows in a minute, resumable, refusals per row.

The rules are those of one row at a time (a person's own opt-out is never overridden, an erased
number that opted out never comes back, an opt-in waits while a STOP binds under a state rule, an
illegal move is refused) but the work is done a chunk of rows at a time (docs/decisions/0025-bulk-import.md):

1. the rows are read in file order and cut into chunks of `CHUNK` rows;
2. each chunk is screened on its own (number, program, status, storable text: domain/imports.py), in
   `jobs` worker processes, a few chunks ahead of the writer;
3. each chunk is applied in file order, in one transaction: its numbers read and locked with their
   consents set-wise, every row planned in Python through the state machine and chained onto its
   number's ledger (so a number that appears twice chains twice, in order), then written by COPY,
   with the import's progress in the same transaction; on PostgreSQL the next chunk is read and
   planned while one is written (`_Writer`).

An import killed at any point has committed whole chunks and nothing else; run again on the same file
(found by its SHA-256) it skips the lines it had done and goes on. Memory holds a few chunks.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import io
import multiprocessing
import sys
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.domain import ledger
from gateway.domain.consent import OPT_OUT_INPUTS, IllegalTransition, Input, State, Status
from gateway.domain.consent import apply as transition
from gateway.domain.gate import Reason
from gateway.domain.imports import SUPPRESSED, Candidate, Screened, check_header, event_row, screen
from gateway.domain.storable import storable_text
from gateway.services.consents import STOP_BINDING, StopBinding
from gateway.store import bulk, programs
from gateway.store import imports as store
from gateway.store.database import Database
from gateway.store.models import Import, utcnow

if TYPE_CHECKING:
    from gateway.domain.quiet_hours import QuietHours

CHUNK = 20_000  # rows per transaction: big enough that COPY and set-wise statements pay, small enough to redo
UNFINISHED = ("queued", "running", "failed")
FIELD_LIMIT = 1 << 20  # the largest field csv will read (its default is 128 KiB)


class ImportMoved(RuntimeError):
    """Another run of the same import moved it while this one worked: this one stops."""


@dataclass(frozen=True)
class FileFacts:
    digest: str  # SHA-256 of the bytes
    lines: int  # newlines: what the progress bar counts to


def read_facts(path: Path) -> FileFacts:
    """The file's digest and line count, in one pass that also checks it is UTF-8 throughout (else
    UnicodeDecodeError, before anything is imported: a chunked import cannot take back what it did)."""
    digest, decoder, lines = hashlib.sha256(), codecs.getincrementaldecoder("utf-8-sig")(), 0
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
            decoder.decode(block)
            lines += block.count(b"\n")
        decoder.decode(b"", final=True)
    return FileFacts(digest.hexdigest(), lines)


@dataclass
class Outcome:
    """Where an import stands once a run of it ends."""

    import_id: str
    status: str
    line_done: int
    applied: int
    refused: int
    counts: Counter = field(default_factory=Counter)  # this run's applied rows, by input
    already_done: bool = False  # the same file was imported before: nothing was done again


def begin(db: Database, *, digest: str, name: str, actor: str, total_lines: int | None, again: bool = False,
          status: str = "queued") -> tuple[Import, bool]:
    """The import to run for a file: the unfinished one of the same digest (resumed), or a new one.
    Returns (import, already_done): a file imported to the end before is not imported twice unless
    `again` (its rows would be refused as repeats, or repeat opt-outs in the ledger)."""
    with db.transaction() as session:
        latest = store.latest_of(session, digest)
        if latest is not None and latest.status in UNFINISHED:
            return latest, False
        if latest is not None and latest.status == "done" and not again:
            return latest, True
        return store.create(session, digest=digest, name=name, actor=actor, status=status,
                            total_lines=total_lines, now=utcnow()), False


def run(db: Database, import_id: str, text: Iterable[str], *, region: str, suppression_key: bytes,
        rules: QuietHours, jobs: int = 1, chunk: int = CHUNK,
        on_progress: Callable[[int], None] | None = None, now: datetime | None = None) -> Outcome:
    """Run (or go on with) the import `import_id` over the CSV `text` (an iterable of its lines).

    ValueError for a file refused whole (its header); ImportMoved if another run moved it meanwhile.
    A fault (the database gone) propagates with the import left where its last chunk committed.
    `now`: when the rows' events happen (the run's start).
    """
    now = now or utcnow()
    with db.transaction() as session:
        if not store.claim(session, import_id, UNFINISHED, now):
            row = store.get(session, import_id)
            raise ImportMoved(f"import {import_id} is {row.status if row else 'unknown'}: not run again")
        row = store.get(session, import_id)
        line_done, actor = row.line_done, row.actor
        known = {program.slug: program.id for program in programs.all_programs(session)}
    try:
        reader = csv.reader(text)
        fieldnames = check_header(next(reader, None))
        screening = _Screening(jobs, fieldnames, region, known, suppression_key, actor=actor, now=now)
        writer = _Writer(db, import_id, line_done, actor=actor, rules=rules, now=now, on_progress=on_progress)
        # No cyclic garbage collection while the rows go through: a chunk is a few hundred thousand
        # small objects (none in a cycle), which otherwise set the collector off over and over
        # (a third of the writer's time). What little cyclic garbage a chunk's session leaves waits
        # for the end. Only where the import has the process to itself (the command line): in the
        # worker's thread pool, the other tasks' garbage would wait as long.
        alone = threading.active_count() == 1
        with screening, bulk.collector_paused() if alone else contextlib.nullcontext(), writer:
            for last_line, screened in screening.chunks(_rows(reader, after=line_done), chunk):
                writer.apply(last_line, screened)
            writer.finish()
    except (ValueError, csv.Error) as error:  # its header refused, or a line csv cannot read (chunks before it stay)
        with db.transaction() as session:
            store.set_status(session, import_id, "failed", utcnow(), error=str(error), finished=True)
        raise ValueError(str(error)) from None
    except ImportMoved:
        raise
    except BaseException:
        # Recording the failure must not hide it (the database may be what failed).
        with contextlib.suppress(Exception), db.transaction() as session:
            store.set_status(session, import_id, "failed", utcnow(), error="interrupted; run it again to go on")
        raise
    with db.transaction() as session:
        store.set_status(session, import_id, "done", utcnow(), finished=True)
        store.drop_parts(session, import_id)
        row = store.get(session, import_id)
        return Outcome(import_id, row.status, row.line_done, row.applied, row.refused, writer.counts)


def _rows(reader, *, after: int) -> Iterator[tuple[int, list[str]]]:
    """(line, values) of every row after line `after`, numbered as the results file numbers them:
    the header is line 1, and an empty line is no row (as csv.DictReader skips it)."""
    line = 1
    for values in reader:
        if not values:
            continue
        line += 1
        if line > after:
            yield line, values


class _Screening:
    """Screens chunks ahead of the writer: in `jobs` processes (a few chunks in flight, so memory
    stays bounded), or in this one when jobs is 1."""

    def __init__(self, jobs: int, fieldnames: list[str], region: str, known: dict[str, int], key: bytes, *,
                 actor: str, now: datetime):
        self.jobs = max(1, jobs)
        self.args = (fieldnames,)
        self.kwargs = {"region": region, "programs": known, "suppression_key": key, "actor": actor,
                       "occurred_at": now}
        self.pool: Executor | None = None

    def __enter__(self):
        if self.jobs > 1:
            # forkserver, not fork: the caller may be a threaded worker, and a forked copy of another
            # thread's held lock never comes free.
            self.pool = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("forkserver"))
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def chunks(self, rows: Iterator[tuple[int, list[str]]], size: int) -> Iterator[tuple[int, Screened]]:
        csv.field_size_limit(FIELD_LIMIT)
        pending: deque[tuple[int, Future | Screened]] = deque()
        batch: list[tuple[int, list[str]]] = []

        def submit() -> None:
            last = batch[-1][0]
            if self.pool is None:
                pending.append((last, screen(list(batch), *self.args, **self.kwargs)))
            else:
                pending.append((last, self.pool.submit(_screen_paused, list(batch), *self.args, **self.kwargs)))
            batch.clear()

        for row in rows:
            batch.append(row)
            if len(batch) >= size:
                submit()
                while len(pending) > self.jobs:
                    yield _done(pending.popleft())
        if batch:
            submit()
        while pending:
            yield _done(pending.popleft())


def _screen_paused(*args, **kwargs) -> Screened:
    """`screen` in a screening process, without cyclic garbage collection (as the writer's loop)."""
    with bulk.collector_paused():
        return screen(*args, **kwargs)


def _done(item: tuple[int, Future | Screened]) -> tuple[int, Screened]:
    last, screened = item
    return last, screened.result() if isinstance(screened, Future) else screened


@dataclass
class _Holding:
    """One number as the chunk holds it: its chain's head and its consents, moved row by row."""

    number_id: int
    seq: int
    head: str
    consents: dict[int, tuple[int | None, State]]  # program id -> (consent row id or None, state)
    stopped_at: datetime | None = None  # its standing opt-out, if any
    moved: bool = False
    new: bool = False  # not stored yet: written with its head (PostgreSQL)


_OPT_IN = Input.IMPORT_OPT_IN.value
_INPUTS = {input.value: input for input in Input}
_STATUS_VALUES: dict[Status | None, str | None] = {None: None, **{status: status.value for status in Status}}
_NEVER = State()


@dataclass
class _Plan:
    events: list[tuple] = field(default_factory=list)  # rows: ledger.Event's fields, the evidence as JSON text
    lines: list[int] = field(default_factory=list)  # each event's line
    refusals: list[tuple[int, str]] = field(default_factory=list)
    new_consents: list[tuple] = field(default_factory=list)
    changed_consents: list[dict] = field(default_factory=list)
    heads: list[tuple[int, int, str]] = field(default_factory=list)  # of numbers stored before the chunk
    opted_out: dict[int, set[int]] = field(default_factory=dict)  # number id -> programs it opted out of
    counts: Counter = field(default_factory=Counter)


@dataclass
class _Chunk:
    """One chunk of screened rows on its way through the writer: its transaction, once open, what it
    holds and what it will write."""

    line_from: int
    line_to: int
    screened: Screened
    numbers: set[str]  # the e164 of every row that passed the screening
    session: Session | None = None
    transaction: contextlib.ExitStack | None = None
    distinct: dict[str, tuple] = field(default_factory=dict)  # e164 -> (e164, kind, region, suppression)
    holdings: dict[str, _Holding] = field(default_factory=dict)
    plan: _Plan = field(default_factory=_Plan)


class _RunAgain(Exception):  # noqa: N818 (not an error: a chunk to run again)
    """The chunk being written failed on a unique key (a number someone else created since its read)."""

    def __init__(self, chunk: _Chunk):
        super().__init__(f"lines {chunk.line_from + 1}-{chunk.line_to} run again")
        self.chunk = chunk


class _Writer:
    """Applies screened chunks in file order, each in one transaction that commits its progress.

    A chunk's write (COPY of its rows, the foreign-key checks, the commit) is mostly the database's
    work, so, where the store allows it (store.writes_overlap), it runs in a thread while the next
    chunk is read and planned on a second connection: first its rows of numbers the chunk being
    written does not touch, then, once that chunk has committed, the rest, read as it left them. The
    rows are stored exactly as one chunk after the other would store them; each chunk's write starts
    after the one before it committed.
    """

    ATTEMPTS = 3  # a chunk whose write fails on a unique key runs again, up to this many times in all

    def __init__(self, db: Database, import_id: str, line_done: int, *, actor: str, rules: QuietHours,
                 now: datetime, on_progress: Callable[[int], None] | None):
        self.db, self.import_id, self.actor, self.rules, self.now = db, import_id, actor, rules, now
        self.line_done = self.planned_to = line_done
        self.on_progress = on_progress
        self.counts: Counter = Counter()
        self.writing: tuple[_Chunk, Future] | None = None
        self.thread: ThreadPoolExecutor | None = None

    def __enter__(self):
        if store.writes_overlap(self.db):
            self.thread = ThreadPoolExecutor(1, thread_name_prefix="import-write")
        return self

    def __exit__(self, *exc) -> None:
        # On a failure, the chunk being written still ends (committed or rolled back) before the
        # failure is recorded; its own failure would only hide the first one.
        if self.writing is not None:
            with contextlib.suppress(BaseException):
                self.writing[1].result()
        if self.thread is not None:
            self.thread.shutdown()

    def apply(self, line_to: int, screened: Screened) -> None:
        """Read and plan the chunk of lines after the last one given, up to `line_to`, and start
        writing it (after the chunk before it committed)."""
        chunk = _Chunk(self.planned_to, line_to, screened, {c.e164 for c in screened.candidates})
        self.planned_to = line_to
        while True:
            try:
                self._prepare(chunk)
                break
            except _RunAgain as again:  # this chunk was rolled back; it starts over after that one
                self._alone(again.chunk, attempts=self.ATTEMPTS - 1)
        if self.thread is None:
            self._alone(chunk, attempts=self.ATTEMPTS, prepared=True)
        else:
            self.writing = (chunk, self.thread.submit(self._write, chunk))

    def finish(self) -> None:
        """Wait for the last chunk's write."""
        try:
            self._wait()
        except _RunAgain as again:
            self._alone(again.chunk, attempts=self.ATTEMPTS - 1)

    def _alone(self, chunk: _Chunk, *, attempts: int, prepared: bool = False) -> None:
        """Write a chunk with nothing beside it (a chunk whose write failed on a unique key runs
        again so, as every chunk does where writes do not overlap)."""
        for attempt in range(attempts):
            if attempt or not prepared:
                self._prepare(chunk)
            try:
                self._write(chunk)
            except IntegrityError:
                if attempt == attempts - 1:
                    raise
                continue
            self._committed(chunk)
            return

    def _prepare(self, chunk: _Chunk) -> None:
        chunk.distinct, chunk.holdings, chunk.plan = {}, {}, _Plan()  # from the start, if it runs again
        busy = self.writing[0].numbers if self.writing is not None else set()
        first = [c for c in chunk.screened.candidates if c.e164 not in busy]
        later = [c for c in chunk.screened.candidates if c.e164 in busy] if busy else []
        chunk.transaction = contextlib.ExitStack()
        chunk.session = chunk.transaction.enter_context(self.db.transaction())
        try:
            self._hold_and_plan(chunk, first)
            self._wait()
            if later:
                self._hold_and_plan(chunk, later)
                _in_file_order(chunk.plan)
            _finish(chunk.plan, chunk.holdings, self.now)
        except BaseException:
            chunk.transaction.__exit__(*sys.exc_info())  # rolled back
            raise

    def _wait(self) -> None:
        """Wait for the chunk being written to commit."""
        if self.writing is None:
            return
        chunk, future = self.writing
        self.writing = None
        try:
            future.result()
        except IntegrityError:
            raise _RunAgain(chunk) from None
        self._committed(chunk)

    def _committed(self, chunk: _Chunk) -> None:
        self.counts.update(chunk.plan.counts)
        self.line_done = chunk.line_to
        if self.on_progress:
            self.on_progress(self.line_done)

    def _hold_and_plan(self, chunk: _Chunk, candidates: list[Candidate]) -> None:
        """Hold (lock and read) the numbers of `candidates` and plan their rows, in file order."""
        distinct: dict[str, tuple] = {}
        for c in candidates:
            distinct.setdefault(c.e164, (c.e164, c.kind, c.region, c.suppression))
        session = chunk.session
        suppressed, held, new = store.hold(session, list(distinct.values()), self.now)
        holdings: dict[str, _Holding] = {e164: _Holding(number_id, 0, ledger.GENESIS_HASH, {}, new=True)
                                         for e164, number_id in new.items()}
        for number_id, e164, seq, head, consent_id, program_id, status, restorable in held:
            holding = holdings.get(e164)
            if holding is None:
                holding = holdings[e164] = _Holding(number_id, seq, head, {})
            if consent_id is not None:
                holding.consents[program_id] = (consent_id, State(Status(status), bool(restorable)))
        opting_in = {holdings[c.e164].number_id for c in candidates
                     if c.input == _OPT_IN and c.e164 in holdings and holdings[c.e164].seq > 0}
        stops = store.standing_stops(session, sorted(opting_in))
        for holding in holdings.values():
            holding.stopped_at = stops.get(holding.number_id)
        _plan(candidates, suppressed, holdings, chunk.plan, actor=self.actor, rules=self.rules, now=self.now)
        chunk.distinct.update(distinct)
        chunk.holdings.update(holdings)

    def _write(self, chunk: _Chunk) -> None:
        """Write the chunk's plan and commit it with the import's progress (in the writer's thread)."""
        session, plan, now = chunk.session, chunk.plan, self.now
        try:
            new_numbers = sorted((holding.number_id, e164, *chunk.distinct[e164][1:3], "ok", "", holding.seq,
                                  holding.head, now) for e164, holding in chunk.holdings.items() if holding.new)
            waiting = store.numbers_with_waiting(session, sorted(plan.opted_out))
            if not store.write(session, import_id=self.import_id, line_from=chunk.line_from, line_to=chunk.line_to,
                               events=plan.events, new_numbers=new_numbers, new_consents=plan.new_consents,
                               changed_consents=plan.changed_consents, heads=plan.heads,
                               blocked={n: sorted(plan.opted_out[n]) for n in waiting},
                               refusals=sorted(chunk.screened.refusals + plan.refusals),
                               applied=sum(plan.counts.values()), now=now, reason=Reason.OPTED_OUT.value):
                raise ImportMoved(f"import {self.import_id} was moved past line {chunk.line_from} by another run")
        except BaseException:
            chunk.transaction.__exit__(*sys.exc_info())  # rolled back
            raise
        chunk.transaction.close()  # committed


def _plan(candidates: list[Candidate], suppressed: set[str], holdings: dict[str, _Holding], plan: _Plan, *,
          actor: str, rules: QuietHours, now: datetime) -> None:
    """`candidates` in file order, through the state machine onto their numbers' chains, as the
    one-row-at-a-time import decided them, into `plan`."""
    for c in candidates:
        if c.e164 in suppressed:
            plan.refusals.append((c.line, SUPPRESSED))
            continue
        holding = holdings[c.e164]
        input = _INPUTS[c.input]
        if input is Input.IMPORT_OPT_IN and holding.stopped_at is not None:
            rule = rules.stop_binding(c.e164, now)
            if rule is not None and now < (until := rule.binds_until(holding.stopped_at)):
                binding = StopBinding(rule, holding.stopped_at, until)
                plan.refusals.append((c.line, f"{STOP_BINDING}: {binding.message}"))
                continue
        consent_id, before = holding.consents.get(c.program_id, (None, _NEVER))
        try:
            after = transition(before, input)
        except IllegalTransition as error:
            plan.refusals.append((c.line, str(error)))
            continue
        # The screening wrote the event's content; here it takes its place on the number's chain.
        event = event_row(c, holding.number_id, holding.seq + 1, holding.head, _STATUS_VALUES[before.status],
                          _STATUS_VALUES[after.status], actor=actor, occurred_at=now)
        plan.events.append(event)
        plan.lines.append(c.line)
        holding.seq, holding.head, holding.moved = event[1], event[-1], True
        holding.consents[c.program_id] = (consent_id, after)
        if input in OPT_OUT_INPUTS:
            holding.stopped_at = now
            plan.opted_out.setdefault(holding.number_id, set()).add(c.program_id)
        plan.counts[c.input] += 1


def _in_file_order(plan: _Plan) -> None:
    """The events of a chunk planned in two parts, put back in the order of their lines (their ids
    are given in that order, as are their consents')."""
    order = sorted(range(len(plan.events)), key=plan.lines.__getitem__)
    plan.events = [plan.events[i] for i in order]
    plan.lines = [plan.lines[i] for i in order]


def _finish(plan: _Plan, holdings: dict[str, _Holding], now: datetime) -> None:
    """The chunk's new heads, and each consent it moved, written once in the state its last row left it in."""
    for holding in holdings.values():
        if holding.moved and not holding.new:
            plan.heads.append((holding.number_id, holding.seq, holding.head))
    by_id = {holding.number_id: holding for holding in holdings.values()}
    for number_id, program_id in dict.fromkeys((event[0], event[4]) for event in plan.events):
        consent_id, state = by_id[number_id].consents[program_id]
        if consent_id is None:
            plan.new_consents.append((number_id, program_id, state.status.value, state.restorable, None, now))
        else:
            plan.changed_consents.append({"b_id": consent_id, "b_status": state.status.value,
                                          "b_restorable": state.restorable, "b_updated_at": now})


def import_text(db: Database, text: str, *, actor: str, region: str, suppression_key: bytes, rules: QuietHours,
                now: datetime | None = None, name: str = "inline.csv") -> Outcome:
    """Import a CSV held in memory as a new import, in this process (a handful of rows: tools, tests)."""
    found, _ = begin(db, digest=hashlib.sha256(text.encode()).hexdigest(), name=name, actor=actor,
                     total_lines=text.count("\n"), again=True)
    return run(db, found.id, io.StringIO(text, newline=""), region=region, suppression_key=suppression_key,
               rules=rules, now=now)


def refusals(db: Database, import_id: str) -> list[tuple[int, str]]:
    """Every row the import refused, (line, why), in line order."""
    with db.sessions() as session:
        return [tuple(row) for row in store.refusals(session, import_id)]


# --- uploads (POST /v1/consents/import) -------------------------------------------------------------

PART_BYTES = 1 << 20  # an uploaded file is kept in parts of this many bytes


def receive(db: Database, blocks: Iterable[bytes], *, name: str, actor: str) -> Import:
    """Keep an uploaded CSV, part by part (memory holds one part), as an import queued for the worker.

    ValueError, with nothing kept, for a file that is not UTF-8 or whose header is refused; the rows
    are checked when the import runs (their refusals are its results).
    """
    with db.transaction() as session:
        row = store.create(session, digest="", name=storable_text(name), actor=actor, status="receiving",
                           total_lines=None, now=utcnow())
    digest, decoder, lines = hashlib.sha256(), codecs.getincrementaldecoder("utf-8-sig")(), 0
    part, buffer, head = 0, bytearray(), ""
    try:
        for block in blocks:
            digest.update(block)
            lines += block.count(b"\n")
            text = decoder.decode(block)  # only to check it is UTF-8: the parts keep the bytes
            if head is not None:
                head += text
                if "\n" in head:
                    head = _check_first_line(head)
            buffer += block
            if len(buffer) >= PART_BYTES:
                part = _keep(db, row.id, part, buffer)
        decoder.decode(b"", final=True)
        if head is not None:
            _check_first_line(head)
        _keep(db, row.id, part, buffer)
    except (UnicodeDecodeError, ValueError, csv.Error) as error:
        with db.transaction() as session:
            store.forget(session, row.id)
        if isinstance(error, UnicodeDecodeError):
            raise ValueError(f"the file is not UTF-8 text ({error.reason}): nothing was imported") from None
        raise ValueError(str(error)) from None
    with db.transaction() as session:
        store.set_received(session, row.id, digest.hexdigest(), lines, utcnow())
        return store.get(session, row.id)


def _check_first_line(text: str) -> None:
    """The header (the text's first line) checked; None, so the caller stops looking."""
    check_header(next(csv.reader([text.split("\n", 1)[0]]), None))


def _keep(db: Database, import_id: str, part: int, buffer: bytearray) -> int:
    """Store what the buffer holds as parts of at most PART_BYTES; the next part's number."""
    with db.transaction() as session:
        for start in range(0, len(buffer), PART_BYTES):
            store.add_part(session, import_id, part, bytes(buffer[start:start + PART_BYTES]))
            part += 1
    buffer.clear()
    return part


def _lines(parts: Iterable[bytes]) -> Iterator[str]:
    """The parts' text as lines, each with its "\\n" (a line, or a character, may run across parts)."""
    decoder, rest = codecs.getincrementaldecoder("utf-8-sig")(), ""
    for data in parts:
        pieces = (rest + decoder.decode(data)).split("\n")
        rest = pieces.pop()
        for piece in pieces:
            yield piece + "\n"
    rest += decoder.decode(b"", final=True)
    if rest:
        yield rest


def run_uploaded(db: Database, import_id: str, *, region: str, suppression_key: bytes, rules: QuietHours,
                 jobs: int = 1) -> Outcome:
    """Run (or go on with) an import received by `receive`, reading its parts from the store."""
    return run(db, import_id, _lines(store.parts(db.sessions, import_id)), region=region,
               suppression_key=suppression_key, rules=rules, jobs=jobs)


# --- results ----------------------------------------------------------------------------------------

RESULT_COLUMNS = ("line", "result", "reason")


def results(db: Database, import_id: str) -> Iterator[tuple[int, str, str]]:
    """(line, "imported" | "refused", why) for every row the import has done, in line order."""
    with db.snapshot() as session:
        row = store.get(session, import_id)
        if row is None:
            return
        refused = store.refusals(session, import_id)
        next_refused = next(refused, None)
        for line in range(2, row.line_done + 1):
            if next_refused is not None and next_refused[0] == line:
                yield line, "refused", next_refused[1]
                next_refused = next(refused, None)
            else:
                yield line, "imported", ""


def write_results(db: Database, import_id: str, handle: IO[str]) -> None:
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(RESULT_COLUMNS)
    writer.writerows(results(db, import_id))

"""Consent imports, the part a row answers alone: is it a number, a program, a status, storable text.

Pure, and picklable in and out: a bulk import screens its chunks of rows in worker processes
(services/imports.py), because parsing a phone number costs more than everything the database
does with the row. What depends on the store (suppressions, the number's consents, a STOP that
still binds) is decided after, in file order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from gateway.domain import ledger, storable, suppression
from gateway.domain.consent import EVENT_TYPES, Input, Source
from gateway.domain.numbers import InvalidNumber, parse

REQUIRED_COLUMNS = ("phone", "program", "status")
STATUSES = {"opted_in": Input.IMPORT_OPT_IN, "opted_out": Input.IMPORT_OPT_OUT}
SUPPRESSED = "suppressed: the number was erased after it opted out, and is never imported again"


def check_header(fieldnames: list[str] | None) -> list[str]:
    """The CSV's column names, or ValueError naming what is wrong (then nothing is imported)."""
    names = list(fieldnames or [])
    missing = [column for column in REQUIRED_COLUMNS if column not in names]
    if missing:
        raise ValueError(f"the CSV lacks the column(s): {', '.join(missing)}")
    for name in names:
        if reason := storable.unstorable_reason(name):
            raise ValueError(f"the CSV's column name {storable.escaped(name)!r} {reason}")
    if len(set(names)) != len(names):
        raise ValueError("the CSV names a column twice: which one is evidence would be a guess")
    return names


class Candidate(NamedTuple):
    """A row that passed every check the row alone can answer: what the store must decide on. Plain
    values only: chunks of these come back from the screening processes, pickled."""

    line: int
    e164: str
    kind: str
    region: str | None
    program_id: int
    input: str  # an Input's value
    evidence_json: str  # every other non-empty column, verbatim, as canonical JSON (stored as it is)
    evidence_digest: str  # as the ledger chains it
    suppression: str  # the number's keyed suppression digest
    event: ledger.Unplaced  # the hashed content of the row's event, but for its place in the chain


@dataclass(frozen=True)
class Screened:
    candidates: list[Candidate]
    refusals: list[tuple[int, str]]  # (line, why)

    def __reduce__(self):
        # The candidates travel as plain tuples: pickle writes a named tuple through Python code,
        # four times slower (a million rows come back from the screening processes).
        return _screened, (list(map(tuple, self.candidates)), self.refusals)


def _screened(candidates: list[tuple], refusals: list[tuple[int, str]]) -> Screened:
    return Screened(list(map(Candidate._make, candidates)), refusals)


def screen(rows: list[tuple[int, list[str]]], fieldnames: list[str], *, region: str, programs: dict[str, int],
           suppression_key: bytes, actor: str, occurred_at: datetime) -> Screened:
    """Check each (line, values) row on its own; `programs` maps slugs to ids. A row that passes has
    its event written as far as it can be without the store: `actor` imports it at `occurred_at`."""
    suppression_digest = suppression.digester(suppression_key)
    source = Source.IMPORT.value
    shared: dict[str, str] = {}
    phone_at, program_at, status_at = (fieldnames.index(column) for column in REQUIRED_COLUMNS)
    extra = [(position, name) for position, name in enumerate(fieldnames) if name not in REQUIRED_COLUMNS]
    width = len(fieldnames)
    candidates, refusals = [], []
    for line, values in rows:
        if len(values) < width:  # csv.DictReader's None for a short row
            values = values + [""] * (width - len(values))
        elif len(values) > width:  # values past the header's columns are not kept (as DictReader's None key)
            values = values[:width]
        if storable.UNSTORABLE.search("".join(values)):  # a file's stray NUL: this row is refused, the others go in
            column, reason = next((fieldnames[position], reason) for position, value in enumerate(values)
                                  if (reason := storable.unstorable_reason(value)))
            refusals.append((line, f"column {column!r} {reason}"))
            continue
        try:
            number = parse(values[phone_at], region)
        except InvalidNumber as error:
            refusals.append((line, f"invalid number ({error.reason})"))
            continue
        program = values[program_at]
        program_id = programs.get(program.strip())
        if program_id is None:
            refusals.append((line, f"unknown program {program!r}"))
            continue
        status = values[status_at]
        input = STATUSES.get(status.strip())
        if input is None:
            refusals.append((line, f"status must be opted_in or opted_out, not {status!r}"))
            continue
        evidence_json, evidence_digest = ledger.canonical_evidence(
            {name: values[position] for position, name in extra if values[position] != ""})
        event = ledger.unplaced(EVENT_TYPES[input], input.value, program_id, None, source, actor, reference(line),
                                evidence_digest, occurred_at)
        event = tuple(shared.setdefault(piece, piece) for piece in event)  # pickled once, not once a row
        candidates.append(Candidate(line, number.e164, number.kind, number.region, program_id, input.value,
                                    evidence_json, evidence_digest, suppression_digest(number.e164), event))
    return Screened(candidates, refusals)


def reference(line: int) -> str:
    """An imported row's event's reference: where it came from in the file."""
    return f"line {line}"


_INPUTS = {input.value: input for input in STATUSES.values()}


def event_row(candidate: Candidate, number_id: int, seq: int, prev_hash: str, status_before: str | None,
              status_after: str | None, *, actor: str, occurred_at: datetime) -> tuple:
    """The candidate's event placed on its number's chain, as a row (ledger.Event's fields in order,
    the evidence as its canonical JSON text), with the content `screen` wrote its `event` from."""
    hash = ledger.placed_hash(candidate.event, number_id, seq, prev_hash, status_before, status_after)
    return (number_id, seq, EVENT_TYPES[_INPUTS[candidate.input]], candidate.input, candidate.program_id,
            status_before, status_after, None, Source.IMPORT.value, actor, reference(candidate.line),
            candidate.evidence_json, candidate.evidence_digest, occurred_at, prev_hash, hash)

"""The ledger's chains: one SHA-256 hash chain per number (docs/decisions/0002-ledger-chain.md).

A chain per number keeps writers for different numbers independent (no global lock on every
webhook) while still catching an edited, removed or reordered event: each event hashes the one
before it, and the number row records the head, so even the last event cannot vanish unseen.

Pure: how an event is hashed and chained, how a chain is checked (against itself, a signed
checkpoint's head and the consents it leads to) and replayed. Reading the chains is
gateway/store/ledger.py; signing their heads is gateway/store/checkpoints.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import takewhile
from json.encoder import encode_basestring

from gateway.domain.consent import IllegalTransition, Input, State
from gateway.domain.consent import apply as transition
from gateway.domain.numbers import mask

GENESIS_HASH = "0" * 64  # the `prev_hash` of a chain's first event, and the head of a number without events


# The one canonical JSON: sorted keys, no spaces, UTF-8 as is. Built once (json.dumps with options
# builds an encoder per call, a third of the cost of hashing an event).
_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode


def _canonical(value: object) -> bytes:
    return _ENCODE(value).encode()


def evidence_digest(evidence: dict) -> str:
    return hashlib.sha256(_canonical(evidence)).hexdigest()


def canonical_evidence(evidence: dict) -> tuple[str, str]:
    """The evidence as canonical JSON text (what its digest covers, and a fine way to store it) and
    its digest, from one serialisation."""
    canonical = _canonical(evidence)
    return canonical.decode(), hashlib.sha256(canonical).hexdigest()


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="microseconds") if moment else None


# What an event's hash covers: all of its content (evidence through its digest) and the hash before it.
HASHED = ("number_id", "seq", "type", "input", "program_id", "status_before", "status_after", "expires_at",
           "source", "actor", "reference", "evidence_digest", "occurred_at", "prev_hash")


def event_hash(event) -> str:
    """The hash of an event's content and of the event before it (an Event, or a stored row with its fields)."""
    return _hash(event.number_id, event.seq, event.type, event.input, event.program_id, event.status_before,
                 event.status_after, event.expires_at, event.source, event.actor, event.reference,
                 event.evidence_digest, event.occurred_at, event.prev_hash)


def hashed_content(event) -> dict:
    """Exactly what an event's hash covers, times as ISO text: what a proof bundle carries, so that
    anyone can recompute the hash (tools/verify_proof.py)."""
    content = {name: getattr(event, name) for name in HASHED}
    content["expires_at"] = _iso(content["expires_at"])
    content["occurred_at"] = _iso(content["occurred_at"])
    return content


def _content_text(fields: dict) -> str:
    """What the hash of an event with these fields covers, as canonical JSON text."""
    return _placed(unplaced(fields["type"], fields["input"], fields["program_id"], fields["expires_at"],
                            fields["source"], fields["actor"], fields["reference"], fields["evidence_digest"],
                            fields["occurred_at"]),
                   fields["number_id"], fields["seq"], fields["prev_hash"], fields["status_before"],
                   fields["status_after"])


def _json(value) -> str:
    """One value as _canonical writes it (the common kinds without the encoder's dispatch)."""
    kind = type(value)
    if kind is str:
        return encode_basestring(value)
    if value is None:
        return "null"
    if kind is int:
        return int.__repr__(value)
    return _ENCODE(value)


def _hash(number_id, seq, type, input, program_id, status_before, status_after, expires_at, source, actor,
          reference, evidence_digest, occurred_at, prev_hash) -> str:
    """SHA-256 of _canonical(hashed_content(event)), written out key by key in sorted order: the same
    bytes (tests/unit/domain/test_ledger_hash.py holds them equal), at a quarter of the cost, which
    is most of what checking a chain costs."""
    return placed_hash(unplaced(type, input, program_id, expires_at, source, actor, reference, evidence_digest,
                                occurred_at), number_id, seq, prev_hash, status_before, status_after)


# An event's hashed content as its canonical JSON text, in the five pieces around the values its place
# in a chain decides (the number, the seq, the hash before it, the statuses it moves between), which
# `placed_hash` fills in. A bulk import writes these in its screening processes, in parallel, before
# it knows where each row's event goes (docs/decisions/0025-bulk-import.md). A plain tuple: a million
# of them are pickled from those processes, and a named tuple pickles four times slower.
Unplaced = tuple[str, str, str, str, str]


def unplaced(type, input, program_id, expires_at, source, actor, reference, evidence_digest, occurred_at) -> Unplaced:
    return (f'{{"actor":{_json(actor)},"evidence_digest":{_json(evidence_digest)},'
            f'"expires_at":{_json(_iso(expires_at))},"input":{_json(input)},"number_id":',
            f',"occurred_at":{_json(_iso(occurred_at))},"prev_hash":',
            f',"program_id":{_json(program_id)},"reference":{_json(reference)},"seq":',
            f',"source":{_json(source)},"status_after":',
            f',"type":{_json(type)}}}')


def placed_hash(text: Unplaced, number_id, seq, prev_hash, status_before, status_after) -> str:
    """The hash of the event `text` describes, placed at `seq` on the number's chain after `prev_hash`."""
    return hashlib.sha256(_placed(text, number_id, seq, prev_hash, status_before, status_after).encode()).hexdigest()


def _placed(text: Unplaced, number_id, seq, prev_hash, status_before, status_after) -> str:
    """The canonical JSON text of what the hash of the event `text` describes covers, once placed."""
    return (f'{text[0]}{_json(number_id)}{text[1]}{_json(prev_hash)}{text[2]}{_json(seq)}{text[3]}'
            f'{_json(status_after)},"status_before":{_json(status_before)}{text[4]}')


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
    # The whole event as one JSON object: its hashed content and its evidence as the canonical JSON
    # text their hashes were computed over (so what is stored is, byte for byte, what was hashed), and
    # its hash. Keys not in canonical order: an object for a store to read, not to hash.
    json: str = field(default="", repr=False, compare=False)

    def row(self) -> dict:
        """The event's columns and their values (without `json`)."""
        return {name: getattr(self, name) for name in COLUMNS}


def chain(number_id: int, seq: int, head: str, drafts: list[dict]) -> list[Event]:
    """Chain `drafts` (an event's content without its place) after the head at `seq`.

    Pure: the caller holds the number's row lock and writes the events and the new head together.
    """
    events = []
    evidences: dict[int, tuple[str, str]] = {}  # one opt-out's events share one evidence: written once
    for draft in drafts:
        seq += 1
        evidence = draft["evidence"]
        written = evidences.get(id(evidence))
        if written is None:
            written = evidences[id(evidence)] = canonical_evidence(evidence)
        evidence_text, digest = written
        placed = dict(draft, number_id=number_id, seq=seq, prev_hash=head, evidence_digest=digest)
        content = _content_text(placed)
        head = hashlib.sha256(content.encode()).hexdigest()
        events.append(Event(**placed, hash=head, json=f'{{"evidence":{evidence_text},"hash":"{head}",{content[1:]}'))
    return events


# An event's columns as stored, in its fields' order (its `json` is how it travels, not a column).
COLUMNS = tuple(name for name in Event.__dataclass_fields__ if name != "json")


def number_label(number_id: int, e164: str | None) -> str:
    """How a report names a number: masked (reports get pasted anywhere), with its row id."""
    return f"{mask(e164)} (number {number_id})" if e164 else f"erased number {number_id}"


@dataclass(frozen=True)
class Break:
    """Where the ledger, the consents or the checkpoint stop agreeing: the number, the program, the event."""

    number_id: int | None
    number: str  # number_label(): the masked number, never the number itself
    problem: str
    program: str | None = None  # the program's slug
    event_id: int | None = None
    seq: int | None = None

    def __str__(self) -> str:
        where = [self.number]
        if self.program:
            where.append(f"program {self.program}")
        if self.event_id is not None:
            where.append(f"event {self.event_id} at seq {self.seq}")
        return f"{', '.join(where)}: {self.problem}"


@dataclass(frozen=True)
class Replayed:
    """What one (number, program) consent is after replaying its chain: the projection's row."""

    state: State
    expires_at: datetime | None
    updated_at: datetime


class ImpossibleEvent(IllegalTransition):
    """An event whose input the state machine refuses where the chain puts it: a ledger that could
    not have happened."""

    def __init__(self, event, error: IllegalTransition):
        super().__init__(error.state, error.input)
        self.event = event

    def __reduce__(self):
        return ImpossibleEvent, (self.event, IllegalTransition(self.state, self.input))


_INPUTS = {input.value: input for input in Input}
_MOVES: dict[tuple[State, str], State | IllegalTransition] = {}  # the machine's answers, learnt once each


def _move(state: State, input: str) -> State:
    """`transition` by the input's value, each (state, input) asked of the machine once: a replay
    makes one move per event, and there are only a few dozen distinct ones."""
    key = (state, input)
    after = _MOVES.get(key)
    if after is None:
        try:
            after = transition(state, _INPUTS[input])
        except IllegalTransition as error:
            after = error
        _MOVES[key] = after
    if isinstance(after, IllegalTransition):
        raise IllegalTransition(after.state, after.input)
    return after


def replay(events: Iterable) -> dict[int, Replayed]:
    """The consents one number's chain leads to, by program id: each event's input through the state
    machine, in chain order. `events` have program_id, input, expires_at and occurred_at (ORM rows or
    Core rows); events that change no state (HELP, the erasure marker) pass. Raises ImpossibleEvent.

    `smsgate ledger rebuild` writes the result as the consents; `verify` compares it with them.
    """
    last: dict[int, tuple] = {}  # program id -> (state, the event that made it)
    never = State()
    for event in events:
        program_id = event.program_id
        if program_id is None or event.input not in _INPUTS:
            continue
        before = last.get(program_id)
        try:
            state = _move(before[0] if before else never, event.input)
        except IllegalTransition as error:
            raise ImpossibleEvent(event, error) from None
        last[program_id] = (state, event)
    return {program_id: Replayed(state, event.expires_at, event.occurred_at)
            for program_id, (state, event) in last.items()}


def records_erasure(events: Iterable) -> bool:
    """Whether a chain records an erasure: only then may its events' evidence be redacted."""
    return any(event.type == "erasure" for event in events)


def evidence_changed(event, erased: bool) -> bool:
    """Whether an event's evidence is no longer what its digest covers (`erased`: its chain records
    an erasure, so a redacted evidence is allowed)."""
    return (not (erased and event.evidence.get("redacted") is True)
            and evidence_digest(event.evidence) != event.evidence_digest)


def check_chain(number, events: list, label: str) -> Break | None:
    """The first place where `events` (in insertion order) stop being the number's chain, or None."""
    previous = GENESIS_HASH
    erased = records_erasure(events)
    position = 0
    for event in events:
        position += 1
        problem = None
        if event.seq != position:
            problem = f"expected seq {position}: an event was removed or reordered"
        elif event.prev_hash != previous:
            problem = "does not follow the event before it: an event was removed or reordered"
        elif evidence_changed(event, erased):
            problem = "evidence was changed"
        elif event_hash(event) != event.hash:
            problem = "content was changed"
        if problem is not None:
            return Break(number.id, label, problem, event_id=event.id, seq=event.seq)
        previous = event.hash
    return check_head(number, events, label)


def check_head(number, events: list, label: str) -> Break | None:
    """Whether the number's head is the last of `events`, a chain whose every event is already known
    to follow the one before it: the last event cannot vanish unseen."""
    last = events[-1] if events else None
    if number.ledger_seq != len(events) or number.ledger_head != (last.hash if last else GENESIS_HASH):
        return Break(
            number.id, label,
            f"the chain ends at seq {len(events)} but the number's head says {number.ledger_seq}: events were removed",
            event_id=last.id if last else None, seq=last.seq if last else None,
        )
    return None


def check_against_checkpoint(number, events: list, label: str, head, signed: str) -> Break | None:
    """A chain must still hold the head a checkpoint signed: chains only ever grow."""
    if len(events) < head.seq:
        return Break(number.id, label, f"the chain ends at seq {len(events)} but the checkpoint of {signed} "
                                       f"signed seq {head.seq}: events were removed and the head moved back")
    event = events[head.seq - 1]
    if event.hash != head.hash:
        return Break(number.id, label, f"differs from the checkpoint of {signed}: the chain was rewritten",
                     event_id=event.id, seq=event.seq)
    return None


def check_projection(number, events: list, consents: dict, label: str, slugs: dict[int, str]) -> Iterator[Break]:
    """The consents the gate reads must be what the chain leads to."""
    try:
        replayed = replay(events)
    except ImpossibleEvent as error:
        yield Break(number.id, label, f"could not have happened: {error}", program=slugs.get(error.event.program_id),
                    event_id=error.event.id, seq=error.event.seq)
        return
    for program_id in sorted(set(replayed) | set(consents)):
        want, row = replayed.get(program_id), consents.get(program_id)
        status = want.state.status if want else None
        if status is None and row is None:
            continue
        at = dict(number_id=number.id, number=label, program=slugs.get(program_id, f"#{program_id}"))
        if row is None:
            yield Break(**at, problem=f"the ledger says {status.value} but there is no consent row")
        elif status is None:
            yield Break(**at, problem=f"the consent row says {row.status} but the ledger holds no consent")
        elif row.status != status.value:
            yield Break(**at, problem=f"the consent row says {row.status} but the ledger says {status.value}")
        elif row.restorable != want.state.restorable:
            yield Break(**at, problem=f"the consent row says restorable={row.restorable} but the ledger says "
                                      f"{want.state.restorable}")
        elif row.expires_at != want.expires_at:
            yield Break(**at, problem=f"the consent row expires at {_iso(row.expires_at)} but the ledger says "
                                      f"{_iso(want.expires_at)}")


def gone(head, signed: str) -> Break:
    """A chain a checkpoint signed that the store no longer holds."""
    return Break(head.number_id, f"number {head.number_id}",
                 f"has no chain any more, but the checkpoint of {signed} signed it at seq {head.seq}: "
                 "the whole chain was deleted")


class SignedHeads:
    """A checkpoint's heads, walked beside the store's numbers: both ascend by number id.

    `take(number_id)` gives the head signed for that number (or None) and the breaks for every
    signed number before it that the store no longer holds; `rest()` those after the last number.
    """

    def __init__(self, checkpoint=None, *, first: int | None = None, last: int | None = None):
        """`first`, `last`: only the heads of number ids in that range (a job's share of the check)."""
        heads = iter(()) if checkpoint is None else checkpoint.heads() if first is None else checkpoint.heads(first)
        if last is not None:
            heads = takewhile(lambda head: head.number_id <= last, heads)
        self._heads = heads
        self.signed_at = checkpoint.created_at if checkpoint is not None else ""
        self._next = next(self._heads, None)

    def take(self, number_id: int) -> tuple[object | None, list[Break]]:
        missing = []
        while self._next is not None and self._next.number_id < number_id:
            missing.append(gone(self._next, self.signed_at))
            self._next = next(self._heads, None)
        head = None
        if self._next is not None and self._next.number_id == number_id:
            head, self._next = self._next, next(self._heads, None)
        return head, missing

    def rest(self) -> list[Break]:
        missing = [gone(head, self.signed_at) for head in ([self._next] if self._next is not None else [])]
        missing += [gone(head, self.signed_at) for head in self._heads]
        self._next = None
        return missing

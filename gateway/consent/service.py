"""Consent service: the only writer of consents and ledger events.

Every change goes through `apply`, which runs the state machine, appends the ledger event with its
evidence and updates the projection in the caller's transaction.
"""

from __future__ import annotations

import hmac
import hashlib
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from gateway.consent import ledger
from gateway.consent.machine import EVENT_TYPES, IllegalTransition, Input, Source, State, Status, allowed
from gateway.consent.machine import apply as transition
from gateway.models import Consent, LedgerEvent, PhoneNumber, Program, Suppression, utcnow
from gateway.numbers import Number


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
    event: LedgerEvent


def number_row(session: Session, number: Number, *, lock: bool = True) -> PhoneNumber:
    """The row for `number`, created if new, locked for this transaction (serialises its chain)."""
    insert = pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert
    session.execute(
        insert(PhoneNumber)
        .values(e164=number.e164, kind=number.kind, region=number.region, reachability="ok", ledger_seq=0,
                ledger_head=ledger.GENESIS_HASH, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["e164"])
    )
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


def state_of(consent: Consent | None) -> State:
    if consent is None:
        return State()
    return State(Status(consent.status), consent.restorable)


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

    A caller that already read the consent row in this transaction, after locking the number, may
    pass it as `consent` (None: there is none) to save the query.
    """
    now = now or utcnow()
    if consent is LOOK_UP:
        consent = consent_row(session, number, program)
    before = state_of(consent)
    after = transition(before, input)
    if after.status is None:
        if consent is not None:
            session.delete(consent)
    else:
        if consent is None:
            consent = Consent(number_id=number.id, program_id=program.id)
            session.add(consent)
        consent.status = after.status.value
        consent.restorable = after.restorable
        consent.expires_at = expires_at if after.status is Status.PENDING else None
        consent.updated_at = now
    event = ledger.append(
        session,
        number,
        LedgerEvent(
            type=EVENT_TYPES[input],
            input=input.value,
            program_id=program.id,
            status_before=before.status.value if before.status else None,
            status_after=after.status.value if after.status else None,
            expires_at=expires_at if after.status is Status.PENDING else None,
            source=evidence.source.value,
            actor=evidence.actor,
            reference=evidence.reference,
            evidence=evidence.details,
            occurred_at=now,
        ),
    )
    return Change(program, before.status, after.status, event)


def record(
    session: Session,
    number: PhoneNumber,
    event_type: str,
    evidence: Evidence,
    *,
    program: Program | None = None,
    now: datetime | None = None,
) -> LedgerEvent:
    """Append an event that changes no state (a HELP request, an erasure marker)."""
    return ledger.append(
        session,
        number,
        LedgerEvent(
            type=event_type,
            input=event_type,
            program_id=program.id if program else None,
            source=evidence.source.value,
            actor=evidence.actor,
            reference=evidence.reference,
            evidence=evidence.details,
            occurred_at=now or utcnow(),
        ),
    )


def opt_out(
    session: Session,
    number: PhoneNumber,
    programs: list[Program],
    input: Input,
    evidence: Evidence,
    *,
    now: datetime | None = None,
    consents: dict[int, Consent | None] | None = None,
) -> list[Change]:
    """Opt the number out of every program given (an opt-out always applies).

    `consents` maps program ids to rows already read after the number's lock (None: no row); the
    programs it does not name are looked up.
    """
    consents = consents or {}
    return [apply(session, number, program, input, evidence, now=now, consent=consents.get(program.id, LOOK_UP))
            for program in programs]


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

    Replays each event's input through the state machine, so a ledger that could not have
    happened (an illegal sequence) raises IllegalTransition rather than being trusted.
    """
    session.execute(delete(Consent))
    states: dict[tuple[int, int], tuple[State, datetime | None, datetime]] = {}
    for event in session.scalars(select(LedgerEvent).order_by(LedgerEvent.number_id, LedgerEvent.seq)):
        if event.program_id is None or event.input not in Input.__members__.values():
            continue
        key = (event.number_id, event.program_id)
        state, _, _ = states.get(key, (State(), None, event.occurred_at))
        new_state = transition(state, Input(event.input))
        states[key] = (new_state, event.expires_at, event.occurred_at)
    count = 0
    for (number_id, program_id), (state, expires_at, at) in states.items():
        if state.status is None:
            continue
        session.add(
            Consent(number_id=number_id, program_id=program_id, status=state.status.value,
                    restorable=state.restorable, expires_at=expires_at, updated_at=at)
        )
        count += 1
    return count


__all__ = [
    "Change", "Evidence", "IllegalTransition", "allowed", "apply", "consents", "events", "find_number",
    "is_suppressed", "number_row", "opt_out", "rebuild", "record", "suppress", "suppression_digest",
    "suppression_digests",
]

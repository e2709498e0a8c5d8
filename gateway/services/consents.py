"""Consent service: every change of a consent and every ledger event is planned here.

`plan` runs the state machine over what a number holds and chains the ledger events with their
evidence; gateway/store/consents.py writes the plan as one guarded write. Inbound texts read without
a lock and plan from that (gateway/services/inbound.py); `apply` is the same plan and write for a
caller that holds the number's row lock in its transaction (API, expiry, erasure, imports).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.domain import ledger, suppression
from gateway.domain.consent import EVENT_TYPES, IllegalTransition, Input, Source, State, Status, allowed
from gateway.domain.consent import apply as transition
from gateway.store import consents as store
from gateway.store.database import Writes
from gateway.store.models import Consent, LedgerEvent, PhoneNumber, Program, Suppression, utcnow

if TYPE_CHECKING:
    from gateway.domain.quiet_hours import QuietHours, Rule


@dataclass(frozen=True)
class Evidence:
    """Who or what caused a consent event, and the proof of it."""

    source: Source
    actor: str | None = None  # the API key's name, "twilio", "system", a staff member…
    reference: str | None = None  # MessageSid, request id, message id
    details: dict = field(default_factory=dict)  # the exact text seen or sent, address, user agent…

    def with_details(self, **more: object) -> Evidence:
        """The same evidence with more details."""
        return Evidence(self.source, self.actor, self.reference, {**self.details, **more})


@dataclass(frozen=True)
class Change:
    program: Program | None
    before: Status | None
    after: Status | None
    event: ledger.Event


def state_of(consent) -> State:
    """The machine's state of a consent: a Consent row, any row with status and restorable, or None."""
    if consent is None:
        return State()
    return State(Status(consent.status), consent.restorable)


@dataclass(frozen=True)
class Plan:
    """A change worked out from what was read: the changes to report and the writes that make them.

    The writes are guarded by the head as read: on a number whose chain moved in between they write
    nothing (Writes.execute is False) and the caller reads again.
    """

    changes: list[Change]
    events: list[ledger.Event]
    moves: list[store.Move]
    writes: Writes


def plan(state: store.Held, programs: list[Program], input: Input, evidence: Evidence, *, now: datetime,
         expires_at: datetime | None = None) -> Plan:
    """Move (number, program) by `input` for each program; raise IllegalTransition for any (nothing planned)."""
    return plan_steps(state, [(program, input) for program in programs], evidence, now=now, expires_at=expires_at)


def plan_steps(state: store.Held, steps: list[tuple[Program, Input]], evidence: Evidence, *, now: datetime,
               expires_at: datetime | None = None, records: list[tuple[str, Program]] = ()) -> Plan:
    """`plan` with an input of its own for each program (one text can restore one program and confirm
    another), chained as one change; IllegalTransition for any plans nothing. `records`: events that
    change no state, chained after the moves in the same write (event type, program)."""
    programs = [program for program, _ in steps]
    befores, moves, drafts = [], [], []
    for program, input in steps:
        row = state.consents.get(program.id)
        before = state_of(row)
        after = transition(before, input)
        until = expires_at if after.status is Status.PENDING else None
        befores.append(before.status)
        moves.append(store.Move(program.id, None if row is None else row.id, after, until))
        drafts.append(_draft(EVENT_TYPES[input], input.value, program.id, before.status, after.status, until,
                             evidence, now))
    drafts += [_draft(event_type, event_type, program.id, None, None, None, evidence, now)
               for event_type, program in records]
    events, writes = _chained(state, drafts, moves, now)
    changes = [Change(program, before, move.after.status, event)
               for program, before, move, event in zip(programs, befores, moves, events)]
    return Plan(changes, events, moves, writes)


def plan_record(state: store.Held, event_type: str, evidence: Evidence, *, now: datetime,
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
    state = store.held_locked(session, number, [program.id for program in programs], consents)
    planned = plan(state, programs, input, evidence, now=now or utcnow(), expires_at=expires_at)
    store.write_locked(session, number, planned.writes, planned.events, planned.moves)
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
    state = store.Held(number.id, number.ledger_seq, number.ledger_head, {})
    planned = plan_record(state, event_type, evidence, now=now or utcnow(), program=program)
    store.write_locked(session, number, planned.writes, planned.events, planned.moves)
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


def _draft(event_type: str, input: str, program_id: int | None, before: Status | None, after: Status | None,
           expires_at: datetime | None, evidence: Evidence, now: datetime) -> dict:
    return {
        "type": event_type, "input": input, "program_id": program_id,
        "status_before": before.value if before else None, "status_after": after.value if after else None,
        "expires_at": expires_at, "source": evidence.source.value, "actor": evidence.actor,
        "reference": evidence.reference, "evidence": evidence.details, "occurred_at": now,
    }


def _chained(state: store.Held, drafts: list[dict], moves: list[store.Move],
             now: datetime) -> tuple[list[ledger.Event], Writes]:
    """The events chained after the head as read, and the writes that make them and the moves."""
    events = ledger.chain(state.number_id, state.seq, state.head, drafts)
    return events, store.writes_for(state, events, moves, now)


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
    return suppression.digester(key)(e164)


def suppression_digests(key: bytes, e164s: list[str]) -> list[str]:
    """`suppression_digest` of many numbers, the key's pads hashed once for all of them."""
    return list(map(suppression.digester(key), e164s))


def suppress(session: Session, key: bytes, e164: str, reason: str) -> None:
    digest = suppression_digest(key, e164)
    if session.get(Suppression, digest) is None:
        session.add(Suppression(digest=digest, reason=reason))


def is_suppressed(session: Session, key: bytes, e164: str) -> bool:
    return session.get(Suppression, suppression_digest(key, e164)) is not None


__all__ = [
    "Change", "Evidence", "IllegalTransition", "Plan", "allowed", "apply", "apply_many", "consents", "events",
    "is_suppressed", "opt_out", "plan", "plan_record", "plan_steps", "record", "suppress", "suppression_digest",
    "suppression_digests",
]


STOP_BINDING = "stop_binding"  # the stable code of a refusal under a STOP that binds for years


@dataclass(frozen=True)
class StopBinding:
    """A STOP that still binds under a state rule (Virginia: 10 years): no import or API call may lift it."""

    rule: Rule
    stopped_at: datetime
    until: datetime

    @property
    def message(self) -> str:
        return (f"this number opted out on {self.stopped_at:%Y-%m-%d}, and under {self.rule.law} "
                f"({self.rule.citation}) an opt-out binds for {self.rule.stop_binds_years} years, until "
                f"{self.until:%Y-%m-%d}: only the person's own text (START, YES or a join keyword) can lift it")


def stop_binding(session: Session, rules: QuietHours, number: PhoneNumber, now: datetime) -> StopBinding | None:
    """The STOP that binds `number` at `now` under the rules in force for it, if one does.

    The ledger is read only for numbers a rule binds (a Virginia or Washington area code).
    """
    if not number.e164 or number.id is None:
        return None
    rule = rules.stop_binding(number.e164, now)
    if rule is None:
        return None
    stopped_at = store.standing_stop(session, number.id)
    if stopped_at is None:
        return None
    until = rule.binds_until(stopped_at)
    return StopBinding(rule, stopped_at, until) if now < until else None

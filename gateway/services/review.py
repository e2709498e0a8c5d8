"""The review list: replies that may be revocations ("no thanks", "not interested"), kept by a program
with `ambiguous_replies = "review"`, listed for staff, who resolve each one as an opt-out or as not a
revocation (docs/decisions/0029-review-list.md).

`pending` lists what awaits review; `resolve` records a decision. An opt-out goes through the one
consent write path (services/consents.apply, input `review_opt_out`), which also blocks the number's
queued and deferred messages of the program as every opt-out does; "not a revocation" is a ledger event
that changes no state. Both name the review event they resolve and who decided. What already settled a
reply (a decision, or a later STOP, START or erasure: gateway/domain/review.py) is checked under the
number's row lock, so two decisions on one reply cannot both be written. No text goes to the person:
the reply may be hours old, and a confirmation long after the "no" reads as one more marketing text.

`smsgate review list|resolve` (gateway/cli.py) and the console's "Replies to review" page
(gateway/web/console.py, through services/console.py, which logs every look and decision) call these.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from gateway import logs, metrics
from gateway.domain import storable
from gateway.domain.consent import EVENT_TYPES, Input, Source
from gateway.domain.numbers import mask
from gateway.domain.review import (
    MAX_NAME,
    MAX_NOTE,
    NOT_REVOCATION_EVENT,
    REVIEW_EVENT,
    Resolution,
    reference,
    resolution_evidence,
    why_settled,
)
from gateway.services import consents
from gateway.services.ports import Gateway
from gateway.store import console as store_console
from gateway.store import programs
from gateway.store import review as store
from gateway.store.models import utcnow

log = logging.getLogger(__name__)

MAX_PAGE = 200  # replies on one page of the list


class ReviewError(ValueError):
    """A list or decision refused, with a stable `code` and words for staff; nothing was changed."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Item:
    """One reply awaiting review, as the list shows it (the number masked)."""

    event_id: int
    number_id: int
    number: str  # masked: +1415***2671
    program: str  # slug
    program_name: str
    text: str
    language: str | None
    received_at: datetime
    consent: str | None  # the program's consent status now; None: none held


@dataclass(frozen=True)
class Page:
    items: list[Item]
    older: int | None  # pass as `before` for the next page; None: this is the last


def pending(session: Session, *, program: str | None = None, limit: int = 50, before: int | None = None) -> Page:
    """Replies awaiting review, newest first; of one program (its slug) if given. ReviewError for an
    unknown program, or a limit outside 1..MAX_PAGE."""
    if not 1 <= limit <= MAX_PAGE:
        raise ReviewError("bad_limit", f"the limit must be 1 to {MAX_PAGE}, not {limit}")
    program_id = None
    if program is not None:
        found = programs.by_slug(session, program)
        if found is None:
            known = ", ".join(sorted(row.slug for row in programs.all_programs(session))) or "none"
            raise ReviewError("unknown_program", f"there is no program {program!r} (known: {known})")
        program_id = found.id
    rows = store.pending(session, program_id=program_id, limit=limit + 1, before=before)
    items = [Item(row.event_id, row.number_id, mask(row.e164), row.program_slug, row.program_name,
                  row.evidence.get("body", ""), row.evidence.get("language"), row.occurred_at, row.consent)
             for row in rows[:limit]]
    return Page(items, items[-1].event_id if len(rows) > limit else None)


def awaiting(session: Session, number_id: int) -> set[int]:
    """The ids of one number's review events that await review (the console marks them on its timeline)."""
    return {row.event_id for row in store.pending(session, number_id=number_id)}


@dataclass(frozen=True)
class Resolved:
    """A decision recorded: the review event, the event that resolved it and what it did."""

    review_event_id: int
    number_id: int
    number: str  # masked
    program: str  # slug
    decision: Resolution
    seq: int  # of the resolving event in the number's chain
    status_after: str | None  # the program's consent after an opt-out; None: unchanged


def decision_of(value: str) -> Resolution:
    """`--as` / the console's button as a Resolution; ReviewError otherwise."""
    try:
        return Resolution(value)
    except ValueError:
        choices = " or ".join(repr(each.value) for each in Resolution)
        raise ReviewError("bad_decision", f"a reply is resolved as {choices}, not {value!r}") from None


def resolve(gateway: Gateway, event_id: int, decision: Resolution | str, *, by: str, via: str,
            note: str | None = None, audit: Callable[[Session, Resolved], None] | None = None,
            now: datetime | None = None) -> Resolved:
    """Resolve review event `event_id` as `decision`, recorded as decided by `by` (a staff member's
    name) through `via` ("console" or "cli"), with an optional note. `audit(session, resolved)` runs in
    the same transaction (the console's access log). ReviewError, and nothing changed, for an unknown
    event, an event that is no review, one already settled, or a bad decision, name or note."""
    decision = decision if isinstance(decision, Resolution) else decision_of(decision)
    actor = f"{via}:{_name(by)}"
    note = _note(note)
    with gateway.db.transaction() as session:
        resolved = _resolve(session, event_id, decision, actor=actor, via=via, note=note, now=now or utcnow())
        if audit is not None:
            audit(session, resolved)
    event_type = EVENT_TYPES[Input.REVIEW_OPT_OUT] if decision is Resolution.OPT_OUT else NOT_REVOCATION_EVENT
    metrics.CONSENT_EVENTS.labels(type=event_type, source=Source.SYSTEM.value).inc()
    # `number` is masked already: the log never sees more of it than the list shows.
    logs.event(log, event_type, review_event=event_id, number=resolved.number, program=resolved.program,
               source="review", actor=actor)
    return resolved


def _resolve(session: Session, event_id: int, decision: Resolution, *, actor: str, via: str, note: str | None,
             now: datetime) -> Resolved:
    review = store.event(session, event_id)
    if review is None:
        raise ReviewError("unknown_event", f"there is no ledger event {event_id}")
    if review.type != REVIEW_EVENT:
        raise ReviewError("not_a_review", f"event {event_id} is a {review.type!r} event, not a reply kept for "
                                          "review (`smsgate review list` shows those)")
    number = store_console.number_by_id(session, review.number_id, lock=True)
    settled = store.settled_by(session, review.id)  # under the number's lock: nothing can slip in after it
    if settled is not None:
        raise ReviewError("settled", why_settled(review.id, settled))
    evidence = consents.Evidence(Source.SYSTEM, actor=actor, reference=reference(review.id),
                                 details=resolution_evidence(review, decision, via=via, note=note))
    program, masked = review.program, mask(number.e164)
    if decision is Resolution.OPT_OUT:
        change = consents.apply(session, number, program, Input.REVIEW_OPT_OUT, evidence, now=now)
        return Resolved(review.id, number.id, masked, program.slug, decision, change.event.seq, change.after.value)
    event = consents.record(session, number, NOT_REVOCATION_EVENT, evidence, program=program, now=now)
    return Resolved(review.id, number.id, masked, program.slug, decision, event.seq, None)


def _name(by: str) -> str:
    """The name a decision is recorded under: who decided, as given (the console: the account's name)."""
    name = (by or "").strip()
    if not name or len(name) > MAX_NAME or storable.unstorable_reason(name) or not name.isprintable():
        raise ReviewError("bad_name", f"say who decided: a name of 1 to {MAX_NAME} printable characters")
    return name


def _note(note: str | None) -> str | None:
    note = (note or "").strip()
    if len(note) > MAX_NOTE or storable.unstorable_reason(note):
        raise ReviewError("bad_note", f"a note is at most {MAX_NOTE} characters of text (no NUL)")
    return note or None

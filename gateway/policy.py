"""The one send gate: `may_send` decides whether a text may go out now, and says why not.

Every path asks it: the API when it accepts a message, the worker right before the provider call,
the confirmation sender. The decision itself (`decide`) is pure; `may_send` loads the facts for one
number, `load_facts` for many at once (the batch API), so both paths apply the same rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import phonenumbers
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.consent.machine import Status
from gateway.consent.service import suppression_digest
from gateway.models import Consent, OutboundMessage, PhoneNumber, Program, Suppression
from gateway.quiet_hours import QuietHours


class Kind(StrEnum):
    MARKETING = "marketing"
    INFORMATIONAL = "informational"
    TRANSACTIONAL = "transactional"
    CONFIRMATION = "confirmation"  # the double opt-in question itself


class Reason(StrEnum):
    NO_CONSENT = "no_consent"
    PENDING_CONFIRMATION = "pending_confirmation"
    OPTED_OUT = "opted_out"
    SUPPRESSED = "suppressed"
    NO_PENDING_REQUEST = "no_pending_request"  # a confirmation text with nothing to confirm
    UNREACHABLE = "unreachable"  # delivery failed as unknown / out of service
    LANDLINE = "landline"  # delivery failed as a landline
    COUNTRY_NOT_ALLOWED = "country_not_allowed"
    FREQUENCY_CAP = "frequency_cap"
    QUIET_HOURS = "quiet_hours"  # not a refusal: the message waits until `not_before`


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: Reason | None = None
    not_before: datetime | None = None

    @property
    def deferred(self) -> bool:
        return self.reason is Reason.QUIET_HOURS


ALLOW = Decision(True)

# Messages that count against frequency caps: everything not refused.
_COUNTED = ("queued", "deferred", "sending", "sent", "delivered", "undelivered")


@dataclass(frozen=True)
class Facts:
    """What the gate needs to know about one number for one program."""

    e164: str
    reachability: str = "ok"
    status: str | None = None
    expires_at: datetime | None = None
    suppressed: bool = False
    sent_last_day: int = 0  # marketing messages to this number in the last 24 h, all programs
    sent_last_day_program: int = 0  # ... of this program


def decide(facts: Facts, program: Program, kind: Kind, now: datetime, rules: QuietHours) -> Decision:
    """The rules, in order: hard blocks first, consent next, then caps, then the clock."""
    if facts.suppressed:
        return Decision(False, Reason.SUPPRESSED)
    if facts.status == Status.OPTED_OUT:
        return Decision(False, Reason.OPTED_OUT)
    if facts.reachability == "landline":
        return Decision(False, Reason.LANDLINE)
    if facts.reachability == "unreachable":
        return Decision(False, Reason.UNREACHABLE)
    allowed_countries = program.settings.get("spec", {}).get("allowed_countries") or []
    region = phonenumbers.region_code_for_number(phonenumbers.parse(facts.e164))
    if allowed_countries and region not in allowed_countries:
        return Decision(False, Reason.COUNTRY_NOT_ALLOWED)

    if kind is Kind.CONFIRMATION:
        live = facts.status == Status.PENDING and facts.expires_at is not None and facts.expires_at > now
        return ALLOW if live else Decision(False, Reason.NO_PENDING_REQUEST)
    if facts.status == Status.PENDING:
        return Decision(False, Reason.PENDING_CONFIRMATION)
    if facts.status != Status.OPTED_IN:
        return Decision(False, Reason.NO_CONSENT)

    if kind is Kind.MARKETING:
        program_cap = program.settings.get("spec", {}).get("daily_cap")
        state_cap = rules.daily_cap(facts.e164)
        if (program_cap and facts.sent_last_day_program >= program_cap) or (
            state_cap and facts.sent_last_day >= state_cap
        ):
            return Decision(False, Reason.FREQUENCY_CAP)
        not_before = rules.next_allowed(facts.e164, now)
        if not_before is not None:
            return Decision(False, Reason.QUIET_HOURS, not_before)
    return ALLOW


def load_facts(
    session: Session,
    numbers: Iterable[PhoneNumber],
    program: Program,
    suppression_key: bytes,
    now: datetime,
    *,
    count_recent: bool = True,
    exclude_message: str | None = None,
) -> dict[int, Facts]:
    """Facts for many numbers in a few queries (never one query per number)."""
    rows = {n.id: n for n in numbers}
    if not rows:
        return {}
    ids = list(rows)
    consents = {
        number_id: (status, expires_at)
        for number_id, status, expires_at in session.execute(
            select(Consent.number_id, Consent.status, Consent.expires_at).where(
                Consent.program_id == program.id, Consent.number_id.in_(ids)
            )
        )
    }
    digests = {suppression_digest(suppression_key, n.e164): n.id for n in rows.values() if n.e164}
    suppressed = {
        digests[d] for d in session.scalars(select(Suppression.digest).where(Suppression.digest.in_(list(digests))))
    }
    recent: dict[int, int] = {}
    recent_program: dict[int, int] = {}
    if count_recent:
        since = now - timedelta(hours=24)
        query = (
            select(OutboundMessage.number_id, OutboundMessage.program_id, func.count())
            .where(
                OutboundMessage.number_id.in_(ids),
                OutboundMessage.kind == Kind.MARKETING.value,
                OutboundMessage.status.in_(_COUNTED),
                OutboundMessage.created_at > since,
            )
            .group_by(OutboundMessage.number_id, OutboundMessage.program_id)
        )
        if exclude_message:
            query = query.where(OutboundMessage.id != exclude_message)
        for number_id, program_id, count in session.execute(query):
            recent[number_id] = recent.get(number_id, 0) + count
            if program_id == program.id:
                recent_program[number_id] = count
    return {
        number_id: Facts(
            e164=number.e164 or "",
            reachability=number.reachability,
            status=consents.get(number_id, (None, None))[0],
            expires_at=consents.get(number_id, (None, None))[1],
            suppressed=number_id in suppressed,
            sent_last_day=recent.get(number_id, 0),
            sent_last_day_program=recent_program.get(number_id, 0),
        )
        for number_id, number in rows.items()
    }


def may_send(
    session: Session,
    number: PhoneNumber,
    program: Program,
    kind: Kind,
    now: datetime,
    *,
    suppression_key: bytes,
    rules: QuietHours,
    message_id: str | None = None,
) -> Decision:
    """May `program` text `number` now? Reads the store; if it cannot, the error propagates (fail closed)."""
    if not number.e164:
        return Decision(False, Reason.SUPPRESSED)  # erased: only its suppression hash is left
    facts = load_facts(session, [number], program, suppression_key, now,
                       count_recent=kind is Kind.MARKETING, exclude_message=message_id)[number.id]
    return decide(facts, program, kind, now, rules)

"""Double opt-in requests from the API and the hosted form, and the consent text the form shows.

Requests made anywhere but the handset always need the person's YES, whatever the program says:
only a text from the phone proves that its holder asked (CTIA). The rules of a request and of a YES
are gateway/domain/subscriptions.py; join keywords and YES arrive as texts (gateway/services/inbound.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from gateway import metrics
from gateway.domain.consent import IllegalTransition, Input, Status
from gateway.domain.decisions import Stage
from gateway.domain.gate import Kind, Reason
from gateway.domain.numbers import Number
from gateway.domain.programs import RATES, ProgramSpec, spec_of
from gateway.domain.quiet_hours import QuietHours
from gateway.domain.subscriptions import plan_start
from gateway.services import abuse, consents, policy
from gateway.store import consents as store_consents
from gateway.store import outbox, programs
from gateway.store.models import OutboundMessage, PhoneNumber, Program

# The gate's refusals of a confirmation text, as the stable codes a requester gets back (the codes
# sends get). A suppressed number (erased after opting out) is never texted again, whatever is asked.
REFUSAL_CODES: dict[Reason, str] = {
    Reason.OPTED_OUT: "opted_out",
    Reason.SUPPRESSED: "suppressed",
    Reason.LANDLINE: "not_mobile",
    Reason.UNREACHABLE: "invalid_number",
    Reason.COUNTRY_NOT_ALLOWED: "country_not_allowed",
}


@dataclass(frozen=True)
class Started:
    # pending; opted_in when it already was (or the program confirms joins at once); or, when
    # `refused` is set, the unchanged status (nothing was recorded).
    status: Status | None
    expires_at: datetime | None
    confirmation: OutboundMessage | None  # enqueue its id after commit
    refused: Reason | None = None  # why no confirmation text could go out


STOP_BINDING = consents.STOP_BINDING  # a refusal code, with the others the views answer with


class Refused(Exception):
    """A web or API request that cannot start a double opt-in. `code` is stable; roll back."""

    def __init__(self, code: str, message: str, **extra):
        super().__init__(message)
        self.code, self.message, self.extra = code, message, extra


def start(
    session: Session,
    *,
    number: PhoneNumber,
    program: Program,
    input: Input,
    evidence: consents.Evidence,
    now: datetime,
    ttl: timedelta,
    suppression_key: bytes,
    rules: QuietHours,
    guard: abuse.Guard | None = None,
) -> Started:
    """Record the request and queue the confirmation text; raise IllegalTransition if opted out.

    If the gate would refuse the confirmation text (suppressed, landline, unreachable, country),
    nothing is recorded and `refused` says why. `guard` takes its slots only once the text is queued
    and the store has taken every write, so a request that sends nothing, or fails, takes none; it
    raises abuse.RateLimited, and the caller's rollback then undoes the writes.
    """
    current = consents.state_of(store_consents.consent_row(session, number, program))
    step = plan_start(current, input, double_opt_in=program.double_opt_in)
    if step is None:
        # Never downgrade or re-text a confirmed number: a repeat request changes nothing.
        return Started(Status.OPTED_IN, None, None)
    if step is Input.KEYWORD_JOIN_DIRECT:
        consents.apply(session, number, program, step, evidence, now=now)
        return Started(Status.OPTED_IN, None, None)
    expires_at = now + ttl
    # Ask the one gate about the state this request would create, before creating it.
    gate = policy.Gate(suppression_key, rules)
    facts = gate.facts(session, [number], program, now, count_recent=False)[number.id]
    would = gate.decide(replace(facts, status=Status.PENDING.value, expires_at=expires_at), program,
                        Kind.CONFIRMATION, now)
    if not would.allowed:
        return Started(current.status, None, None, would.reason)
    text = spec_of(program).text("confirmation")
    details = {**evidence.details, "confirmation_text": text, "program_version": program.version}
    consents.apply(session, number, program, input,
                  consents.Evidence(evidence.source, evidence.actor, evidence.reference, details),
                  now=now, expires_at=expires_at)
    decision = gate.may_send(session, number, program, Kind.CONFIRMATION, now, stage=Stage.CONFIRMATION)
    if not decision.allowed:
        return Started(Status.PENDING, expires_at, None, decision.reason)
    message = outbox.accept(session, number=number, program=program, kind=Kind.CONFIRMATION, body=text,
                            decision=decision, now=now, api_key_id=None)
    if guard is not None:
        session.flush()  # a value the store refuses fails here, before any slot is taken
        guard.take(number=number.e164, program=program.slug)
    return Started(Status.PENDING, expires_at, message)


def request(
    session: Session,
    *,
    number: Number,
    program_slug: str,
    input: Input,
    evidence: consents.Evidence,
    now: datetime,
    ttl: timedelta,
    suppression_key: bytes,
    rules: QuietHours,
    guard: abuse.Guard | None,
) -> tuple[Program, Started]:
    """A request from the hosted form or the API: start double opt-in or raise Refused/RateLimited.

    On an exception the caller's transaction must roll back (db.transaction() does), so a refused
    or rate-limited request leaves nothing in the store.
    """
    if input not in (Input.API_REQUEST, Input.WEB_REQUEST):
        raise ValueError(f"{input} is not a web or API request")
    program = programs.by_slug(session, program_slug)
    if program is None:
        raise Refused("unknown_program", f"there is no program {program_slug!r}")
    if not number.textable:
        raise Refused("not_mobile", f"this number cannot receive text messages ({number.kind.replace('_', ' ')})")
    if number.e164 in programs.own_numbers(session):
        _count(evidence, "own_sender")
        raise Refused("own_sender", "this is one of our own sender numbers: it cannot be subscribed to a program")
    if consents.is_suppressed(session, suppression_key, number.e164):
        # Before anything else about the number: whatever its consents say now (an import or a
        # single opt-in after the erasure), a suppressed number is never asked again.
        _count(evidence, "suppressed")
        raise _suppressed()
    row = store_consents.number_row(session, number)
    binding = consents.stop_binding(session, rules, row, now)
    if binding is not None:
        # A confirmation text is not the person's own opt-in: a STOP that binds for years stands.
        _count(evidence, consents.STOP_BINDING)
        raise Refused(consents.STOP_BINDING, binding.message, rule=binding.rule.cited,
                      binds_until=binding.until.isoformat().replace("+00:00", "Z"))
    try:
        started = start(session, number=row, program=program, input=input, evidence=evidence, now=now, ttl=ttl,
                        suppression_key=suppression_key, rules=rules, guard=guard)
    except IllegalTransition:
        _count(evidence, "opted_out")
        raise _opted_out(program) from None
    except abuse.RateLimited:
        _count(evidence, "rate_limited")
        raise
    if started.refused is not None:
        code = REFUSAL_CODES.get(started.refused, started.refused.value)
        _count(evidence, code)
        if code == "opted_out":
            raise _opted_out(program)
        if code == "suppressed":
            raise _suppressed()
        raise _refusal(code, program)
    _count(evidence, started.status.value)
    return program, started


def _count(evidence: consents.Evidence, outcome: str) -> None:
    metrics.SUBSCRIPTION_REQUESTS.labels(source=evidence.source.value, outcome=outcome).inc()


def _opted_out(program: Program) -> Refused:
    # START first: after a STOP, Twilio itself blocks the sender until START (or UNSTOP/YES), so
    # a join keyword alone would get a confirmation text that Twilio refuses (21610).
    spec = spec_of(program)
    to = f" to {program.sender}" if program.sender else ""
    how = f"text START{to} themselves, which lifts the block and restores a subscription they had confirmed"
    if spec.join_keywords:
        how += f"; then {spec.join_keywords[0]} to ask to join again"
    return Refused("opted_out",
                   f"this number opted out of {program.name} and will not be texted again until the person "
                   f"holding it asks: they must {how}",
                   rejoin_keywords=["START", *spec.join_keywords], sender=program.sender)


def _suppressed() -> Refused:
    return Refused("suppressed", "this number opted out and its data was then erased at the person's request: "
                                 "it is kept on the suppression list and is never texted again")


def _refusal(code: str, program: Program) -> Refused:
    if code == "country_not_allowed":
        countries = list(spec_of(program).allowed_countries)
        return Refused(code, f"{program.name} only texts numbers in {', '.join(countries)}",
                       allowed_countries=countries)
    if code == "not_mobile":
        return Refused(code, "this number cannot receive text messages (it was reported as a landline)")
    if code == "invalid_number":
        return Refused(code, "this number could not be reached by text before (reported as unknown or out of service)")
    return Refused(code, f"no confirmation text can be sent to this number now ({code.replace('_', ' ')})")


# What a person is shown before they tick the box, by program category.
_WHAT = {
    "marketing": "recurring automated marketing text messages (offers and promotions)",
    "informational": "recurring automated informational text messages",
    "transactional": "automated text messages about your account and orders",
}


@dataclass(frozen=True)
class Disclosure:
    """The hosted form's consent text, as (sentence, link or None) parts shown in order, and the
    label of the checkbox the person ticks."""

    parts: tuple[tuple[str, str | None], ...]
    label: str

    @property
    def text(self) -> str:
        """Exactly the words on the page: what the ledger records."""
        return " ".join(part for part, _ in self.parts)

    @property
    def version(self) -> str:
        """SHA-256 of the text and the label, one line each: any change of wording is a new version."""
        return hashlib.sha256(f"{self.text}\n{self.label}".encode()).hexdigest()


def disclosure(spec: ProgramSpec) -> Disclosure:
    """Who, what, how often, rates, STOP/HELP, links, and that consent is not a condition of purchase."""
    what = _WHAT[spec.category]
    parts: list[tuple[str, str | None]] = [
        (f"By ticking the box and submitting this form, you agree to receive {what} from {spec.name} "
         "at the phone number provided.", None),
        (spec.frequency.rstrip(".") + ".", None),
        (RATES + ".", None),
        ("Reply STOP to cancel at any time, HELP for help.", None),
        ("Consent is not a condition of purchase.", None),
        ("We will text you once to ask you to reply YES: you are not subscribed until you do.", None),
    ]
    if spec.terms_url:
        parts.append((f"Terms: {spec.terms_url}", spec.terms_url))
    if spec.privacy_url:
        parts.append((f"Privacy: {spec.privacy_url}", spec.privacy_url))
    return Disclosure(tuple(parts), f"Yes, I agree to receive text messages from {spec.name} as described above.")

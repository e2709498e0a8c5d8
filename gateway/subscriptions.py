"""Double opt-in: start a request (API, hosted form, join keyword) and confirm it with YES.

Requests made anywhere but the handset always need the person's YES, whatever the program says:
only a text from the phone proves that its holder asked (CTIA). `double_opt_in = false` lets a
join keyword texted from the handset confirm at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway import outbox, policy, programs
from gateway.consent import service
from gateway.consent.machine import IllegalTransition, Input, Status
from gateway.models import Consent, OutboundMessage, PhoneNumber, Program
from gateway.quiet_hours import QuietHours

REQUEST_INPUTS = (Input.API_REQUEST, Input.WEB_REQUEST, Input.KEYWORD_JOIN)


@dataclass(frozen=True)
class Started:
    status: Status  # pending, or opted_in when it already was (or the program confirms joins at once)
    expires_at: datetime | None
    confirmation: OutboundMessage | None  # enqueue its id after commit
    refused: policy.Reason | None = None  # why no confirmation text could go out


def start(
    session: Session,
    *,
    number: PhoneNumber,
    program: Program,
    input: Input,
    evidence: service.Evidence,
    now: datetime,
    ttl: timedelta,
    suppression_key: bytes,
    rules: QuietHours,
) -> Started:
    """Record the request and queue the confirmation text; raise IllegalTransition if opted out."""
    if input not in REQUEST_INPUTS:
        raise ValueError(f"{input} does not start a subscription")
    current = service.state_of(service.consent_row(session, number, program))
    if current.status is Status.OPTED_IN:
        # Never downgrade or re-text a confirmed number: a repeat request changes nothing.
        return Started(Status.OPTED_IN, None, None)
    spec = programs.spec_of(program)
    if input is Input.KEYWORD_JOIN and not program.double_opt_in:
        service.apply(session, number, program, Input.KEYWORD_JOIN_DIRECT, evidence, now=now)
        return Started(Status.OPTED_IN, None, None)
    if not service.allowed(current, input):
        raise IllegalTransition(current.status, input)
    text = spec.text("confirmation")
    details = {**evidence.details, "confirmation_text": text, "program_version": program.version}
    expires_at = now + ttl
    service.apply(session, number, program, input,
                  service.Evidence(evidence.source, evidence.actor, evidence.reference, details),
                  now=now, expires_at=expires_at)
    decision = policy.may_send(session, number, program, policy.Kind.CONFIRMATION, now,
                               suppression_key=suppression_key, rules=rules)
    if not decision.allowed:
        return Started(Status.PENDING, expires_at, None, decision.reason)
    message = outbox.accept(session, number=number, program=program, kind=policy.Kind.CONFIRMATION, body=text,
                            decision=decision, now=now, api_key_id=None)
    return Started(Status.PENDING, expires_at, message)


def confirm(
    session: Session, *, number: PhoneNumber, sender: str, evidence: service.Evidence, now: datetime
) -> list[service.Change]:
    """YES from `number` to `sender`: confirm its live pending requests on that sender's programs."""
    on_sender = {p.id: p for p in programs.on_sender(session, sender)}
    if not on_sender:
        return []
    pending = session.scalars(
        select(Consent).where(
            Consent.number_id == number.id,
            Consent.program_id.in_(list(on_sender)),
            Consent.status == Status.PENDING.value,
            Consent.expires_at > now,
        )
    ).all()
    return [
        service.apply(session, number, on_sender[c.program_id], Input.CONFIRM_YES, evidence, now=now)
        for c in pending
    ]

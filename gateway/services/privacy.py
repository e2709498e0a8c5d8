"""What the store holds about a person: export it, erase it (imports: services/imports.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, selectinload

from gateway.domain import ledger
from gateway.domain.consent import Input, Status
from gateway.services import consents
from gateway.store import outbox
from gateway.store.models import InboundMessage, LedgerEvent, OutboundMessage, PhoneNumber, utcnow

ERASED_BODY = "[erased]"


def export(session: Session, number: PhoneNumber) -> dict:
    """Everything held about one number, ready to hand to the person (GDPR Art. 15)."""
    inbound = session.scalars(
        select(InboundMessage).where(InboundMessage.number_id == number.id).order_by(InboundMessage.id)
    ).all()
    outbound = session.scalars(
        select(OutboundMessage).where(OutboundMessage.number_id == number.id).order_by(OutboundMessage.created_at)
        .options(selectinload(OutboundMessage.events))
    ).all()
    return {
        "phone": number.e164,
        "number": {"kind": number.kind, "reachability": number.reachability,
                   "created_at": number.created_at.isoformat(),
                   # What the last carrier look-up said (each answer is also among the events).
                   "line_type": number.line_type, "carrier": number.carrier,
                   "line_checked_at": number.line_checked_at.isoformat() if number.line_checked_at else None},
        "consents": [
            {"program": c.program.slug, "status": c.status, "updated_at": c.updated_at.isoformat(),
             "expires_at": c.expires_at.isoformat() if c.expires_at else None}
            for c in consents.consents(session, number)
        ],
        "events": [event_json(e) for e in consents.events(session, number)],
        "inbound_messages": [
            {"message_sid": m.message_sid, "to": m.to_number, "body": m.body, "intent": m.intent,
             "reply": m.reply, "received_at": m.received_at.isoformat()}
            for m in inbound
        ],
        "outbound_messages": [
            {"id": m.id, "program": m.program.slug, "kind": m.kind, "from": m.sender, "body": m.body,
             "status": m.status, "reason": m.reason, "created_at": m.created_at.isoformat(),
             # Each step, with the gate's whole record where the step was its decision (docs/compliance.md).
             "history": [{"status": step.status, "reason": step.reason, "error_code": step.error_code,
                          "at": step.at.isoformat(), "rule": step.rule, "decision": step.decision}
                         for step in outbox.history(m)]}
            for m in outbound
        ],
    }


def event_json(event: LedgerEvent) -> dict:
    """An event as exports show it: every field its hash covers, exactly as hashed (so a proof can be
    recomputed from an export, docs/proofs.md), its evidence, its hash and its program's slug."""
    return {**ledger.hashed_content(event), "evidence": event.evidence, "hash": event.hash,
            "program": event.program.slug if event.program else None}


@dataclass(frozen=True)
class Erasure:
    suppressed: bool
    consents_erased: int


def erase(session: Session, number: PhoneNumber, key: bytes, evidence: consents.Evidence,
          now: datetime | None = None) -> Erasure:
    """Erase personal data about `number`; keep a keyed suppression hash if it ever opted out.

    The ledger keeps its events (type, time, program, hashes) so the chain still verifies and the
    history of consent stays provable, but their evidence is redacted: the chain covers the
    evidence's digest, not the evidence itself (docs/decisions/0002-ledger-chain.md).
    """
    now = now or utcnow()
    e164 = number.e164
    opted_out = any(c.status == Status.OPTED_OUT for c in consents.consents(session, number)) or any(
        e.status_after == Status.OPTED_OUT for e in consents.events(session, number)
    )
    if opted_out and e164:
        # The person said no: erasing them must never make them textable again (ICO, Art. 21(3)).
        consents.suppress(session, key, e164, "opted_out_then_erased")
    erased = 0
    for consent in consents.consents(session, number):
        consents.apply(session, number, consent.program, Input.ERASE, evidence, now=now)
        erased += 1
    consents.record(session, number, "erasure", evidence, now=now)
    session.execute(update(LedgerEvent).where(LedgerEvent.number_id == number.id, LedgerEvent.type != "erasure")
                    .values(evidence={"redacted": True}))
    session.execute(update(InboundMessage).where(InboundMessage.number_id == number.id)
                    .values(body=ERASED_BODY, reply=None))
    session.execute(update(OutboundMessage).where(OutboundMessage.number_id == number.id)
                    .values(body=ERASED_BODY))
    number.e164 = None
    number.line_type = number.carrier = None  # the look-up's answer went with the evidence
    number.erased_at = now
    return Erasure(suppressed=opted_out, consents_erased=erased)

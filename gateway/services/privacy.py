"""What the store holds about a person: export it, erase it, import consent collected elsewhere."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gateway.domain import ledger, storable
from gateway.domain.consent import IllegalTransition, Input, Source, Status
from gateway.domain.numbers import InvalidNumber, parse
from gateway.services import consents
from gateway.store import consents as store_consents
from gateway.store import programs
from gateway.store.models import InboundMessage, LedgerEvent, OutboundMessage, PhoneNumber, utcnow

if TYPE_CHECKING:
    from gateway.domain.quiet_hours import QuietHours

ERASED_BODY = "[erased]"


def export(session: Session, number: PhoneNumber) -> dict:
    """Everything held about one number, ready to hand to the person (GDPR Art. 15)."""
    inbound = session.scalars(
        select(InboundMessage).where(InboundMessage.number_id == number.id).order_by(InboundMessage.id)
    ).all()
    outbound = session.scalars(
        select(OutboundMessage).where(OutboundMessage.number_id == number.id).order_by(OutboundMessage.created_at)
    ).all()
    return {
        "phone": number.e164,
        "number": {"kind": number.kind, "reachability": number.reachability,
                   "created_at": number.created_at.isoformat()},
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
             "status": m.status, "reason": m.reason, "created_at": m.created_at.isoformat()}
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
    number.erased_at = now
    return Erasure(suppressed=opted_out, consents_erased=erased)


IMPORT_STATUSES = {"opted_in": Input.IMPORT_OPT_IN, "opted_out": Input.IMPORT_OPT_OUT}
REQUIRED_COLUMNS = ("phone", "program", "status")


@dataclass
class ImportReport:
    applied: Counter = field(default_factory=Counter)
    refused: list[tuple[int, str]] = field(default_factory=list)  # (line, why)


def import_csv(session: Session, handle: IO[str], *, region: str, actor: str, suppression_key: bytes,
               rules: QuietHours, now: datetime | None = None) -> ImportReport:
    """Import consent rows (phone, program, status, then evidence columns); refuse what cannot apply.

    Every other column is kept verbatim as evidence (collected_at, source_url, ip, disclosure…).
    An import never overrides a person's own opt-out (the state machine refuses it), nor brings back
    a number erased after it opted out: its suppression hash refuses the row, whatever its status
    (an erased number is not stored again). Where a state rule makes an opt-out bind for years
    (Virginia: 10), an opt-in row is refused while it binds, for every program (`stop_binding`).
    """
    reader = csv.DictReader(handle)
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"the CSV lacks the column(s): {', '.join(missing)}")
    for name in reader.fieldnames:
        if reason := storable.unstorable_reason(name):
            raise ValueError(f"the CSV's column name {storable.escaped(name)!r} {reason}")
    report = ImportReport()
    known = {p.slug: p for p in programs.all_programs(session)}
    for line, row in enumerate(reader, start=2):
        unstorable = next(((column, reason) for column, value in row.items() if column is not None
                           and isinstance(value, str) and (reason := storable.unstorable_reason(value))), None)
        if unstorable is not None:  # a file's stray NUL: this row is refused, the others go in
            report.refused.append((line, f"column {unstorable[0]!r} {unstorable[1]}"))
            continue
        try:
            number = parse(row["phone"] or "", region)
        except InvalidNumber as error:
            report.refused.append((line, f"invalid number ({error.reason})"))
            continue
        program = known.get((row["program"] or "").strip())
        if program is None:
            report.refused.append((line, f"unknown program {row['program']!r}"))
            continue
        input = IMPORT_STATUSES.get((row["status"] or "").strip())
        if input is None:
            report.refused.append((line, f"status must be opted_in or opted_out, not {row['status']!r}"))
            continue
        if consents.is_suppressed(session, suppression_key, number.e164):
            report.refused.append((line, "suppressed: the number was erased after it opted out, and is never "
                                         "imported again"))
            continue
        details = {k: v for k, v in row.items() if k not in REQUIRED_COLUMNS and k is not None and v not in (None, "")}
        evidence = consents.Evidence(Source.IMPORT, actor=actor, reference=f"line {line}", details=details)
        with session.begin_nested():
            row_number = store_consents.number_row(session, number)
            if input is Input.IMPORT_OPT_IN:
                binding = consents.stop_binding(session, rules, row_number, now or utcnow())
                if binding is not None:
                    report.refused.append((line, f"{consents.STOP_BINDING}: {binding.message}"))
                    continue
            try:
                consents.apply(session, row_number, program, input, evidence, now=now)
            except IllegalTransition as error:
                report.refused.append((line, str(error)))
                continue
        report.applied[input.value] += 1
    return report

"""Batch sends: one body to up to 100,000 recipients, the gate applied to all of them in bulk.

The numbers go to the database once (a temporary table), one join brings back every fact the gate
needs, the Gate's `decide_many` decides, and the accepted messages go in with two bulk inserts. Only
numbers we already hold can have consent, so only they are parsed no further and only they can be
accepted; unknown ones are parsed (for the right refusal) but not stored: a number we will not
text is a number we have no reason to keep.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlalchemy.orm import Session

from gateway.domain.consent import Status
from gateway.domain.decisions import Stage
from gateway.domain.gate import Facts, Kind
from gateway.domain.numbers import TEXTABLE, InvalidNumber, is_e164, parse
from gateway.services import policy, unit_of_work
from gateway.services.ports import Gateway
from gateway.store import outbox
from gateway.store.facts import Known
from gateway.store.models import Program, utcnow

MAX_RECIPIENTS = 100_000
DUPLICATE = "duplicate"  # the same number more than once in one batch: it is texted once
INVALID = "invalid_number"
NOT_MOBILE = "not_mobile"


@dataclass
class BatchResult:
    batch_id: str
    accepted: list[outbox.Accepted] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (recipient as given, reason)

    @property
    def by_status(self) -> dict[str, int]:
        return dict(Counter(a.status for a in self.accepted))

    @property
    def refused_by_reason(self) -> dict[str, int]:
        return dict(Counter(reason for _, reason in self.refused))


def new_batch_id() -> str:
    return "bat_" + uuid.uuid4().hex


def accept(
    session: Session,
    *,
    program: Program,
    body: str,
    recipients: list[str],
    now: datetime,
    gate: policy.Gate,
    default_region: str,
    api_key_id: int | None = None,
    batch_id: str | None = None,
) -> BatchResult:
    """Gate every recipient and store a message for each one allowed (queued) or deferred."""
    result = BatchResult(batch_id or new_batch_id())
    kind = Kind(program.category)
    # 1. Normalise: E.164 input as is, anything else through phonenumbers.
    wanted: dict[str, str] = {}  # e164 -> the recipient as given (first occurrence)
    parsed = {}
    for raw in recipients:
        # Input already in E.164 form skips phonenumbers when the store knows the number (it was checked
        # when stored). Anything else is parsed like a single send's `to`.
        e164 = raw if is_e164(raw) else None
        if e164 is None:
            try:
                number = parse(raw, default_region)
            except InvalidNumber:
                result.refused.append((raw, INVALID))
                continue
            e164 = number.e164
            parsed[e164] = number
        if e164 in wanted:
            result.refused.append((raw, DUPLICATE))
        else:
            wanted[e164] = raw
    # 2. Everything the gate needs, for all of them, in one join.
    found = read_facts(session, gate, list(wanted), program, kind, now)
    # 3. Numbers we do not hold yet: is the input a real, textable number at all?
    candidates: dict[str, Facts] = {}
    number_ids: dict[str, int] = {}
    for e164, raw in wanted.items():
        known, facts = found[e164]
        if known is None:
            try:
                number = parsed.get(e164) or parse(e164, default_region)
            except InvalidNumber:
                result.refused.append((raw, INVALID))
                continue
            if not number.textable:
                result.refused.append((raw, NOT_MOBILE))
                continue
            candidates[e164] = replace(facts, region=number.region, kind=number.kind)
        elif known.kind not in TEXTABLE and known.kind != "unknown":
            result.refused.append((raw, NOT_MOBILE))
        else:
            candidates[e164] = facts
            number_ids[e164] = known.id
    # 4. The one gate, for all of them at one moment.
    decisions = gate.decide_many(candidates, program, kind, now, stage=Stage.BATCH)
    allowed = []
    for e164, decision in decisions.items():
        if decision.allowed or decision.deferred:
            # Consent needs a number we hold: an unknown number can only have been refused above.
            allowed.append((number_ids[e164], decision))
        else:
            result.refused.append((wanted[e164], decision.reason.value))
    # 5. The messages, in bulk; the caller enqueues after commit.
    result.accepted = outbox.accept_many(session, program=program, kind=kind, body=body, decisions=allowed,
                                         now=now, api_key_id=api_key_id, batch_id=result.batch_id)
    return result


def read_facts(session: Session, gate: policy.Gate, e164s: list[str], program: Program, kind: Kind,
               now: datetime) -> dict[str, tuple[Known | None, Facts]]:
    """What the gate needs about a batch's numbers, in one join. A batch keeps the decision records of
    the messages it stores only, allowed or deferred, which an opted-in consent alone allows: the
    consent's ledger event (a backward index probe per number) is read for those alone."""
    return gate.facts_by_e164(session, e164s, program, now, count_recent=kind is Kind.MARKETING,
                              events_of=Status.OPTED_IN)


def dispatch(gateway: Gateway, batch_id: str, now: datetime | None = None) -> int:
    """Enqueue a send task for each ready message of the batch; deferred ones wait for the sweeper."""
    now = now or utcnow()
    with unit_of_work.transaction(gateway) as (session, outgoing):
        ids = outbox.queued_in_batch(session, batch_id, now)
        outbox.mark_enqueued(session, ids, now)
        outgoing.send_messages(ids)
    return len(ids)

"""The carrier look-up before a send: a number's line type (landlines refused, non-fixed VoIP
flagged) and, where the account has it, whether the number was reassigned since the consent.

The worker asks here before it claims a message (services/sending.py): a Lookup takes a fraction
of a second to seconds and is billed, so it is never made in the send API's request, it is made
once per number per LOOKUP_TTL_DAYS whatever the number of messages, and no claim's lease is spent
waiting for it. What it learns is written before the claim, so the gate asked in the claim's
transaction applies it by the rules it already has: a landline is the same fact a 30006 teaches
(reason landline), a reassigned number's consents are ended (reason opted_out, the ledger saying why).

A Lookup that fails (timeout, 5xx, 429, refused) changes nothing and the message goes on unchecked:
the check is hygiene on top of consent, which the gate still enforces, and a Lookup outage must not
hold back order updates and codes. The number stays unchecked, so its next message asks again.
docs/decisions/0027-lookups-and-deactivations.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from gateway import logs, metrics
from gateway.domain import lookups as rules
from gateway.domain.consent import Input, Source, Status
from gateway.domain.outbound import ProviderError, Reachability
from gateway.services import carrier, consents
from gateway.services.consents import Evidence
from gateway.services.ports import Gateway
from gateway.store import lookups as store

log = logging.getLogger(__name__)

LINE_TYPE = "line_type_intelligence"
REASSIGNED = "reassigned_number"
# The ledger's event types for checks that change no consent.
LINE_TYPE_CHECK = "line_type_check"
REASSIGNED_CHECK = "reassigned_check"


@dataclass(frozen=True)
class Checked:
    """What a look-up before a send did: `result` is the line verdict, "unavailable", or "reassigned"."""

    result: str
    answer: dict | None = None


def enabled(gateway: Gateway) -> bool:
    return gateway.settings.lookup_line_type or gateway.settings.lookup_reassigned_number


def before_send(gateway: Gateway, message_id: str, now: datetime) -> Checked | None:
    """Look the message's number up if it is due a check; None when no look-up was needed."""
    settings = gateway.settings
    ttl = timedelta(days=settings.lookup_ttl_days)
    with gateway.db.transaction() as session:
        due = store.before_send(session, message_id, now)
        if due is None:
            return None
        consent_date = None
        if (settings.lookup_reassigned_number and due.region == "US"
                and due.consent_status == Status.OPTED_IN):
            consent_date = store.consent_date(session, due.number_id, due.program_id)
    fields = []
    if settings.lookup_line_type and rules.line_check_due(due.line_checked_at, now, ttl):
        fields.append(LINE_TYPE)
    asked_since = None
    if consent_date is not None and rules.reassigned_check_due(consent_date, due.reassigned_since,
                                                               due.reassigned_checked_at, now, ttl):
        fields.append(REASSIGNED)
        asked_since = consent_date
    if not fields:
        return None
    try:
        answer = gateway.provider.lookup(due.e164, fields=tuple(fields), last_verified=asked_since)
    except ProviderError as error:
        metrics.LOOKUPS.labels(result="unavailable").inc()
        logs.event(log, "lookup_unavailable", level=logging.WARNING, message_id=message_id, number=due.e164,
                   error=error.kind.value, code=error.code)
        return Checked("unavailable")
    return Checked(record(gateway, due.number_id, answer, now, asked_since=asked_since, reference=message_id),
                   answer)


def record(gateway: Gateway, number_id: int, answer: dict, now: datetime, *, asked_since: date | None,
           reference: str | None) -> str:
    """Keep a Lookup answer: the number's facts, a ledger event per check with the answer as evidence,
    and what it decides (a landline is unreachable by SMS; a reassigned number's consents end)."""
    line, reassigned = rules.line_of(answer), rules.reassigned_of(answer)
    result = "none"
    with gateway.db.transaction() as session:
        number = store.locked_number(session, number_id)
        if line is not None:
            verdict = line.verdict
            number.line_type, number.carrier, number.line_checked_at = line.type, line.carrier_key, now
            if verdict is rules.LineVerdict.REFUSE:
                carrier.learn_reachability(number, Reachability.LANDLINE)
            consents.record(session, number, LINE_TYPE_CHECK, _evidence(reference, {
                "provider": "twilio lookup v2", "fields": LINE_TYPE, "answer": {
                    key: answer.get(key) for key in ("valid", "country_code", LINE_TYPE)},
                "verdict": verdict.value}), now=now)
            result = verdict.value
            metrics.LOOKUPS.labels(result=result).inc()
            logs.event(log, "line_type_checked", message_id=reference, number=number.e164, line_type=line.type,
                       verdict=verdict.value)
        if asked_since is not None and REASSIGNED in answer:
            details = {"provider": "twilio lookup v2", "fields": REASSIGNED,
                       "last_verified_date": asked_since.isoformat(), "answer": {REASSIGNED: answer.get(REASSIGNED)}}
            live = store.live_programs(session, number.id)
            if reassigned is rules.Reassigned.YES and live:
                # Every live consent: whoever holds the number now may not be whoever gave any of them.
                ended = consents.opt_out(session, number, live, Input.REASSIGNED_NUMBER,
                                         _evidence(reference, {**details, "reason": "reassigned number"}), now=now)
                number.possibly_reassigned_at = now
                result = "reassigned"
                logs.event(log, "reassigned_number", message_id=reference, number=number.e164,
                           programs=",".join(change.program.slug for change in ended if change.program))
            else:
                consents.record(session, number, REASSIGNED_CHECK,
                                _evidence(reference, {**details, "verdict": reassigned.value if reassigned else
                                                      "unanswered"}), now=now)
                if reassigned is rules.Reassigned.YES:  # nothing live to end: the number is marked all the same
                    number.possibly_reassigned_at = now
                if reassigned is not None:  # an error in the answer is not an answer: ask again next time
                    number.reassigned_since, number.reassigned_checked_at = asked_since, now
            metrics.LOOKUPS.labels(result=f"reassigned_{reassigned.value if reassigned else 'unanswered'}").inc()
    return result


def _evidence(reference: str | None, details: dict) -> Evidence:
    return Evidence(source=Source.CARRIER, actor="twilio", reference=reference, details=details)

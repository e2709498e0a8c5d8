"""The carriers' Deactivations list: numbers given up by their subscribers, read once a day.

For each day, Twilio's list (through the provider) names United States numbers deactivated that
day. Every number on it that holds a live consent here is looked up first (when LOOKUP_LINE_TYPE
is on), because the list also carries numbers only ported to another carrier; a port is believed
only on positive proof (domain/lookups.py, `deactivation_verdict`). A deactivated number's live
consents end, each with the input carrier_deactivation and the reason "carrier deactivation", the
list's day and the look-up's answer as evidence.

Idempotent per day: a day read through is recorded (deactivation_days) and never read again.
Resumable: each number is handled in a transaction of its own and recorded (deactivation_checks),
so a run that stops half-way (a process killed, the database gone) resumes after the last number
it finished. A list that cannot be read (Twilio down, the file's link expired) or a look-up that
fails leaves the day unrecorded: the next run (beat's, hourly) reads it again.
docs/decisions/0027-lookups-and-deactivations.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from gateway import logs, metrics
from gateway.domain import lookups as rules
from gateway.domain.consent import Input, Source
from gateway.domain.outbound import ErrorKind, ProviderError
from gateway.services import consents, lookups
from gateway.services.consents import Evidence
from gateway.services.ports import Gateway
from gateway.store import lookups as store
from gateway.store.models import utcnow

log = logging.getLogger(__name__)

REASON = "carrier deactivation"
PORTED_CHECK = "deactivation_check"  # the ledger event of a listed number kept as ported


class NotReadable(Exception):
    """The day cannot be read: not over yet, or not a day the list can have."""


@dataclass(frozen=True)
class DayRun:
    day: date
    already: bool = False  # read through before: nothing was done
    listed: int = 0
    held: int = 0
    ended: int = 0
    ported: int = 0
    left: int = 0  # numbers whose look-up failed: the day stays open for the next run
    error: str | None = None  # the list could not be read: the day stays open

    @property
    def finished(self) -> bool:
        return self.already or (self.error is None and self.left == 0)


def run_day(gateway: Gateway, day: date, now: datetime | None = None) -> DayRun:
    """Read `day`'s list and end the consents of the numbers given up; see the module's docstring."""
    now = now or utcnow()
    if day >= now.date():
        raise NotReadable(f"{day.isoformat()} is not over yet: its list is read the day after")
    with gateway.db.transaction() as session:
        if store.finished_day(session, day) is not None:
            return DayRun(day, already=True)
    try:
        lines = gateway.provider.deactivated_numbers(day)
    except ProviderError as error:
        logs.event(log, "deactivations_unreadable", level=logging.WARNING, day=day.isoformat(), error=error.message)
        return DayRun(day, error=error.message)
    listed = {number for number in map(rules.listed_number, lines) if number}
    with gateway.db.transaction() as session:
        pending = store.to_check(session, day, listed)
    left = 0
    for number_id, e164 in pending:
        answer = None
        if gateway.settings.lookup_line_type:
            try:
                answer = gateway.provider.lookup(e164, fields=(lookups.LINE_TYPE,))
            except ProviderError as error:
                if error.kind is ErrorKind.RETRYABLE:
                    left += 1  # asked again on the next run
                    logs.event(log, "lookup_unavailable", level=logging.WARNING, number=e164, error=error.message,
                               stage="deactivations")
                    continue
                # Refused outright (an account without Lookup for this country…): decided without it.
        _handle(gateway, day, number_id, answer, now)
    with gateway.db.transaction() as session:
        counts = store.counted(session, day)
        ended, ported = counts.get(rules.Deactivation.DEACTIVATED, 0), counts.get(rules.Deactivation.PORTED, 0)
        result = DayRun(day, listed=len(listed), held=ended + ported, ended=ended, ported=ported, left=left)
        if left == 0:
            store.finish_day(session, day, listed=len(listed), held=result.held, ended=ended, ported=ported, now=now)
    logs.event(log, "deactivations_read", day=day.isoformat(), listed=len(listed), ended=ended, ported=ported,
               left=left)
    return result


def _handle(gateway: Gateway, day: date, number_id: int, answer: dict | None, now: datetime) -> None:
    """One listed number, in a transaction of its own: ended or kept as ported, and marked handled."""
    line = rules.line_of(answer)
    with gateway.db.transaction() as session:
        number = store.locked_number(session, number_id)
        decided = rules.deactivation_verdict(line, number.carrier)
        details = {"reason": REASON, "list": "twilio messaging v1 deactivations", "day": day.isoformat(),
                   "verdict": decided.verdict.value, "why": decided.why,
                   "lookup": None if answer is None else {key: answer.get(key)
                                                          for key in ("valid", "country_code", lookups.LINE_TYPE)}}
        evidence = Evidence(source=Source.CARRIER, actor="twilio", reference=f"deactivations:{day.isoformat()}",
                            details=details)
        if decided.verdict is rules.Deactivation.PORTED:
            consents.record(session, number, PORTED_CHECK, evidence, now=now)
        else:
            live = store.live_programs(session, number.id)
            if live:
                consents.opt_out(session, number, live, Input.CARRIER_DEACTIVATION, evidence, now=now)
            number.possibly_reassigned_at = now
        if line is not None:
            number.line_type, number.line_checked_at = line.type, now
            if line.carrier_key:
                number.carrier = line.carrier_key
        store.check(session, day, number.id, decided.verdict.value, now)
        e164 = number.e164
    metrics.DEACTIVATED_NUMBERS.labels(verdict=decided.verdict.value).inc()
    logs.event(log, "carrier_deactivation" if decided.verdict is rules.Deactivation.DEACTIVATED
               else "deactivation_ported", number=e164, day=day.isoformat(), why=decided.why)


def days_due(gateway: Gateway, now: datetime | None = None) -> list[date]:
    """The days of the last DEACTIVATIONS_DAYS_BACK, up to yesterday, not read through yet, oldest first."""
    now = now or utcnow()
    last = now.date() - timedelta(days=1)
    first = last - timedelta(days=gateway.settings.deactivations_days_back - 1)
    with gateway.db.transaction() as session:
        done = store.finished_days(session, first, last)
    return [first + timedelta(days=n) for n in range((last - first).days + 1) if first + timedelta(days=n) not in done]


def run_due(gateway: Gateway, now: datetime | None = None) -> list[DayRun]:
    """Read every day due (beat's hourly task): a day that fails is left for the next run."""
    now = now or utcnow()
    return [run_day(gateway, day, now) for day in days_due(gateway, now)]

"""The one send gate: `may_send` decides whether a text may go out now, and says why not.

Every path asks it: the API when it accepts a message, the worker right before the provider call,
the confirmation sender, the batch API. The decision itself (`decide`) is pure; `may_send` loads
the facts for one number, `load_facts` for many at once and `decide_many` decides them together,
so every path applies the same rules in the same order.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TypeVar
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers.tzdata import TIMEZONE_DATA, TIMEZONE_LONGEST_PREFIX
from sqlalchemy import TextualSelect, bindparam, text
from sqlalchemy.orm import Session

from gateway.store import bulk
from gateway.domain.consent import Status
from gateway.services.consents import suppression_digests
from gateway.store.database import Store, dialect_name, driver_sql, rows
from gateway.store.models import PhoneNumber, Program, UTCDateTime
from gateway.domain.numbers import Number, parse
from gateway.domain.quiet_hours import QuietHours, Window


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
# A refusal says no more than its reason (but quiet hours, which say until when): one of each, shared.
REFUSED = {reason: Decision(False, reason) for reason in Reason}

# Messages that count against frequency caps: everything not refused.
_COUNTED = ("queued", "deferred", "sending", "sent", "delivered", "undelivered")
_COUNTED_SQL = ", ".join(f"'{status}'" for status in _COUNTED)  # constants, written into the SQL


@dataclass
class Facts:
    """What the gate needs to know about one number for one program. Treat it as read-only (change a
    copy with dataclasses.replace); not frozen only because a batch makes 100,000 of them."""

    e164: str
    reachability: str = "ok"
    status: str | None = None
    expires_at: datetime | None = None
    suppressed: bool = False
    sent_last_day: int = 0  # marketing messages to this number in the last 24 h, all programs
    sent_last_day_program: int = 0  # ... of this program
    region: str | None = None  # as stored with the number; worked out from e164 when missing
    kind: str | None = None  # the number's type as stored (mobile, fixed_line_or_mobile…)


class Places:
    """Where numbers are, for the rules that depend on it: the state window and cap, and quiet
    hours at one `now`. Parsing a number and scanning its zones costs ~100 µs, too much for
    100,000 recipients, so answers are shared between numbers that the rules cannot tell apart:
    the window depends only on the +1 area code, and phonenumbers takes a number's time zones from
    its type, its country code and the longest prefix of it in its time-zone table. Numbers whose
    type is not stored get an answer of their own.
    """

    def __init__(self, rules: QuietHours, now: datetime):
        self.rules, self.now = rules, now
        self._answers: dict[tuple, tuple[int | None, datetime | None]] = {}
        # Numbers sharing their type and first nine digits share the key (it looks at no more).
        self._keys: dict[tuple[str | None, str], tuple] = {}

    def _key(self, facts: Facts) -> tuple:
        e164 = facts.e164
        if not facts.kind or facts.kind == "unknown":
            return (e164,)
        short = (facts.kind, e164[:1 + TIMEZONE_LONGEST_PREFIX])
        key = self._keys.get(short)
        if key is None:
            key = self._keys[short] = self._full_key(facts)
        return key

    @staticmethod
    def _full_key(facts: Facts) -> tuple:
        digits = facts.e164[1:]
        zone_prefix = next((digits[:n] for n in range(min(TIMEZONE_LONGEST_PREFIX, len(digits)), 0, -1)
                            if digits[:n] in TIMEZONE_DATA), None)
        country = next((digits[:n] for n in (1, 2, 3) if int(digits[:n] or 0) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE), "")
        area = digits[1:4] if country == "1" else ""
        return (facts.kind, country, area, zone_prefix)

    def _answer(self, facts: Facts) -> tuple[int | None, datetime | None]:
        key = self._key(facts)
        answer = self._answers.get(key)
        if answer is None:
            answer = (self.rules.daily_cap(facts.e164), self.rules.next_allowed(facts.e164, self.now))
            self._answers[key] = answer
        return answer

    def cap_and_opening(self, facts: Facts) -> tuple[int | None, datetime | None]:
        """The number's state cap (None: none) and, if it is in quiet hours now, when they end."""
        return self._answer(facts)


# One number at a time (the send API, the worker) still meets the same few places again and again:
# each process keeps the window and time zones per Places key (per rule set), sparing each decision
# the parse and the zone look-up. Bounded: the keys are types x area codes x time-zone prefixes.
_PLACED: weakref.WeakKeyDictionary[QuietHours, dict[tuple, tuple[Window, tuple[ZoneInfo, ...]]]] = (
    weakref.WeakKeyDictionary())
_PLACED_LIMIT = 10_000


def _placed(facts: Facts, rules: QuietHours) -> tuple[Window, tuple[ZoneInfo, ...]]:
    """The number's send window (with its state cap) and its time zones."""
    key = Places._full_key(facts) if facts.kind and facts.kind != "unknown" else None
    known = _PLACED.get(rules)
    if known is None:
        known = _PLACED[rules] = {}
    placed = known.get(key) if key is not None else None
    if placed is None:
        where = phonenumbers.parse(facts.e164)  # once for both rules (each would parse the string again)
        placed = (rules.window_for(where), rules.zones_for(where))
        if key is not None:
            if len(known) >= _PLACED_LIMIT:
                known.clear()
            known[key] = placed
    return placed


def region_of(e164: str) -> str | None:
    return phonenumbers.region_code_for_number(phonenumbers.parse(e164))


def decide(facts: Facts, program: Program, kind: Kind, now: datetime, rules: QuietHours,
           places: Places | None = None) -> Decision:
    """The rules, in order: hard blocks first, consent next, then caps, then the clock."""
    if facts.suppressed:
        return REFUSED[Reason.SUPPRESSED]
    status = facts.status
    if status == Status.OPTED_OUT:
        return REFUSED[Reason.OPTED_OUT]
    if facts.reachability != "ok":
        if facts.reachability == "landline":
            return REFUSED[Reason.LANDLINE]
        if facts.reachability == "unreachable":
            return REFUSED[Reason.UNREACHABLE]
    spec = program.settings.get("spec", {})
    allowed_countries = spec.get("allowed_countries")
    if allowed_countries and (facts.region or region_of(facts.e164)) not in allowed_countries:
        return REFUSED[Reason.COUNTRY_NOT_ALLOWED]

    if kind is Kind.CONFIRMATION:
        live = status == Status.PENDING and facts.expires_at is not None and facts.expires_at > now
        return ALLOW if live else REFUSED[Reason.NO_PENDING_REQUEST]
    if status != Status.OPTED_IN:
        return REFUSED[Reason.PENDING_CONFIRMATION if status == Status.PENDING else Reason.NO_CONSENT]

    if kind is Kind.MARKETING:
        program_cap = spec.get("daily_cap")
        if places is None:
            window, zones = _placed(facts, rules)
            state_cap, not_before = window.daily_cap, None
        else:
            state_cap, not_before = places.cap_and_opening(facts)
        if (program_cap and facts.sent_last_day_program >= program_cap) or (
            state_cap and facts.sent_last_day >= state_cap
        ):
            return REFUSED[Reason.FREQUENCY_CAP]
        if places is None:
            not_before = rules.next_opening(window, zones, now)
        if not_before is not None:
            return Decision(False, Reason.QUIET_HOURS, not_before)
    return ALLOW


K = TypeVar("K")


def decide_many(facts: Mapping[K, Facts], program: Program, kind: Kind, now: datetime,
                rules: QuietHours) -> dict[K, Decision]:
    """`decide` for many numbers at one moment, sharing the work that depends only on where they are."""
    places = Places(rules, now)
    with bulk.collector_paused():
        return {key: decide(one, program, kind, now, rules, places) for key, one in facts.items()}


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
    """Facts for numbers of ours (rows with id and e164), by id: one query, whatever their number."""
    by_id = {n.id: n for n in numbers}
    by_e164 = {n.e164: n.id for n in by_id.values() if n.e164}
    found = facts_by_e164(session, list(by_e164), program, suppression_key, now, count_recent=count_recent,
                          exclude_message=exclude_message)
    facts = {by_e164[e164]: one for e164, (_, one) in found.items()}
    # An erased number is nothing but its suppression hash now.
    facts.update({n.id: Facts(e164="", suppressed=True) for n in by_id.values() if not n.e164})
    return facts


@dataclass(frozen=True)
class Known:
    """A number of ours, as `facts_by_e164` found it."""

    id: int
    kind: str


def _recent(count_recent: bool, exclude_message: str | None, numbers: str) -> tuple[str, str]:
    """SQL joining `r`: each number's marketing texts of the last day (all programs, this one).

    `numbers` is a FROM clause giving the numbers' ids as `number_id`.
    """
    if not count_recent:
        return "", "0, 0"
    exclude = " AND m.id <> :exclude" if exclude_message else ""
    join = f"""
        LEFT JOIN (
            SELECT m.number_id, COUNT(*) AS total,
                   SUM(CASE WHEN m.program_id = :program THEN 1 ELSE 0 END) AS this_program
            FROM {numbers} JOIN messages m ON m.number_id = wanted.number_id
            WHERE m.kind = '{Kind.MARKETING.value}' AND m.status IN ({_COUNTED_SQL}) AND m.created_at > :since{exclude}
            GROUP BY m.number_id
        ) r ON r.number_id = n.id"""
    return join, "r.total, r.this_program"


def facts_by_e164(
    session: Store,
    e164s: Sequence[str],
    program: Program,
    suppression_key: bytes,
    now: datetime,
    *,
    count_recent: bool = True,
    exclude_message: str | None = None,
) -> dict[str, tuple[Known | None, Facts]]:
    """Facts for E.164 numbers, ours or not yet (`Known` is None then), in one query.

    One number is looked up directly (the send API, the worker); many go into a temporary table
    (COPY on PostgreSQL) that one query joins to numbers, consents, suppressions and the last day's
    messages, so a batch of 100,000 costs a handful of statements, not one per number. Many numbers
    need a Session; one can be read through a Core connection too.
    """
    if not e164s:
        return {}
    digests = suppression_digests(suppression_key, list(e164s))
    params: dict = {"program": program.id}
    if count_recent:
        params["since"] = now - timedelta(hours=24)
        if exclude_message:
            params["exclude"] = exclude_message
    if len(e164s) == 1:
        params.update(e164=e164s[0], digest=digests[0])
        return _facts(session, *_one_number_query(count_recent, bool(exclude_message)), params)
    with bulk.temp_table(session, "gate_candidates", {"e164": "VARCHAR(20)", "digest": "VARCHAR(64)"},
                         zip(e164s, digests)) as candidates:
        recent, counts = _recent(count_recent, exclude_message,
                                 f"(SELECT n2.id AS number_id FROM {candidates} c2 JOIN numbers n2 "
                                 f"ON n2.e164 = c2.e164) wanted")
        if dialect_name(session) == "postgresql":
            # Hash joins over a million numbers in memory rather than in batches on disk; this
            # transaction only.
            session.execute(text("SET LOCAL work_mem = '64MB'"))
        query = _facts_query(f"""
            SELECT c.e164, n.id, n.kind, n.region, n.reachability, k.status, k.expires_at,
                   CASE WHEN s.digest IS NULL THEN 0 ELSE 1 END, {counts}
            FROM {candidates} c
            LEFT JOIN numbers n ON n.e164 = c.e164
            LEFT JOIN consents k ON k.number_id = n.id AND k.program_id = :program
            LEFT JOIN suppressions s ON s.digest = c.digest
            {recent}
        """, count_recent)
        return _facts(session, query, None, params)


def _facts_query(sql: str, count_recent: bool) -> TextualSelect:
    query = text(sql).columns(expires_at=UTCDateTime())
    if count_recent:
        query = query.bindparams(bindparam("since", type_=UTCDateTime()))
    return query


@functools.cache
def _one_number_query(count_recent: bool, exclude_message: bool) -> tuple[TextualSelect, str]:
    """The query for one number (built once per variant) and its SQL as psycopg takes it."""
    recent, counts = _recent(count_recent, exclude_message,
                             "(SELECT id AS number_id FROM numbers WHERE e164 = :e164) wanted")
    query = _facts_query(f"""
        SELECT :e164 AS e164, n.id, n.kind, n.region, n.reachability, k.status, k.expires_at,
               CASE WHEN EXISTS (SELECT 1 FROM suppressions s WHERE s.digest = :digest) THEN 1 ELSE 0 END,
               {counts}
        FROM (SELECT 1 AS probe) probe
        LEFT JOIN numbers n ON n.e164 = :e164
        LEFT JOIN consents k ON k.number_id = n.id AND k.program_id = :program
        {recent}
    """, count_recent)
    return query, driver_sql(query)


def _facts(session: Store, query: TextualSelect, sql: str | None,
           params: dict) -> dict[str, tuple[Known | None, Facts]]:
    """Run a facts query: `sql` is its SQL for the driver when known already (one number)."""
    on_postgresql = dialect_name(session) == "postgresql"
    found: dict[str, tuple[Known | None, Facts]] = {}
    with bulk.collector_paused():
        for (e164, number_id, kind, region, reachability, status, expires_at, suppressed, total,
             this_program) in rows(session, query, params, sql):
            if on_postgresql and expires_at is not None:
                expires_at = expires_at.astimezone(UTC)  # psycopg gives the server's zone
            found[e164] = (
                None if number_id is None else Known(number_id, kind),
                Facts(e164, reachability or "ok", status, expires_at, bool(suppressed), total or 0,
                      this_program or 0, region, kind),
            )
    return found


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


def may_send_to(
    session: Store,
    to: Number | str,
    program: Program,
    kind: Kind,
    now: datetime,
    *,
    suppression_key: bytes,
    rules: QuietHours,
    default_region: str = "US",
) -> tuple[Known | None, Number, Decision]:
    """`may_send` for a number as a caller gave it, which we may not hold yet (then: no consent).

    `to` is a parsed Number, or E.164 text: a number we hold was validated when its row was made, so
    its stored type and region stand and phonenumbers (~80 µs, more than the rest of the gate) is
    asked only about a number new to us. Raises InvalidNumber as numbers.parse does.
    """
    e164 = to.e164 if isinstance(to, Number) else to
    known, facts = facts_by_e164(session, [e164], program, suppression_key, now,
                                 count_recent=kind is Kind.MARKETING)[e164]
    if known is not None and facts.region is not None:
        number = to if isinstance(to, Number) else Number(e164, known.kind, facts.region)
    else:
        # New to us, or kept from an inbound text without a known region: as the caller gave it.
        number = to if isinstance(to, Number) else parse(to, default_region)
        if known is None:
            facts = replace(facts, region=number.region, kind=number.kind)
    return known, number, decide(facts, program, kind, now, rules)

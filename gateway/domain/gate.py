"""The send gate's rules: whether a text may go out now, and if not, why (or until when).

Pure: `decide` takes what is known about one number (`Facts`, read by gateway/store/facts.py) and
answers with a `Decision`; `decide_many` answers for many numbers at one moment, sharing the work
that depends only on where they are. gateway/services/policy.py composes the reads and these rules
as the one Gate every path asks, so every path applies the same rules in the same order.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from typing import Any, Protocol, TypeVar
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers.tzdata import TIMEZONE_DATA, TIMEZONE_LONGEST_PREFIX

from gateway.domain.consent import Status
from gateway.domain.outbound import Reachability
from gateway.domain.quiet_hours import QuietHours, Timeline, Window


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
    # The rule behind a deferral or a cap: which law or promise, its version, its citation (Rule.cited).
    rule: Mapping[str, str | None] | None = None
    # Everything the decision weighed, as the message's history keeps it (domain/decisions.py): JSON
    # text, attached by the Gate for the paths that store the decision with a message.
    record: str | None = field(default=None, compare=False, repr=False)

    @property
    def deferred(self) -> bool:
        return self.reason is Reason.QUIET_HOURS


ALLOW = Decision(True)
# A refusal says no more than its reason (but quiet hours, which say until when): one of each, shared.
REFUSED = {reason: Decision(False, reason) for reason in Reason}


class ProgramSettings(Protocol):
    """What the rules read of a program: its stored definition (`settings["spec"]`, a ProgramSpec as a dict)."""

    settings: Mapping[str, Any]


@dataclass(slots=True)
class Facts:
    """What the gate needs to know about one number for one program. Treat it as read-only (change a
    copy with dataclasses.replace); not frozen only because a batch makes 100,000 of them."""

    e164: str
    reachability: str = Reachability.OK
    status: str | None = None
    expires_at: datetime | None = None
    suppressed: bool = False
    sent_last_day: int = 0  # marketing messages to this number in the last 24 h, all programs (state caps)
    region: str | None = None  # as stored with the number; worked out from e164 when missing
    kind: str | None = None  # the number's type as stored (mobile, fixed_line_or_mobile…)
    # When the program's cap was last reached: the creation time of its `max_messages`-th newest text to
    # this number within `cap_lookback` (None: fewer than that many). The gate compares it with the
    # start of the recipient's current calendar period.
    cap_reached_at: datetime | None = None
    # The ledger event that made the consent what it is: (id, seq, hash); None when no event of the
    # program exists. Kept in the decision's record (domain/decisions.py), not read by the rules.
    consent_event: tuple[int, int, str] | None = None


# How far back the store looks for a program's texts: the longest period plus a day for time zones.
CAP_LOOKBACK = {"day": timedelta(days=2), "week": timedelta(days=8), "month": timedelta(days=32)}


def period_start(per: str, zones: tuple[ZoneInfo, ...], now: datetime) -> datetime:
    """The start (aware UTC) of the calendar day, week (from Monday) or month holding `now` in the
    recipient's time zone. A number phonenumbers places in several zones gets the earliest start of
    them, which counts more of its texts: the cap can only be kept more strictly, never broken."""
    starts = []
    for zone in zones:
        day = now.astimezone(zone).date()
        if per == "week":
            day -= timedelta(days=day.weekday())
        elif per == "month":
            day = day.replace(day=1)
        starts.append(datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC))
    return min(starts)


def program_rule(program: ProgramSettings) -> dict[str, str | None]:
    """What a refusal under the program's own cap cites: the frequency the person agreed to."""
    spec = program.settings.get("spec", {})
    return {"rule": f"program:{spec.get('slug', '')}", "law": "the message frequency the person agreed to",
            "version": getattr(program, "version", None), "citation": spec.get("frequency"), "source": None}


class Place:
    """Where numbers are, as the rules see them at one moment: the send window in force, the time
    zones, and when quiet hours end there (None: open now). One is shared by every number of a batch
    that the rules cannot tell apart, with what is worked out from it once: the start of each cap
    period and the quiet-hours deferral."""

    __slots__ = ("window", "zones", "not_before", "_now", "_starts", "_deferral")

    def __init__(self, window: Window, zones: tuple[ZoneInfo, ...], not_before: datetime | None, now: datetime):
        self.window, self.zones, self.not_before, self._now = window, zones, not_before, now
        self._starts: dict[str, datetime] = {}
        self._deferral: Decision | None = None

    def period_start(self, per: str) -> datetime:
        start = self._starts.get(per)
        if start is None:
            start = self._starts[per] = period_start(per, self.zones, self._now)
        return start

    @property
    def deferral(self) -> Decision:
        """The answer for a text that must wait here (asked only while `not_before` is set)."""
        if self._deferral is None:
            self._deferral = _deferral(self.window, self.zones, self._now, self.not_before)
        return self._deferral


class Places:
    """Where numbers are, for the rules that depend on it: the state window and cap, and quiet
    hours at one `now`. Parsing a number and scanning its zones costs more than the rest of a
    decision (bench/README.md, batch filtering), so for 100,000 recipients a `Place` is shared
    between numbers that the rules cannot tell apart: the window depends only on the +1 area code,
    and phonenumbers takes a number's time zones from its type, its country code and the longest
    prefix of it in its time-zone table. Numbers whose type is not stored get a Place of their own.
    """

    def __init__(self, rules: QuietHours, now: datetime):
        self.rules, self.now = rules, now
        self._places: dict[tuple, Place] = {}
        # Numbers sharing their type and first nine digits share the Place (its key looks at no more).
        self._by_prefix: dict[tuple[str, str], Place] = {}
        self._last: tuple[Facts | None, Place | None] = (None, None)

    @staticmethod
    def _full_key(facts: Facts) -> tuple:
        digits = facts.e164[1:]
        zone_prefix = next((digits[:n] for n in range(min(TIMEZONE_LONGEST_PREFIX, len(digits)), 0, -1)
                            if digits[:n] in TIMEZONE_DATA), None)
        country = next((digits[:n] for n in (1, 2, 3)
                        if int(digits[:n] or 0) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE), "")
        area = digits[1:4] if country == "1" else ""
        return (facts.kind, country, area, zone_prefix)

    def placed(self, facts: Facts) -> Place:
        """The number's Place now."""
        if facts is self._last[0]:  # asked again by the decision's record
            return self._last[1]
        place = self._lookup(facts)
        self._last = (facts, place)
        return place

    def _lookup(self, facts: Facts) -> Place:
        kind = facts.kind
        if not kind or kind == "unknown":
            return self._place((facts.e164,), facts.e164)
        prefix = (kind, facts.e164[:1 + TIMEZONE_LONGEST_PREFIX])
        place = self._by_prefix.get(prefix)
        if place is None:
            place = self._by_prefix[prefix] = self._place(self._full_key(facts), facts.e164)
        return place

    def _place(self, key: tuple, e164: str) -> Place:
        place = self._places.get(key)
        if place is None:
            where = phonenumbers.parse(e164)
            window, zones = self.rules.window_for(where, self.now), self.rules.zones_for(where)
            place = self._places[key] = Place(window, zones, self.rules.next_opening(window, zones, self.now), self.now)
        return place


def _deferral(window: Window, zones: tuple[ZoneInfo, ...], now: datetime, not_before: datetime) -> Decision:
    """Quiet hours: the text waits until `not_before`, citing the rule that keeps the window shut."""
    closing = window.closing_rule(zones, now)
    return Decision(False, Reason.QUIET_HOURS, not_before, closing.cited if closing else None)


# One number at a time (the send API, the worker) still meets the same few places again and again:
# each process keeps the window and time zones per Places key (per rule set), sparing each decision
# the parse and the zone look-up. Bounded: the keys are types x area codes x time-zone prefixes.
_PLACED: weakref.WeakKeyDictionary[QuietHours, dict[tuple, tuple[Timeline, tuple[ZoneInfo, ...]]]] = (
    weakref.WeakKeyDictionary())
_PLACED_LIMIT = 10_000


def _placed(facts: Facts, rules: QuietHours) -> tuple[Timeline, tuple[ZoneInfo, ...]]:
    """The number's send windows over time (with its state caps) and its time zones."""
    key = Places._full_key(facts) if facts.kind and facts.kind != "unknown" else None
    known = _PLACED.get(rules)
    if known is None:
        known = _PLACED[rules] = {}
    placed = known.get(key) if key is not None else None
    if placed is None:
        where = phonenumbers.parse(facts.e164)  # once for both rules (each would parse the string again)
        placed = (rules.timeline_for(where), rules.zones_for(where))
        if key is not None:
            if len(known) >= _PLACED_LIMIT:
                known.clear()
            known[key] = placed
    return placed


def region_of(e164: str) -> str | None:
    return phonenumbers.region_code_for_number(phonenumbers.parse(e164))


def decide(facts: Facts, program: ProgramSettings, kind: Kind, now: datetime, rules: QuietHours,
           places: Places | None = None) -> Decision:
    """The rules, in order: hard blocks first, consent next, then caps, then the clock."""
    if facts.suppressed:
        return REFUSED[Reason.SUPPRESSED]
    status = facts.status
    if status == Status.OPTED_OUT:
        return REFUSED[Reason.OPTED_OUT]
    if facts.reachability != Reachability.OK:
        if facts.reachability == Reachability.LANDLINE:
            return REFUSED[Reason.LANDLINE]
        if facts.reachability == Reachability.UNREACHABLE:
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

    max_messages, per = spec.get("max_messages"), spec.get("per")
    capped = bool(max_messages) and facts.cap_reached_at is not None
    if not capped and kind is not Kind.MARKETING:
        return ALLOW
    if places is None:
        timeline, zones = _placed(facts, rules)
        window, place = timeline.at(now), None
    else:
        place = places.placed(facts)
        window, zones = place.window, place.zones
    if capped:
        start = place.period_start(per) if place is not None else period_start(per, zones, now)
        if facts.cap_reached_at >= start:
            return Decision(False, Reason.FREQUENCY_CAP, rule=program_rule(program))
    if kind is Kind.MARKETING:
        if window.daily_cap and facts.sent_last_day >= window.daily_cap:
            return Decision(False, Reason.FREQUENCY_CAP, rule=window.capping_rule().cited)
        if place is not None:
            return ALLOW if place.not_before is None else place.deferral
        not_before = rules.next_opening(window, zones, now)
        if not_before is not None:
            return _deferral(window, zones, now, not_before)
    return ALLOW


K = TypeVar("K")


def decide_many(facts: Mapping[K, Facts], program: ProgramSettings, kind: Kind, now: datetime,
                rules: QuietHours, places: Places | None = None) -> dict[K, Decision]:
    """`decide` for many numbers at one moment, sharing the work that depends only on where they are
    (`places`: for `now`; give one to share it further, with the decisions' records)."""
    places = places or Places(rules, now)
    return {key: decide(one, program, kind, now, rules, places) for key, one in facts.items()}

"""Sending rules by jurisdiction: quiet hours, caps and how long a STOP binds, from dated rule packs.

The packs are config/rules/*.toml, one per jurisdiction (federal, and one per state). Each pack holds
one or more *versions* of its law, each with its effective date (and end date when superseded), the
law's name, a citation, a source link and a version label. The gate asks for the rules in force at
the send time: a law that changes on a date switches on that date, and every deferral or refusal
names the version that caused it (`Rule.cited`).

Pure Python: phonenumbers places the number (time zones, area code), zoneinfo does the clock
arithmetic. Nothing here reads the real clock; callers pass `now`.
"""

from __future__ import annotations

import bisect
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as pn_timezone

__all__ = ["Window", "Rule", "Timeline", "QuietHours", "default_rules", "DEFAULT_PATH", "DAYS", "daily"]

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "config" / "rules"

# phonenumbers' answer when it cannot place a number.
_UNKNOWN_ZONE = "Etc/Unknown"
# How far ahead next_allowed looks. A week plus a day sees every weekday in every zone at least
# once, so a window that ever opens in all zones at once is found; beyond that it never will be.
_HORIZON = timedelta(days=8)
_APPLIES_TO_TEXTS = ("yes", "unverified")
_JURISDICTION = re.compile(r"^(federal|US-[A-Z]{2})$")
_AREA_CODE = re.compile(r"^[2-9][0-9]{2}$")
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_CLOSED = "closed"
_BEGINNING = datetime.min.replace(tzinfo=UTC)

_PACK_KEYS = {"jurisdiction", "name", "time_zone", "area_codes", "fallback_zones", "versions", "note"}
_VERSION_KEYS = {"version", "law", "citation", "source", "effective", "ends", "applies_to_texts", "start", "end",
                 "daily_cap", "stop_binds_years", "note", *DAYS}

Hours = tuple[time, time]  # [start, end) in local wall-clock time


def daily(start: time, end: time, *, sunday: Hours | None | bool = True) -> tuple[Hours | None, ...]:
    """The same hours every day; `sunday=None` closes Sunday, a (start, end) pair gives it its own."""
    sun = (start, end) if sunday is True else sunday
    return ((start, end),) * 6 + (sun,)


@dataclass(frozen=True)
class Rule:
    """One version of one jurisdiction's law, as a rule pack states it."""

    jurisdiction: str  # "federal", "US-OR"
    name: str
    version: str
    law: str
    citation: str
    source: str  # a link to the text or a summary of it
    effective: date
    ends: date | None
    applies_to_texts: str
    hours: tuple[Hours | None, ...]  # Monday..Sunday; None: closed all day
    daily_cap: int | None = None
    stop_binds_years: int | None = None

    def is_open_at(self, local: datetime) -> bool:
        return _open(self.hours, local)

    def binds_until(self, stopped_at: datetime) -> datetime | None:
        """Until when a STOP made at `stopped_at` binds under this rule (None: it sets no such term).

        A STOP made on 29 February binds until 1 March: a term in years never ends early.
        """
        if not self.stop_binds_years:
            return None
        year = stopped_at.year + self.stop_binds_years
        try:
            return stopped_at.replace(year=year)
        except ValueError:
            return stopped_at.replace(year=year, month=3, day=1)

    @property
    def cited(self) -> dict[str, str]:
        """What a deferral or refusal records of the rule: which law, which version, where it is written."""
        return {"rule": self.jurisdiction, "law": self.law, "version": self.version, "citation": self.citation,
                "source": self.source}


@dataclass(frozen=True)
class Window:
    """The rules in force for one number at one time, merged: the stricter value of each field wins.

    `rules` are the versions it was merged from, the state's first; they name the rule that a
    deferral or a refusal cites.
    """

    hours: tuple[Hours | None, ...]
    daily_cap: int | None = None
    stop_binds_years: int | None = None
    rules: tuple[Rule, ...] = field(default=(), compare=False)
    source: str = "federal"

    @classmethod
    def of(cls, rule: Rule) -> Window:
        return cls(rule.hours, rule.daily_cap, rule.stop_binds_years, (rule,), rule.jurisdiction)

    @property
    def start(self) -> time | None:
        """Monday's opening: for a window the same every day (the federal one), its opening."""
        return self.hours[0][0] if self.hours[0] else None

    @property
    def end(self) -> time | None:
        return self.hours[0][1] if self.hours[0] else None

    def is_open_at(self, local: datetime) -> bool:
        """True when `local` (a wall-clock time in the recipient's zone) lies inside the window."""
        return _open(self.hours, local)

    def tightened_by(self, other: Window) -> Window:
        """The stricter value of each field of self and other, labelled with other's source."""
        return Window(
            hours=tuple(_tighter(mine, theirs) for mine, theirs in zip(self.hours, other.hours, strict=True)),
            daily_cap=_least(self.daily_cap, other.daily_cap),
            stop_binds_years=max((y for y in (self.stop_binds_years, other.stop_binds_years) if y), default=None),
            rules=other.rules + self.rules,
            source=other.source,
        )

    def closing_rule(self, zones: Iterable[ZoneInfo], now: datetime) -> Rule | None:
        """The rule that keeps the window shut at `now` in one of the zones (the state's first)."""
        zones = tuple(zones)
        for rule in self.rules:
            if any(not rule.is_open_at(now.astimezone(zone)) for zone in zones):
                return rule
        return self.rules[0] if self.rules else None

    def capping_rule(self) -> Rule | None:
        """The rule whose daily cap is the window's."""
        return next((r for r in self.rules if r.daily_cap == self.daily_cap and r.daily_cap), None)

    def binding_rule(self) -> Rule | None:
        """The rule that makes a STOP bind longest, if any does."""
        return next((r for r in self.rules if r.stop_binds_years == self.stop_binds_years and r.stop_binds_years),
                    None)


@dataclass(frozen=True)
class Timeline:
    """The windows one place gets over time: `starts[i]` (aware UTC) begins `windows[i]`."""

    starts: tuple[datetime, ...]
    windows: tuple[Window, ...]

    def at(self, moment: datetime) -> Window:
        return self.windows[bisect.bisect_right(self.starts, moment) - 1]


@dataclass(frozen=True)
class _Pack:
    jurisdiction: str
    name: str
    zone: ZoneInfo
    rules: tuple[Rule, ...]  # ordered by effective date, not overlapping

    def boundaries(self) -> set[datetime]:
        moments = set()
        for rule in self.rules:
            moments.add(_midnight(rule.effective, self.zone))
            if rule.ends is not None:
                moments.add(_midnight(rule.ends, self.zone))
        return moments

    def in_force(self, moment: datetime) -> Rule | None:
        for rule in self.rules:
            if _midnight(rule.effective, self.zone) <= moment and (
                    rule.ends is None or moment < _midnight(rule.ends, self.zone)):
                return rule
        return None


class QuietHours:
    """The loaded rule packs: the default (federal) pack, state packs by area code, and fallback zones."""

    def __init__(self, default: _Pack, states: Mapping[str, _Pack], area_codes: Mapping[str, str],
                 fallback_zones: Iterable[ZoneInfo]) -> None:
        self._default = _timeline(default, None)
        timelines = {key: _timeline(default, pack) for key, pack in states.items()}
        # Merged once here so timeline_for is a dictionary look-up.
        self._by_area_code = {code: timelines[key] for code, key in area_codes.items()}
        self.packs = {default.jurisdiction: default, **{pack.jurisdiction: pack for pack in states.values()}}
        self._fallback_zones = tuple(fallback_zones)
        if not self._fallback_zones:
            raise ValueError("fallback_zones: at least one zone is required")

    @classmethod
    def from_directory(cls, path: str | Path) -> QuietHours:
        """Load and validate every *.toml pack in `path`; raise ValueError naming the file and the key."""
        path = Path(path)
        files = sorted(path.glob("*.toml"))
        if not files:
            raise ValueError(f"{path}: no rule packs (*.toml)")
        default, states, area_codes, fallback = None, {}, {}, None
        for file in files:
            with file.open("rb") as handle:
                try:
                    data = tomllib.load(handle)
                except tomllib.TOMLDecodeError as error:
                    raise ValueError(f"{file}: not valid TOML: {error}") from None
            try:
                pack, codes, zones = _pack(data)
                if codes is None:
                    if default is not None:
                        raise ValueError(f"area_codes: missing (only one pack, {default.jurisdiction}, "
                                         "is the default for every number)")
                    default, fallback = pack, zones
                    continue
                if pack.jurisdiction in states:
                    raise ValueError(f"jurisdiction: {pack.jurisdiction} has another pack already")
                for code in codes:
                    if code in area_codes:
                        # One area code cannot place a number in two states; this is a typo.
                        raise ValueError(f"area_codes: {code} is already listed under {area_codes[code]}")
                    area_codes[code] = pack.jurisdiction
                states[pack.jurisdiction] = pack
            except ValueError as error:
                raise ValueError(f"{file}: {error}") from None
        if default is None:
            raise ValueError(f"{path}: no default pack (the one without area_codes, with fallback_zones)")
        try:
            return cls(default, states, area_codes, fallback)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    @property
    def default_window(self) -> Window:
        """The window every number gets before a state rule tightens it (the newest federal version)."""
        return self._default.windows[-1]

    def timeline_for(self, number: phonenumbers.PhoneNumber | str) -> Timeline:
        """The windows the number gets over time: the default, tightened by a state pack for +1 area codes."""
        parsed = _parse(number)
        if parsed.country_code == 1:
            area_code = phonenumbers.national_significant_number(parsed)[:3]
            timeline = self._by_area_code.get(area_code)
            if timeline is not None:
                return timeline
        return self._default

    def window_for(self, number: phonenumbers.PhoneNumber | str, at: datetime) -> Window:
        """The strictest window in force at `at`: the default, tightened by a state rule for +1 area codes."""
        return self.timeline_for(number).at(_utc(at))

    def zones_for(self, number: phonenumbers.PhoneNumber | str) -> tuple[ZoneInfo, ...]:
        """Time zones phonenumbers gives for the number, or the configured fallback zones if none."""
        names = pn_timezone.time_zones_for_number(_parse(number))
        return _known_zones(names) or self._fallback_zones

    def daily_cap(self, number: phonenumbers.PhoneNumber | str, at: datetime) -> int | None:
        """Most marketing messages per rolling 24 hours for the number at `at`, or None for no cap."""
        return self.window_for(number, at).daily_cap

    def stop_binding(self, number: phonenumbers.PhoneNumber | str, at: datetime) -> Rule | None:
        """The rule in force at `at` under which a STOP from the number binds for years, if any."""
        return self.window_for(number, at).binding_rule()

    def next_allowed(self, number: phonenumbers.PhoneNumber | str, now: datetime) -> datetime | None:
        """None if a marketing text may go at `now`, else the earliest aware-UTC moment it may.

        The window in force at `now` is used for the whole search. When a law changes between now and
        the answer, the worker's second look (the gate runs again before sending) applies the new one.
        """
        return self.next_opening(self.window_for(number, now), self.zones_for(number), now)

    @staticmethod
    def next_opening(window: Window, zones: tuple[ZoneInfo, ...], now: datetime) -> datetime | None:
        """`next_allowed` for a number placed already: its window and time zones."""
        now = _utc(now)
        # Open now in every zone: the common case, answered without listing a week of openings.
        if _open_count(window, zones, now) == len(zones):
            return None

        # The set of moments that are open in every zone is an intersection of intervals, so its
        # first point at or after `now` is either `now` or the moment some zone's window opens.
        # Checking only those candidates keeps this exact without stepping minute by minute.
        # If no moment within the horizon is open everywhere (zones too far apart for the window),
        # settle for the earliest moment open in as many of the number's zones as possible. A
        # later call at that moment finds the same best coverage and answers None (unless a DST
        # change in between moves the zones), so a caller that defers and retries gets through.
        chosen, best = now, -1
        for moment in [now, *sorted(_openings(window, zones, now, now + _HORIZON))]:
            count = _open_count(window, zones, moment)
            if count > best:
                chosen, best = moment, count
            if count == len(zones):
                break
        return None if chosen == now else chosen


@lru_cache(maxsize=1)
def default_rules() -> QuietHours:
    """The packs in config/rules/, loaded once per process."""
    return QuietHours.from_directory(DEFAULT_PATH)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return moment.astimezone(UTC)


def _open(hours: tuple[Hours | None, ...], local: datetime) -> bool:
    today = hours[local.weekday()]
    return today is not None and today[0] <= local.time() < today[1]


def _tighter(mine: Hours | None, theirs: Hours | None) -> Hours | None:
    if mine is None or theirs is None:
        return None
    start, end = max(mine[0], theirs[0]), min(mine[1], theirs[1])
    return (start, end) if start < end else None


def _least(*caps: int | None) -> int | None:
    return min((c for c in caps if c is not None), default=None)


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    """When a law dated `day` takes effect: the start of that day in the jurisdiction's zone."""
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def _timeline(default: _Pack, state: _Pack | None) -> Timeline:
    """Every change of the merged window over time: at each date one of the two packs changes."""
    moments = sorted(default.boundaries() | (state.boundaries() if state else set()))
    starts, windows = [_BEGINNING], []
    for moment in [_BEGINNING, *moments]:
        # Before its first date the default pack's first version holds: every number has a window.
        base = default.in_force(moment) or default.rules[0]
        window = Window.of(base)
        rule = state.in_force(moment) if state else None
        if rule is not None:
            window = window.tightened_by(Window.of(rule))
        if all(day is None for day in window.hours):
            raise ValueError(f"{state.jurisdiction if state else default.jurisdiction}: together with "
                             f"{default.jurisdiction} the window is closed every day from {moment:%Y-%m-%d}")
        if windows and window == windows[-1] and window.rules == windows[-1].rules:
            continue
        if windows:
            starts.append(moment)
        windows.append(window)
    return Timeline(tuple(starts), tuple(windows))


def _parse(number: phonenumbers.PhoneNumber | str) -> phonenumbers.PhoneNumber:
    if isinstance(number, phonenumbers.PhoneNumber):
        return number
    if not isinstance(number, str):
        raise TypeError(f"expected a PhoneNumber or an E.164 string, not {type(number).__name__}")
    try:
        # No default region: the gateway stores E.164, and guessing a country here could put a
        # number in the wrong time zone.
        return phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException as error:
        raise ValueError(f"not an E.164 phone number: {number!r} ({error})") from None


def _known_zones(names: Iterable[str]) -> tuple[ZoneInfo, ...]:
    zones = []
    for name in names:
        if name == _UNKNOWN_ZONE:
            continue
        try:
            zones.append(ZoneInfo(name))
        except ZoneInfoNotFoundError:
            # phonenumbers can name a zone the local tz database lacks; the others still count.
            continue
    return tuple(zones)


def _openings(window: Window, zones: Iterable[ZoneInfo], after: datetime, until: datetime) -> set[datetime]:
    """UTC moments in (after, until] at which the window opens in one of the zones."""
    moments = set()
    for zone in zones:
        # One local day of slack either side covers zones far ahead of or behind UTC.
        day = after.astimezone(zone).date() - timedelta(days=1)
        last = until.astimezone(zone).date() + timedelta(days=1)
        while day <= last:
            hours = window.hours[day.weekday()]
            if hours is not None:
                moment = _local_to_utc(day, hours[0], zone)
                if after < moment <= until:
                    moments.add(moment)
            day += timedelta(days=1)
    return moments


def _local_to_utc(day: date, wall: time, zone: ZoneInfo) -> datetime:
    # fold=0 means: in a fall-back overlap, the first occurrence of the wall time (the earliest
    # moment the clock shows it); in a spring-forward gap, the wall time read with the offset from
    # before the jump, so 02:30 on a US spring-forward day becomes 03:30 daylight time. Either way
    # the moment is really open: at worst as late as the gap is long, never early.
    return datetime.combine(day, wall, tzinfo=zone).astimezone(UTC)


def _open_count(window: Window, zones: Iterable[ZoneInfo], moment: datetime) -> int:
    return sum(window.is_open_at(moment.astimezone(zone)) for zone in zones)


# --- loading ---------------------------------------------------------------------------------------


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a table")
    return value


def _reject_unknown(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    # Unknown keys are usually typos ("daily_limit", "no_sundays"); failing loudly beats a rule
    # that silently does nothing.
    for key in table:
        if key not in allowed:
            raise ValueError(f"{where + '.' if where else ''}{key}: unknown key")


def _text(table: Mapping[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}.{key}: missing or not a string")
    return value.strip()


def _pack(data: Mapping[str, Any]) -> tuple[_Pack, list[str] | None, tuple[ZoneInfo, ...] | None]:
    _reject_unknown(data, _PACK_KEYS, "")
    jurisdiction = data.get("jurisdiction")
    if not isinstance(jurisdiction, str) or not _JURISDICTION.match(jurisdiction):
        raise ValueError('jurisdiction: "federal" or "US-" and a state\'s two capital letters, like "US-FL"')
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("name: missing or not a string")
    zone = _zone(data.get("time_zone"), "time_zone")
    codes, fallback = data.get("area_codes"), data.get("fallback_zones")
    if codes is None:
        if fallback is None:
            raise ValueError("area_codes: missing (a state pack lists its area codes; the default pack has "
                             "fallback_zones instead)")
        fallback = _zones(fallback)
    else:
        if fallback is not None:
            raise ValueError("fallback_zones: only in the default pack (the one without area_codes)")
        if not isinstance(codes, list) or not codes:
            raise ValueError("area_codes: missing or empty")
        for code in codes:
            if not isinstance(code, str) or not _AREA_CODE.match(code):
                raise ValueError(f"area_codes: {code!r} is not a NANP area code string")
    versions = data.get("versions")
    if not isinstance(versions, list) or not versions:
        raise ValueError("versions: at least one [[versions]] table")
    rules = sorted((_version(_table(raw, f"versions[{i}]"), f"versions[{i}]", jurisdiction, name)
                    for i, raw in enumerate(versions)), key=lambda rule: rule.effective)
    labels = set()
    for earlier, later in zip(rules, rules[1:], strict=False):
        if earlier.ends is None or earlier.ends > later.effective:
            raise ValueError(f"versions: {earlier.version} is still in force when {later.version} takes effect "
                             f"on {later.effective} (give it ends = {later.effective})")
    for rule in rules:
        if rule.version in labels:
            raise ValueError(f"versions: version {rule.version!r} appears twice")
        labels.add(rule.version)
    if codes is None and rules[-1].ends is not None:
        raise ValueError("versions: the default pack's newest version cannot end (every number needs a window)")
    return _Pack(jurisdiction, name, zone, tuple(rules)), codes, fallback


def _version(table: Mapping[str, Any], where: str, jurisdiction: str, name: str) -> Rule:
    _reject_unknown(table, _VERSION_KEYS, where)
    effective, ends = table.get("effective"), table.get("ends")
    # TOML local dates (2026-01-01, unquoted) arrive as datetime.date; a datetime is a mistake here.
    if not isinstance(effective, date) or isinstance(effective, datetime):
        raise ValueError(f"{where}.effective: expected a TOML date like 2026-01-01")
    if ends is not None and (not isinstance(ends, date) or isinstance(ends, datetime) or ends <= effective):
        raise ValueError(f"{where}.ends: expected a TOML date later than effective")
    if table.get("applies_to_texts") not in _APPLIES_TO_TEXTS:
        raise ValueError(f"{where}.applies_to_texts: expected one of {', '.join(_APPLIES_TO_TEXTS)}")
    if not isinstance(table.get("note", ""), str):
        raise ValueError(f"{where}.note: expected a string")
    source = _text(table, "source", where)
    if not source.startswith(("https://", "http://")):
        raise ValueError(f"{where}.source: expected a link (https://…) to the law or a summary of it")
    start, end = _time(table, "start", where), _time(table, "end", where)
    if start >= end:
        raise ValueError(f"{where}.end: must be later than start (windows may not cross midnight)")
    hours: list[Hours | None] = []
    for day in DAYS:
        own = table.get(day)
        if own is None:
            hours.append((start, end))
        elif own == _CLOSED:
            hours.append(None)
        else:
            own = _table(own, f"{where}.{day}")
            _reject_unknown(own, {"start", "end"}, f"{where}.{day}")
            day_start, day_end = _time(own, "start", f"{where}.{day}"), _time(own, "end", f"{where}.{day}")
            if day_start >= day_end:
                raise ValueError(f"{where}.{day}.end: must be later than start")
            hours.append((day_start, day_end))
    return Rule(
        jurisdiction=jurisdiction, name=name, version=_text(table, "version", where), law=_text(table, "law", where),
        citation=_text(table, "citation", where), source=source, effective=effective, ends=ends,
        applies_to_texts=table["applies_to_texts"], hours=tuple(hours),
        daily_cap=_positive(table, "daily_cap", where), stop_binds_years=_positive(table, "stop_binds_years", where),
    )


def _positive(table: Mapping[str, Any], key: str, where: str) -> int | None:
    value = table.get(key)
    # bool is an int in Python; `daily_cap = true` is a mistake, not 1.
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{where}.{key}: expected a positive integer")
    return value


def _time(table: Mapping[str, Any], key: str, where: str) -> time:
    value = table.get(key)
    # TOML local times (08:00:00, unquoted) arrive as datetime.time; tz-aware times make no sense
    # for a rule that is read in each recipient's own zone.
    if not isinstance(value, time) or value.tzinfo is not None:
        raise ValueError(f"{where}.{key}: expected a TOML local time like 08:00:00")
    return value


def _zone(name: Any, where: str) -> ZoneInfo:
    if not isinstance(name, str):
        raise ValueError(f"{where}: expected an IANA time zone name like \"America/New_York\"")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{where}: unknown time zone {name!r}") from None


def _zones(value: Any) -> tuple[ZoneInfo, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError("fallback_zones: expected a non-empty list of IANA zone names")
    zones = []
    for name in value:
        if not isinstance(name, str):
            raise ValueError(f"fallback_zones: {name!r} is not a string")
        zones.append(_zone(name, "fallback_zones"))
    return tuple(zones)

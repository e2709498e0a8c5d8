"""Quiet hours: when a marketing text may reach a number, from rules in config/quiet_hours.toml.

Pure Python: phonenumbers places the number (time zones, area code), zoneinfo does the clock
arithmetic. Nothing here reads the real clock; callers pass `now`.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as pn_timezone

__all__ = ["Window", "QuietHours", "default_rules", "DEFAULT_PATH"]

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "config" / "quiet_hours.toml"

# phonenumbers' answer when it cannot place a number.
_UNKNOWN_ZONE = "Etc/Unknown"
# How far ahead next_allowed looks. A week plus a day sees every weekday in every zone at least
# once, so a window that ever opens in all zones at once is found; beyond that it never will be.
_HORIZON = timedelta(days=8)
_APPLIES_TO_TEXTS = ("yes", "unverified")
_STATE_KEY = re.compile(r"^[A-Z]{2}$")
_AREA_CODE = re.compile(r"^[2-9][0-9]{2}$")

_TOP_KEYS = {"fallback_zones", "default", "states"}
_RULE_KEYS = {"source", "start", "end", "daily_cap", "no_sunday", "applies_to_texts", "citation", "note"}
_STATE_KEYS = (_RULE_KEYS - {"source"}) | {"name", "area_codes"}


@dataclass(frozen=True)
class Window:
    """Local send window for one number: open on [start, end), optionally never on Sunday."""

    start: time
    end: time
    daily_cap: int | None
    no_sunday: bool
    source: str

    def is_open_at(self, local: datetime) -> bool:
        """True when `local` (a wall-clock time in the recipient's zone) lies inside the window."""
        if self.no_sunday and local.weekday() == 6:
            return False
        return self.start <= local.time() < self.end

    def tightened_by(self, other: Window) -> Window:
        """The stricter value of each field of self and other, labelled with other's source."""
        caps = [c for c in (self.daily_cap, other.daily_cap) if c is not None]
        return Window(
            start=max(self.start, other.start),
            end=min(self.end, other.end),
            daily_cap=min(caps) if caps else None,
            no_sunday=self.no_sunday or other.no_sunday,
            source=other.source,
        )


class QuietHours:
    """A loaded rule set: the default window, state windows by area code, and fallback zones."""

    def __init__(
        self,
        default: Window,
        states: Mapping[str, Window],
        area_codes: Mapping[str, str],
        fallback_zones: Iterable[ZoneInfo],
    ) -> None:
        self._default = default
        # Merged once here so window_for is a dictionary lookup.
        self._by_area_code = {code: default.tightened_by(states[key]) for code, key in area_codes.items()}
        self._fallback_zones = tuple(fallback_zones)
        if not self._fallback_zones:
            raise ValueError("fallback_zones: at least one zone is required")

    @classmethod
    def from_file(cls, path: str | Path) -> QuietHours:
        """Load and validate a TOML rule file; raise ValueError naming the offending key."""
        path = Path(path)
        with path.open("rb") as handle:
            try:
                data = tomllib.load(handle)
            except tomllib.TOMLDecodeError as error:
                raise ValueError(f"{path}: not valid TOML: {error}") from None
        try:
            return cls._from_mapping(data)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    @classmethod
    def _from_mapping(cls, data: Mapping[str, Any]) -> QuietHours:
        _reject_unknown(data, _TOP_KEYS, "")
        for key in ("fallback_zones", "default"):
            if key not in data:
                raise ValueError(f"{key}: missing")
        default = _rule(_table(data["default"], "default"), "default", source=None)
        states: dict[str, Window] = {}
        area_codes: dict[str, str] = {}
        for key, raw in _table(data.get("states", {}), "states").items():
            where = f"states.{key}"
            if not _STATE_KEY.match(key):
                raise ValueError(f"{where}: state keys are two capital letters, like FL")
            table = _table(raw, where)
            _reject_unknown(table, _STATE_KEYS, where)
            if not isinstance(table.get("name"), str):
                raise ValueError(f"{where}.name: missing or not a string")
            states[key] = _rule(table, where, source=f"US-{key}")
            merged = default.tightened_by(states[key])
            if merged.start >= merged.end:
                raise ValueError(f"{where}: together with [default] the window is empty")
            codes = table.get("area_codes")
            if not isinstance(codes, list) or not codes:
                raise ValueError(f"{where}.area_codes: missing or empty")
            for code in codes:
                if not isinstance(code, str) or not _AREA_CODE.match(code):
                    raise ValueError(f"{where}.area_codes: {code!r} is not a NANP area code string")
                if code in area_codes:
                    # One area code cannot place a number in two states; this is a typo.
                    raise ValueError(f"{where}.area_codes: {code} is already listed under states.{area_codes[code]}")
                area_codes[code] = key
        return cls(default, states, area_codes, _zones(data["fallback_zones"]))

    @property
    def default_window(self) -> Window:
        """The window every number gets before a state rule tightens it."""
        return self._default

    def window_for(self, number: phonenumbers.PhoneNumber | str) -> Window:
        """The strictest window that applies: the default, tightened by a state rule for +1 area codes."""
        parsed = _parse(number)
        if parsed.country_code == 1:
            area_code = phonenumbers.national_significant_number(parsed)[:3]
            if area_code in self._by_area_code:
                return self._by_area_code[area_code]
        return self._default

    def zones_for(self, number: phonenumbers.PhoneNumber | str) -> tuple[ZoneInfo, ...]:
        """Time zones phonenumbers gives for the number, or the configured fallback zones if none."""
        names = pn_timezone.time_zones_for_number(_parse(number))
        return _known_zones(names) or self._fallback_zones

    def daily_cap(self, number: phonenumbers.PhoneNumber | str) -> int | None:
        """Most marketing messages per rolling 24 hours for the number, or None for no cap."""
        return self.window_for(number).daily_cap

    def next_allowed(self, number: phonenumbers.PhoneNumber | str, now: datetime) -> datetime | None:
        """None if a marketing text may go at `now`, else the earliest aware-UTC moment it may."""
        return self.next_opening(self.window_for(number), self.zones_for(number), now)

    @staticmethod
    def next_opening(window: Window, zones: tuple[ZoneInfo, ...], now: datetime) -> datetime | None:
        """`next_allowed` for a number placed already: its window and time zones."""
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        now = now.astimezone(UTC)
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
    """The rules in config/quiet_hours.toml, loaded once per process."""
    return QuietHours.from_file(DEFAULT_PATH)


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
            if not (window.no_sunday and day.weekday() == 6):
                moment = _local_to_utc(day, window.start, zone)
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


def _rule(table: Mapping[str, Any], where: str, source: str | None) -> Window:
    if source is None:
        _reject_unknown(table, _RULE_KEYS, where)
        source = table.get("source")
        if not isinstance(source, str) or not source:
            raise ValueError(f"{where}.source: missing or not a string")
    start, end = _time(table, "start", where), _time(table, "end", where)
    if start >= end:
        raise ValueError(f"{where}.end: must be later than start (windows may not cross midnight)")
    cap = table.get("daily_cap")
    # bool is an int in Python; `daily_cap = true` is a mistake, not 1.
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise ValueError(f"{where}.daily_cap: expected a positive integer")
    no_sunday = table.get("no_sunday", False)
    if not isinstance(no_sunday, bool):
        raise ValueError(f"{where}.no_sunday: expected true or false")
    if table.get("applies_to_texts") not in _APPLIES_TO_TEXTS:
        raise ValueError(f"{where}.applies_to_texts: expected one of {', '.join(_APPLIES_TO_TEXTS)}")
    if not isinstance(table.get("citation"), str):
        raise ValueError(f"{where}.citation: missing or not a string")
    if not isinstance(table.get("note", ""), str):
        raise ValueError(f"{where}.note: expected a string")
    return Window(start=start, end=end, daily_cap=cap, no_sunday=no_sunday, source=source)


def _time(table: Mapping[str, Any], key: str, where: str) -> time:
    value = table.get(key)
    # TOML local times (08:00:00, unquoted) arrive as datetime.time; tz-aware times make no sense
    # for a rule that is read in each recipient's own zone.
    if not isinstance(value, time) or value.tzinfo is not None:
        raise ValueError(f"{where}.{key}: expected a TOML local time like 08:00:00")
    return value


def _zones(value: Any) -> tuple[ZoneInfo, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError("fallback_zones: expected a non-empty list of IANA zone names")
    zones = []
    for name in value:
        if not isinstance(name, str):
            raise ValueError(f"fallback_zones: {name!r} is not a string")
        try:
            zones.append(ZoneInfo(name))
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"fallback_zones: unknown time zone {name!r}") from None
    return tuple(zones)

"""A send decision as the message's history keeps it: every fact the gate read and every rule it
weighed, so the console can say years later why a text went out, waited or did not.

Pure. `Recorder.record(facts, decision)` gives the record as JSON text (stored on the history step
the decision made: gateway/store/outbox.py); `explain(record)` gives it back in plain words. A
record is a copy, not a reference: the rule packs, the program and its promise as they were at the
moment of the decision, because all three change later. It names no phone number (the message's
number row does, and erasure clears that), only where the number is (region, time zones) and what
was read about it.

Every fact is recorded whether or not the gate needed it for this answer (a refusal for
suppression still says what the consent was), because "why not" is answered best beside "what
else was true". A record for a batch of 100,000 shares the parts that depend only on the place
and the program (`Recorder` keeps them as JSON fragments), so the bulk path pays for what differs
between numbers only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from gateway.domain.gate import CAP_LOOKBACK, Decision, Facts, Kind, Place, Places, _placed, period_start, program_rule
from gateway.domain.quiet_hours import QuietHours, Window

VERSION = 1  # of the record's shape; `explain` reads every version it knows


class Stage(StrEnum):
    """Which look at the message decided: where the record was made."""

    API = "api"  # POST /v1/messages accepted it
    BATCH = "batch"  # POST /v1/messages/batch accepted it
    CONFIRMATION = "confirmation"  # the double opt-in question, queued with the request
    WORKER = "worker"  # the worker's look right before the provider call
    RELEASE = "release"  # the worker's look at a deferred message whose slot came (paced release)


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _hours(window: Window, local: datetime) -> str:
    hours = window.hours[local.weekday()]
    return "closed" if hours is None else f"{hours[0]:%H:%M}-{hours[1]:%H:%M}"


# Fragments shared by many records, kept per process: most sends meet the same few programs, places
# and periods again and again. Bounded: cleared when full.
_SHARED: dict[tuple, tuple] = {}
_SHARED_LIMIT = 10_000


def _shared(key: tuple, make: Callable[[], tuple]) -> tuple:
    kept = _SHARED.get(key)
    if kept is None:
        if len(_SHARED) >= _SHARED_LIMIT:
            _SHARED.clear()
        kept = _SHARED[key] = make()
    return kept


class Recorder:
    """Makes the records of one look: one program, one kind, one moment, one stage.

    `places`: the batch's shared Places (gate.decide_many), so a record reuses the Place its
    decision was made in; without it, the per-process cache the single-number gate uses.
    """

    def __init__(self, program, kind: Kind, now: datetime, rules: QuietHours, stage: Stage | str,
                 places: Places | None = None):
        self.kind, self.now, self.rules, self.places = kind, now, rules, places
        spec = program.settings.get("spec", {})
        self._max, self._per = spec.get("max_messages"), spec.get("per")
        version = getattr(program, "version", None)
        key = ("head", str(stage), kind.value, spec.get("slug"), version, spec.get("frequency"), self._max, self._per,
               tuple(spec.get("allowed_countries") or ()))
        head, self._program_rule = _shared(key, lambda: (_dump({
            "v": VERSION, "stage": str(stage), "kind": kind.value,
            "program": {"slug": spec.get("slug"), "version": version, "frequency": spec.get("frequency")},
            "allowed_countries": list(spec.get("allowed_countries") or []) or None})[:-1],
            program_rule(program) if self._max else None))
        self._program_rule_key = tuple(self._program_rule.items()) if self._program_rule else None
        # The parts every record of this look shares.
        self._head = f'{head},"at":{_q(_iso(now))}'
        self._places: dict[int, tuple[Window, tuple[ZoneInfo, ...], str]] = {}
        # A batch's records differ between numbers of one place and outcome by the consent's ledger event
        # only, mostly: what comes before and after it, per place, decision and facts read.
        self._halves: dict[tuple, tuple[str, str, object, object]] = {}

    def _place(self, facts: Facts) -> tuple[Window, tuple[ZoneInfo, ...], Place | None]:
        if self.places is not None:
            place = self.places.placed(facts)
            return place.window, place.zones, place
        timeline, zones = _placed(facts, self.rules)
        return timeline.at(self.now), zones, None

    def _clock(self, window: Window, zones: tuple[ZoneInfo, ...]) -> str:
        """The quiet-hour part: the rules in force and the recipient's local time in each zone."""
        key = id(window) ^ hash(zones)
        kept = self._places.get(key)
        if kept is not None and kept[0] is window and kept[1] == zones:
            return kept[2]
        # The rules' part is the window's (windows live as long as their rule packs: the identity check
        # keeps a reused id from matching).
        held, rules = _shared(("window", id(window)), lambda: (window, _dump({
            "rules": [rule.cited for rule in window.rules], "daily_cap": window.daily_cap,
            "daily_cap_rule": (window.capping_rule().cited if window.daily_cap else None)})[1:-1]))
        if held is not window:
            _SHARED.pop(("window", id(window)), None)
            return self._clock(window, zones)
        local = ",".join(
            f'{{"zone":{_q(zone.key)},"time":{_q(_iso(moment))},"hours":"{_hours(window, moment)}",'
            f'"open":{"true" if window.is_open_at(moment) else "false"}}}'
            for zone, moment in ((zone, self.now.astimezone(zone)) for zone in zones))
        fragment = f'{{"applies":{"true" if self.kind is Kind.MARKETING else "false"},"local":[{local}],{rules}}}'
        self._places[key] = (window, zones, fragment)
        return fragment

    def _outcome(self, decision: Decision) -> str:
        """The decision's own part: shared by every number the same decision was given to."""
        rule = decision.rule
        key = ("outcome", decision.allowed, decision.reason, decision.not_before,
               None if rule is None else tuple(rule.items()))
        outcome = "allowed" if decision.allowed else "deferred" if decision.deferred else "refused"
        return _shared(key, lambda: (_dump({
            "outcome": outcome, "reason": decision.reason.value if decision.reason else None,
            "not_before": _iso(decision.not_before), "decided_by": rule})[1:-1],))[0]

    def _cap(self, facts: Facts, zones: tuple[ZoneInfo, ...] | None, place: Place | None) -> str:
        """The program's cap part: shared by every number in one period that has not reached it."""
        if not (self._max and zones):
            return "null"
        start = place.period_start(self._per) if place is not None else period_start(self._per, zones, self.now)
        reached_at = facts.cap_reached_at
        key = ("cap", self._max, self._per, start, reached_at, self._program_rule_key)
        return _shared(key, lambda: (_dump({
            "max": self._max, "per": self._per, "period_start": _iso(start), "reached_at": _iso(reached_at),
            "reached": reached_at is not None and reached_at >= start,
            "lookback_days": CAP_LOOKBACK[self._per].days, "rule": self._program_rule}),))[0]

    def record(self, facts: Facts, decision: Decision) -> str:
        """The record of `decision` on `facts`, as JSON text.

        Written from fragments: the parts shared by many numbers (the look, the place, the decision,
        the cap's period) are JSON made once, and so is all but the consent's ledger event for numbers
        of one place, decision and facts read (a batch of 100,000 makes as many records)."""
        # An erased number is nothing but its suppression hash: there is no place to record.
        window, zones, place = self._place(facts) if facts.e164 else (None, None, None)
        sent = facts.sent_last_day if self.kind is Kind.MARKETING else None
        # Keyed by the identities of the window and the decision, which the entry holds, so neither id
        # can be reused while it is kept.
        key = (id(window), zones, id(decision), facts.status, facts.expires_at, facts.suppressed, facts.reachability,
               facts.kind, facts.region, facts.cap_reached_at, sent)
        halves = self._halves.get(key)
        if halves is None:
            clock = self._clock(window, zones) if zones else "null"
            halves = self._halves[key] = (
                f'{self._head},"quiet_hours":{clock},{self._outcome(decision)},'
                f'"consent":{{"status":{_q(facts.status)},"expires_at":{_q(_iso(facts.expires_at))},"event":',
                f'}},"suppressed":{"true" if facts.suppressed else "false"},"reachability":{_q(facts.reachability)},'
                f'"line_type":{_q(facts.kind)},"region":{_q(facts.region)},'
                f'"program_cap":{self._cap(facts, zones, place)},'
                f'"sent_last_day":{"null" if sent is None else int(sent)}}}',
                window, decision)
        event = facts.consent_event
        if event is None:
            return f"{halves[0]}null{halves[1]}"
        return f'{halves[0]}{{"id":{int(event[0])},"seq":{int(event[1])},"hash":{_q(event[2])}}}{halves[1]}'


# Values of our own (statuses, ISO times, hex digests, region codes) need no escaping; anything else
# goes through json.
_PLAIN = re.compile(r"[A-Za-z0-9_:.+/\-]*")


def _q(value: str | None) -> str:
    if value is None:
        return "null"
    return f'"{value}"' if _PLAIN.fullmatch(value) else json.dumps(value, ensure_ascii=False)


def load(text: str | None) -> dict | None:
    return None if not text else json.loads(text)


# --- plain words ------------------------------------------------------------------------------------

_OUTCOME = {"allowed": "Allowed", "deferred": "Deferred", "refused": "Refused"}
_REASONS = {
    "no_consent": "the person has not agreed to this program",
    "pending_confirmation": "the person has not yet confirmed (double opt-in pending)",
    "opted_out": "the person opted out of this program",
    "suppressed": "the number is on the suppression list",
    "no_pending_request": "there was no live request to confirm",
    "unreachable": "the number was found unreachable",
    "landline": "the number is a landline",
    "country_not_allowed": "the program does not text this country",
    "frequency_cap": "a frequency cap was reached",
    "quiet_hours": "quiet hours at the recipient",
}
_STAGES = {
    "api": "when the API accepted it", "batch": "when the batch API accepted it",
    "confirmation": "when the opt-in request queued it", "worker": "by the worker right before sending",
    "release": "by the worker when its deferral was released",
}


def _rule_words(rule: Mapping | None) -> str:
    if not rule:
        return ""
    law, version, citation = rule.get("law"), rule.get("version"), rule.get("citation")
    words = f"{law}" if law else str(rule.get("rule", ""))
    if version:
        words += f", version {version}"
    if citation:
        words += f" ({citation})"
    return words


def explain(record: Mapping, when: Callable[[datetime], str] = lambda moment: moment.isoformat()) -> list[str]:
    """The record in plain sentences, the outcome first. `when` formats a moment (the console's zone)."""

    def at(value: str | None) -> str:
        return when(datetime.fromisoformat(value)) if value else "-"

    outcome = record.get("outcome")
    stage = _STAGES.get(record.get("stage"), record.get("stage"))
    head = f"{_OUTCOME.get(outcome, outcome)} {stage}, {at(record.get('at'))}"
    reason = record.get("reason")
    if outcome == "deferred":
        head += f": {_REASONS.get(reason, reason)}, until {at(record.get('not_before'))}"
    elif reason:
        head += f": {_REASONS.get(reason, reason)}"
    if record.get("decided_by"):
        head += f", under {_rule_words(record['decided_by'])}"
    lines = [head + "."]

    consent = record.get("consent") or {}
    event = consent.get("event")
    words = f"Consent read: {consent.get('status') or 'none held'}"
    if consent.get("expires_at"):
        words += f" (the request expires {at(consent['expires_at'])})"
    if event:
        words += f", made so by ledger event #{event['seq']} (id {event['id']}, hash {event['hash']})"
    lines.append(words + ".")
    lines.append("On the suppression list." if record.get("suppressed") else "Not on the suppression list.")
    lines.append(f"Reachability {record.get('reachability')}; line type {record.get('line_type') or 'unknown'}; "
                 f"region {record.get('region') or 'unknown'}"
                 + (f" (the program texts only {', '.join(record['allowed_countries'])})."
                    if record.get("allowed_countries") else " (the program texts any country)."))

    cap = record.get("program_cap")
    program = record.get("program") or {}
    if cap:
        words = (f"Program cap: at most {cap['max']} per {cap['per']}, the frequency the person agreed to"
                 f" (\"{program.get('frequency')}\", program {program.get('slug')} version {program.get('version')}); ")
        words += (f"reached at {at(cap['reached_at'])}, in the period from {at(cap['period_start'])}."
                  if cap.get("reached") else f"not reached in the period from {at(cap['period_start'])}.")
        lines.append(words)
    else:
        lines.append(f"Program cap: none (\"{program.get('frequency')}\" promises no count).")

    clock = record.get("quiet_hours")
    if clock is None:
        lines.append("Quiet hours and daily caps: not looked at (the number was erased).")
        return lines
    local = "; ".join(f"{each['time'][11:16]} in {each['zone']} (allowed {each['hours']}, "
                      f"{'open' if each['open'] else 'closed'})" for each in clock.get("local", []))
    rules = "; ".join(_rule_words(rule) for rule in clock.get("rules", []))
    if clock.get("applies"):
        lines.append(f"Quiet hours: recipient's local time {local}; rules in force: {rules}.")
        if clock.get("daily_cap"):
            lines.append(f"Daily cap: {record.get('sent_last_day')} marketing texts in the last 24 hours of at most "
                         f"{clock['daily_cap']}, under {_rule_words(clock.get('daily_cap_rule'))}.")
        else:
            lines.append(f"Daily cap: none where the recipient is ({record.get('sent_last_day')} marketing texts "
                         "in the last 24 hours).")
    else:
        lines.append(f"Quiet hours and daily caps do not apply to a {record.get('kind')} text "
                     f"(recipient's local time {local}).")
    return lines

"""The send gate's rules without a store: their order, caps before the clock, many numbers at once.

What the gate reads from a store, and every reason met through it, is tests/integration/services/test_policy.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.gate import (
    ALLOW,
    Decision,
    Facts,
    Kind,
    Reason,
    decide,
    decide_many,
)
from gateway.domain.numbers import InvalidNumber, parse
from gateway.domain.programs import load_file
from gateway.domain.quiet_hours import default_rules

EXAMPLE_PROGRAMS = Path(__file__).resolve().parents[3] / "config" / "programs.example.toml"
# 2026-03-04 is a Wednesday before the US moves its clocks (2026-03-08): New York is UTC-5.
NOON_NY = datetime(2026, 3, 4, 17, 0, tzinfo=UTC)
NIGHT_NY = datetime(2026, 3, 5, 3, 0, tzinfo=UTC)  # 22:00 in New York
NYC = "+12125550123"
MIAMI = "+13055550123"  # Florida: 08:00-20:00, at most 3 marketing texts in 24 h
OKLAHOMA_CITY = "+14055550123"
BALTIMORE = "+14105550123"
GUERNSEY = "+447911123456"
RULES = default_rules()


@dataclass
class StoredProgram:
    """A program as the rules read it: its stored definition."""

    settings: dict


@pytest.fixture(scope="module")
def deals() -> StoredProgram:
    spec = next(spec for spec in load_file(EXAMPLE_PROGRAMS) if spec.slug == "deals")
    return StoredProgram({"spec": asdict(spec)})


def facts(**changes) -> Facts:
    return replace(Facts(e164=MIAMI, status="opted_in", region="US", kind="fixed_line_or_mobile"), **changes)


def test_rules_apply_in_order(deals):
    """Start with everything wrong at night; each fix reveals the next rule down the ladder."""
    current = facts(suppressed=True, status="opted_out", reachability="landline", e164=GUERNSEY, region="GG",
                    sent_last_day=3)
    ladder = [
        ({}, Reason.SUPPRESSED),
        ({"suppressed": False}, Reason.OPTED_OUT),
        ({"status": "pending", "expires_at": NIGHT_NY + timedelta(days=1)}, Reason.LANDLINE),
        ({"reachability": "unreachable"}, Reason.UNREACHABLE),
        ({"reachability": "ok"}, Reason.COUNTRY_NOT_ALLOWED),
        ({"e164": MIAMI, "region": "US"}, Reason.PENDING_CONFIRMATION),
        ({"status": None}, Reason.NO_CONSENT),
        ({"status": "opted_in"}, Reason.FREQUENCY_CAP),  # a cap reached refuses, even at night
        ({"sent_last_day": 0}, Reason.QUIET_HOURS),
    ]
    for change, reason in ladder:
        current = replace(current, **change)
        assert decide(current, deals, Kind.MARKETING, NIGHT_NY, RULES).reason is reason, reason
    assert decide(current, deals, Kind.MARKETING, NOON_NY, RULES) == ALLOW


def test_a_cap_reached_is_a_refusal_even_at_night(deals):
    decision = decide(facts(sent_last_day=3), deals, Kind.MARKETING, NIGHT_NY, RULES)
    assert (decision.allowed, decision.reason) == (False, Reason.FREQUENCY_CAP)
    # The state's cap, cited by its rule pack.
    assert (decision.rule["rule"], decision.rule["citation"]) == ("US-FL", "Fla. Stat. 501.616(6)")


def test_a_deferral_cites_the_rule_that_closes_the_window(deals):
    decision = decide(facts(), deals, Kind.MARKETING, NIGHT_NY, RULES)
    assert decision.reason is Reason.QUIET_HOURS
    assert decision.rule["rule"] == "US-FL" and decision.rule["version"] == "2021-07-01"
    new_york = decide(facts(e164=NYC), deals, Kind.MARKETING, NIGHT_NY, RULES)
    assert new_york.rule["rule"] == "federal" and new_york.rule["citation"].startswith("47 CFR 64.1200")


def capped(spec: dict, max_messages: int, per: str) -> StoredProgram:
    return StoredProgram({"spec": {**spec, "max_messages": max_messages, "per": per,
                                   "frequency": f"Up to {max_messages} msgs/{per}"}})


def test_the_programs_cap_counts_in_the_recipients_calendar_period(deals):
    monthly = deals  # Up to 4 msgs/month
    assert decide(facts(e164=NYC, cap_reached_at=NOON_NY - timedelta(days=1)), monthly, Kind.MARKETING, NOON_NY,
                  RULES) == Decision(False, Reason.FREQUENCY_CAP, rule={
                      "rule": "program:deals", "law": "the message frequency the person agreed to", "version": None,
                      "citation": "Up to 4 msgs/month", "source": None})
    # Reached in February: March is a new month.
    assert decide(facts(e164=NYC, cap_reached_at=datetime(2026, 2, 28, 12, tzinfo=UTC)), monthly, Kind.MARKETING,
                  NOON_NY, RULES) == ALLOW
    daily = capped(deals.settings["spec"], 1, "day")
    los_angeles = "+13105550123"
    # 23:30 in Los Angeles on 3 March is 07:30 UTC on the 4th; 00:30 on the 4th there is a new day.
    reached = datetime(2026, 3, 4, 7, 30, tzinfo=UTC)
    just_after_midnight_la = datetime(2026, 3, 4, 8, 30, tzinfo=UTC)
    la = facts(e164=los_angeles, cap_reached_at=reached)
    assert decide(la, daily, Kind.INFORMATIONAL, just_after_midnight_la, RULES) == ALLOW
    assert decide(la, daily, Kind.INFORMATIONAL, datetime(2026, 3, 4, 7, 59, tzinfo=UTC), RULES).reason \
        is Reason.FREQUENCY_CAP  # 23:59 in Los Angeles: still the 3rd
    # The same moments in New York: 02:30 and 03:30 on the 4th, one day.
    assert decide(facts(e164=NYC, cap_reached_at=reached), daily, Kind.INFORMATIONAL, just_after_midnight_la,
                  RULES).reason is Reason.FREQUENCY_CAP
    weekly = capped(deals.settings["spec"], 2, "week")
    # 2026-03-01 is a Sunday, 2026-03-02 a Monday: weeks start on Monday.
    sunday = datetime(2026, 3, 1, 17, tzinfo=UTC)
    assert decide(facts(e164=NYC, cap_reached_at=sunday), weekly, Kind.MARKETING, NOON_NY, RULES) == ALLOW
    assert decide(facts(e164=NYC, cap_reached_at=sunday), weekly, Kind.MARKETING, sunday + timedelta(hours=1),
                  RULES).reason is Reason.FREQUENCY_CAP


def test_programs_without_a_cap_and_confirmations_are_not_capped(deals):
    varies = StoredProgram({"spec": {**deals.settings["spec"], "max_messages": None, "per": None}})
    assert decide(facts(e164=NYC, cap_reached_at=NOON_NY), varies, Kind.MARKETING, NOON_NY, RULES) == ALLOW
    pending = facts(e164=NYC, status="pending", expires_at=NOON_NY + timedelta(hours=1), cap_reached_at=NOON_NY)
    assert decide(pending, deals, Kind.CONFIRMATION, NOON_NY, RULES) == ALLOW


def test_a_confirmation_goes_out_only_while_its_request_is_pending(deals):
    pending = facts(status="pending", expires_at=NIGHT_NY + timedelta(hours=1))
    # Confirmations answer the person's own request: quiet hours do not hold them back.
    assert decide(pending, deals, Kind.CONFIRMATION, NIGHT_NY, RULES) == ALLOW
    assert decide(pending, deals, Kind.CONFIRMATION, NIGHT_NY + timedelta(hours=1), RULES).reason \
        is Reason.NO_PENDING_REQUEST
    assert decide(facts(), deals, Kind.CONFIRMATION, NIGHT_NY, RULES).reason is Reason.NO_PENDING_REQUEST


def test_the_country_is_worked_out_from_the_number_when_not_stored(deals):
    assert decide(facts(e164=GUERNSEY, region=None), deals, Kind.TRANSACTIONAL, NOON_NY, RULES).reason \
        is Reason.COUNTRY_NOT_ALLOWED
    assert decide(facts(region=None), deals, Kind.TRANSACTIONAL, NOON_NY, RULES) == ALLOW


SAMPLE_NUMBERS = [NYC, MIAMI, OKLAHOMA_CITY, BALTIMORE, GUERNSEY, "+18505550123", "+18504335555", "+12055550123",
                  "+15025550123", "+14165550123", "+18005550123", "+447700900123", "+442079460000",
                  "+61412345678", "+61291234567", "+33612345678", "+5511987654321", "+79161234567",
                  "+77011234567", "+12845550123"]


@settings(max_examples=60, deadline=None)
@given(now=st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)),
       suffixes=st.lists(st.integers(0, 99), min_size=len(SAMPLE_NUMBERS), max_size=len(SAMPLE_NUMBERS)))
def test_deciding_many_at_once_matches_deciding_each(deals, now, suffixes):
    """The shared per-place answers of decide_many never differ from asking about each number."""
    many = {}
    for base, suffix in zip(SAMPLE_NUMBERS, suffixes):
        try:
            found = parse(base[:-2] + f"{suffix:02d}")
        except InvalidNumber:
            continue
        many[found.e164] = Facts(e164=found.e164, status="opted_in", region=found.region, kind=found.kind,
                                 cap_reached_at=now - timedelta(hours=suffix))
    program = StoredProgram({"spec": {**deals.settings["spec"], "allowed_countries": [], "max_messages": 1,
                                      "per": "day"}})
    together = decide_many(many, program, Kind.MARKETING, now, RULES)
    assert together == {e164: decide(one, program, Kind.MARKETING, now, RULES) for e164, one in many.items()}



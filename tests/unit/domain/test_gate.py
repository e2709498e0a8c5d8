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
    assert decision == Decision(False, Reason.FREQUENCY_CAP)


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
        many[found.e164] = Facts(e164=found.e164, status="opted_in", region=found.region, kind=found.kind)
    program = StoredProgram({"spec": {**deals.settings["spec"], "allowed_countries": []}})
    together = decide_many(many, program, Kind.MARKETING, now, RULES)
    assert together == {e164: decide(one, program, Kind.MARKETING, now, RULES) for e164, one in many.items()}



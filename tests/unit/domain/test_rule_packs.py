"""The shipped rule packs, state by state, on fixed clocks with a number from each state (by area code).

Loading and validating packs, and the clock arithmetic they share, are in test_quiet_hours.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from gateway.domain.quiet_hours import default_rules

NEW_YORK = ZoneInfo("America/New_York")
CHICAGO = ZoneInfo("America/Chicago")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")

PORTLAND_OR = "+15035550123"
AUSTIN_TX = "+15125550123"
RICHMOND_VA = "+18045550123"
SEATTLE_WA = "+12065550123"
HARTFORD_CT = "+18605550123"
NEWARK_NJ = "+19735550123"
MIAMI_FL = "+13055550123"
TULSA_OK = "+19185550123"
BALTIMORE_MD = "+14105550123"
NYC = "+12125550123"


@pytest.fixture(scope="module")
def rules():
    return default_rules()


def local(zone: ZoneInfo, *parts: int) -> datetime:
    return datetime(*parts, tzinfo=zone)


# 2026-12-07 is a Monday, 2026-12-06 a Sunday.
@pytest.mark.parametrize(
    ("number", "zone", "open_at", "closed_at", "opens", "jurisdiction"),
    [
        (MIAMI_FL, NEW_YORK, (19, 59), (20, 0), (8, 0), "US-FL"),
        (TULSA_OK, CHICAGO, (19, 59), (20, 0), (8, 0), "US-OK"),
        (BALTIMORE_MD, NEW_YORK, (19, 59), (20, 0), (8, 0), "US-MD"),
        (SEATTLE_WA, LOS_ANGELES, (19, 59), (20, 0), (8, 0), "US-WA"),
        # Connecticut opens at 9:00 (the stricter of the two sources, config/rules/us-ct.toml).
        (HARTFORD_CT, NEW_YORK, (19, 59), (20, 0), (9, 0), "US-CT"),
        (NEWARK_NJ, NEW_YORK, (20, 59), (21, 0), (8, 0), "US-NJ"),
        (RICHMOND_VA, NEW_YORK, (20, 59), (21, 0), (8, 0), "US-VA"),
        (PORTLAND_OR, LOS_ANGELES, (19, 59), (20, 0), (8, 0), "US-OR"),
        (AUSTIN_TX, CHICAGO, (20, 59), (21, 0), (9, 0), "US-TX"),
        (NYC, NEW_YORK, (20, 59), (21, 0), (8, 0), "federal"),
    ],
)
def test_each_state_window_on_a_weekday(rules, number, zone, open_at, closed_at, opens, jurisdiction):
    assert rules.next_allowed(number, local(zone, 2026, 12, 7, *open_at)) is None
    closed = local(zone, 2026, 12, 7, *closed_at)
    assert rules.next_allowed(number, closed) == local(zone, 2026, 12, 8, *opens)
    assert rules.next_allowed(number, local(zone, 2026, 12, 8, opens[0] - 1, 30)) == local(zone, 2026, 12, 8, *opens)
    # The deferral names the rule that keeps the window shut: the state's own first.
    closing = rules.window_for(number, closed).closing_rule(rules.zones_for(number), closed)
    assert closing.jurisdiction == jurisdiction
    assert closing.cited["citation"] and closing.cited["source"].startswith("http")


def test_texas_hours_depend_on_the_weekday(rules):
    # SB 140: Monday to Saturday 9:00-21:00, Sunday 12:00-21:00.
    sunday_morning = local(CHICAGO, 2026, 12, 6, 10, 0)
    assert rules.next_allowed(AUSTIN_TX, sunday_morning) == local(CHICAGO, 2026, 12, 6, 12, 0)
    assert rules.next_allowed(AUSTIN_TX, local(CHICAGO, 2026, 12, 6, 12, 0)) is None
    assert rules.next_allowed(AUSTIN_TX, local(CHICAGO, 2026, 12, 5, 9, 0)) is None  # Saturday
    assert rules.next_allowed(AUSTIN_TX, local(CHICAGO, 2026, 12, 5, 8, 59)) == local(CHICAGO, 2026, 12, 5, 9, 0)
    # Saturday night: the next opening is Sunday noon, not 9:00.
    assert rules.next_allowed(AUSTIN_TX, local(CHICAGO, 2026, 12, 5, 21, 0)) == local(CHICAGO, 2026, 12, 6, 12, 0)
    closing = rules.window_for(AUSTIN_TX, sunday_morning).closing_rule(rules.zones_for(AUSTIN_TX), sunday_morning)
    assert (closing.jurisdiction, closing.version) == ("US-TX", "SB 140 (2025-09-01)")


def test_texas_rule_starts_on_its_date(rules):
    # Before 2025-09-01 Texas numbers had the federal window alone: 8:00 on a Sunday was open.
    assert rules.next_allowed(AUSTIN_TX, local(CHICAGO, 2025, 8, 31, 8, 30)) is None
    assert rules.next_allowed(AUSTIN_TX, local(CHICAGO, 2025, 9, 7, 8, 30)) == local(CHICAGO, 2025, 9, 7, 12, 0)


def test_oregon_changes_on_2026_01_01(rules):
    # 20:30 Pacific on 2025-12-30: the federal window (until 21:00) is all that holds.
    before = local(LOS_ANGELES, 2025, 12, 30, 20, 30)
    assert rules.next_allowed(PORTLAND_OR, before) is None
    assert rules.window_for(PORTLAND_OR, before).daily_cap is None
    assert rules.window_for(PORTLAND_OR, before).source == "federal"
    # From midnight Pacific on 2026-01-01, HB 3865: 8:00-20:00 and 3 per 24 hours.
    after = local(LOS_ANGELES, 2026, 1, 1, 20, 30)
    assert rules.next_allowed(PORTLAND_OR, after) == local(LOS_ANGELES, 2026, 1, 2, 8, 0)
    window = rules.window_for(PORTLAND_OR, after)
    assert (window.daily_cap, window.source) == (3, "US-OR")
    assert window.capping_rule().cited == {
        "rule": "US-OR", "law": "Oregon HB 3865 (2025), telephone solicitation by text and RCS",
        "version": "HB 3865 (2026-01-01)", "citation": "Or. Laws 2025, HB 3865, signed 2025-07-24",
        "source": "https://production.jdsupra.com/legalnews/oregon-passes-new-telephone-8210765"}
    # The switch is at the law's midnight, not a day early or late.
    assert rules.window_for(PORTLAND_OR, local(LOS_ANGELES, 2025, 12, 31, 23, 59)).daily_cap is None
    assert rules.window_for(PORTLAND_OR, local(LOS_ANGELES, 2026, 1, 1, 0, 0)).daily_cap == 3


def test_virginia_stop_binds_ten_years_from_2026(rules):
    assert rules.stop_binding(RICHMOND_VA, datetime(2025, 12, 31, 12, tzinfo=UTC)) is None
    rule = rules.stop_binding(RICHMOND_VA, datetime(2026, 12, 6, 12, tzinfo=UTC))
    assert (rule.jurisdiction, rule.stop_binds_years, rule.version) == ("US-VA", 10, "SB 1339 (2026-01-01)")
    assert rule.binds_until(datetime(2026, 3, 1, 9, tzinfo=UTC)) == datetime(2036, 3, 1, 9, tzinfo=UTC)
    # A STOP on 29 February binds until 1 March ten years on, never a day less.
    assert rule.binds_until(datetime(2028, 2, 29, 9, tzinfo=UTC)) == datetime(2038, 3, 1, 9, tzinfo=UTC)
    # Washington binds a year; other states not at all.
    assert rules.stop_binding(SEATTLE_WA, datetime(2026, 12, 6, tzinfo=UTC)).stop_binds_years == 1
    assert rules.stop_binding(NYC, datetime(2026, 12, 6, tzinfo=UTC)) is None
    assert rules.stop_binding(MIAMI_FL, datetime(2026, 12, 6, tzinfo=UTC)) is None


def test_merged_windows_keep_the_stricter_of_each_field(rules):
    window = rules.window_for(HARTFORD_CT, datetime(2026, 12, 7, 15, tzinfo=UTC))
    assert window.hours[0] == (time(9), time(20))
    assert [rule.jurisdiction for rule in window.rules] == ["US-CT", "federal"]

"""Quiet hours: rule loading, windows by area code, zones, and next_allowed on fixed clocks."""

from __future__ import annotations

import textwrap
import tomllib
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers import geocoder

from gateway.domain.quiet_hours import DEFAULT_PATH, QuietHours, daily, default_rules

NEW_YORK = ZoneInfo("America/New_York")
CHICAGO = ZoneInfo("America/Chicago")
LONDON = ZoneInfo("Europe/London")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


NYC = "+12125550123"
MIAMI = "+13055550123"
PENSACOLA = "+18504335555"  # Florida area code, Central time at this prefix
OKLAHOMA_CITY = "+14055550123"
BALTIMORE = "+14105550123"
BIRMINGHAM_AL = "+12055550123"
LOUISVILLE = "+15025550123"
TORONTO = "+14165550123"
TOLL_FREE = "+18005550123"
UNASSIGNED_US = "+15555550123"
LONDON_FIXED = "+442079460000"
UK_MOBILE = "+447911123456"
AU_MOBILE = "+61412345678"
SYDNEY_FIXED = "+61291234567"


@pytest.fixture(scope="module")
def rules() -> QuietHours:
    return default_rules()


def local(zone: ZoneInfo, *args: int) -> datetime:
    return datetime(*args, tzinfo=zone)


def write_rules(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(textwrap.dedent(body))
    return path


def write_packs(tmp_path: Path, *bodies: str) -> Path:
    folder = tmp_path / "rules"
    folder.mkdir(parents=True, exist_ok=True)
    for index, body in enumerate(bodies):
        (folder / f"pack{index}.toml").write_text(textwrap.dedent(body))
    return folder


FEDERAL = """\
    jurisdiction = "federal"
    name = "United States (federal)"
    time_zone = "America/New_York"
    fallback_zones = ["America/New_York", "America/Los_Angeles"]

    [[versions]]
    version = "1992"
    law = "TCPA"
    citation = "47 CFR 64.1200(c)(1)"
    source = "https://www.ecfr.gov/"
    effective = 1992-12-20
    applies_to_texts = "yes"
    start = 08:00:00
    end = 21:00:00
"""

FLORIDA = """\
    jurisdiction = "US-FL"
    name = "Florida"
    time_zone = "America/New_York"
    area_codes = ["305", "786"]

    [[versions]]
    version = "2021"
    law = "FTSA"
    citation = "Fla. Stat. 501.616(6)"
    source = "https://flsenate.gov/"
    effective = 2021-07-01
    applies_to_texts = "yes"
    start = 08:00:00
    end = 20:00:00
    daily_cap = 3
"""

AT = utc(2026, 12, 6, 17)  # "today", for rules that depend on the date
EVERY_DAY_8_TO_9 = daily(time(8), time(21))
EVERY_DAY_8_TO_8 = daily(time(8), time(20))


# --- the shipped rule packs ----------------------------------------------------------------------


def packs() -> dict[str, dict]:
    return {path.name: tomllib.loads(path.read_text()) for path in sorted(DEFAULT_PATH.glob("*.toml"))}


def test_default_rules_load_once():
    assert default_rules() is default_rules()
    assert DEFAULT_PATH.name == "rules" and DEFAULT_PATH.parent.name == "config"


def test_federal_window_for_new_york(rules):
    window = rules.window_for(NYC, AT)
    assert (window.hours, window.daily_cap, window.source) == (EVERY_DAY_8_TO_9, None, "federal")
    assert rules.zones_for(NYC) == (NEW_YORK,)
    assert rules.daily_cap(NYC, AT) is None


@pytest.mark.parametrize(
    ("number", "source"), [(MIAMI, "US-FL"), (PENSACOLA, "US-FL"), (OKLAHOMA_CITY, "US-OK"), (BALTIMORE, "US-MD")]
)
def test_florida_oklahoma_maryland_are_8_to_8_with_a_cap_of_3(rules, number, source):
    window = rules.window_for(number, AT)
    assert (window.hours, window.daily_cap, window.source) == (EVERY_DAY_8_TO_8, 3, source)
    assert rules.daily_cap(number, AT) == 3


def test_state_rules_only_tighten_the_default(rules):
    kentucky = rules.window_for(LOUISVILLE, AT)
    assert (kentucky.hours[0], kentucky.source) == ((time(10), time(21)), "US-KY")
    assert rules.window_for(BIRMINGHAM_AL, AT).hours[6] is None  # never on Sunday


def test_non_us_and_canadian_numbers_get_the_default(rules):
    assert rules.window_for(LONDON_FIXED, AT).source == "federal"
    assert rules.window_for(TORONTO, AT).source == "federal"
    assert rules.zones_for(TORONTO) == (ZoneInfo("America/Toronto"),)


def test_accepts_a_parsed_phone_number(rules):
    assert rules.window_for(phonenumbers.parse(MIAMI, None), AT).source == "US-FL"


def test_rejects_a_string_that_is_not_e164(rules):
    with pytest.raises(ValueError, match="E.164"):
        rules.window_for("305 555 0123", AT)
    with pytest.raises(ValueError, match="E.164"):
        rules.next_allowed("not a number", utc(2025, 1, 15, 12))


def test_shipped_area_code_lists():
    by_state = {pack["jurisdiction"]: pack for pack in packs().values()}
    florida = "239 305 321 324 352 386 407 448 561 645 656 689 727 728 754 772 786 813 850 863 904 941 954"
    assert sorted(by_state["US-FL"]["area_codes"]) == florida.split()
    assert sorted(by_state["US-OK"]["area_codes"]) == "405 539 572 580 918".split()
    assert sorted(by_state["US-MD"]["area_codes"]) == "227 240 301 410 443 667".split()
    assert sorted(by_state["US-OR"]["area_codes"]) == "458 503 541 971".split()
    for name, pack in packs().items():
        for version in pack["versions"]:
            # Every version says which law, which version, where it is written and from when.
            assert version["applies_to_texts"] in ("yes", "unverified"), name
            for key in ("version", "law", "citation", "source", "effective"):
                assert version[key], (name, key)
            assert version["source"].startswith("http"), name


def test_every_shipped_area_code_is_geocoded_to_its_state():
    # Cross-check our hand-kept lists against the phonenumbers geocoder, which describes a number
    # as "Florida" or "Pensacola, FL" (or "Washington State"): a typo'd or misplaced code fails here.
    for pack in packs().values():
        key = pack["jurisdiction"].removeprefix("US-")
        for code in pack.get("area_codes", []):
            descriptions = {
                geocoder.description_for_number(phonenumbers.parse(f"+1{code}{exchange}1234", None), "en")
                for exchange in ("200", "212", "234", "345", "456", "555", "678", "789", "890", "987")
            }
            assert any(d in (pack["name"], f"{pack['name']} State") or d.endswith(f", {key}")
                       for d in descriptions), (key, code, descriptions)


# --- zones ---------------------------------------------------------------------------------------


def test_zones_come_from_phonenumbers_prefix_data(rules):
    # Most of 850 is Eastern, but Pensacola prefixes are Central; phonenumbers knows which.
    assert rules.zones_for(PENSACOLA) == (CHICAGO,)
    assert rules.zones_for(SYDNEY_FIXED) == (ZoneInfo("Australia/Sydney"),)
    assert len(rules.zones_for(AU_MOBILE)) > 1
    assert len(rules.zones_for(TOLL_FREE)) > 10


def test_unknown_numbers_use_the_fallback_zones(rules):
    zones = {zone.key for zone in rules.zones_for(UNASSIGNED_US)}
    assert zones == {
        "America/New_York",
        "America/Chicago",
        "America/Denver",
        "America/Los_Angeles",
        "America/Anchorage",
        "Pacific/Honolulu",
    }
    # The window open in all of them: 13:00-21:00 Eastern in winter.
    assert rules.next_allowed(UNASSIGNED_US, local(NEW_YORK, 2025, 1, 15, 12, 59)) == utc(2025, 1, 15, 18)
    assert rules.next_allowed(UNASSIGNED_US, local(NEW_YORK, 2025, 1, 15, 13, 0)) is None


# --- next_allowed --------------------------------------------------------------------------------


def test_new_york_edges_of_the_window(rules):
    assert rules.next_allowed(NYC, local(NEW_YORK, 2025, 1, 15, 20, 59, 59)) is None
    # End is exclusive: 21:00:00 is closed; the next opening is 08:00 the next morning.
    assert rules.next_allowed(NYC, local(NEW_YORK, 2025, 1, 15, 21, 0)) == local(NEW_YORK, 2025, 1, 16, 8, 0)
    assert rules.next_allowed(NYC, local(NEW_YORK, 2025, 1, 16, 7, 59)) == local(NEW_YORK, 2025, 1, 16, 8, 0)
    assert rules.next_allowed(NYC, local(NEW_YORK, 2025, 1, 16, 8, 0)) is None


def test_answer_is_aware_utc_and_now_may_be_in_any_zone(rules):
    tokyo_now = datetime(2025, 1, 16, 11, 30, tzinfo=ZoneInfo("Asia/Tokyo"))  # 21:30 in New York
    answer = rules.next_allowed(NYC, tokyo_now)
    assert answer == utc(2025, 1, 16, 13, 0)
    assert answer.tzinfo is UTC


def test_naive_now_is_rejected(rules):
    with pytest.raises(ValueError, match="timezone-aware"):
        rules.next_allowed(NYC, datetime(2025, 1, 15, 12, 0))


def test_florida_closes_at_eight(rules):
    assert rules.next_allowed(MIAMI, local(NEW_YORK, 2025, 1, 15, 19, 59)) is None
    assert rules.next_allowed(MIAMI, local(NEW_YORK, 2025, 1, 15, 20, 30)) == local(NEW_YORK, 2025, 1, 16, 8, 0)


def test_pensacola_is_judged_on_central_time(rules):
    # 20:30 Eastern is 19:30 Central: still inside Florida's 08:00-20:00 in Pensacola.
    assert rules.next_allowed(PENSACOLA, local(NEW_YORK, 2025, 1, 15, 20, 30)) is None
    assert rules.next_allowed(PENSACOLA, local(CHICAGO, 2025, 1, 15, 20, 0)) == local(CHICAGO, 2025, 1, 16, 8, 0)


def test_kentucky_opens_at_ten(rules):
    assert rules.next_allowed(LOUISVILLE, local(NEW_YORK, 2026, 1, 15, 9, 0)) == local(NEW_YORK, 2026, 1, 15, 10, 0)


def test_toll_free_gets_the_window_open_in_every_us_zone(rules):
    # Its zones run from Guam (UTC+10) to Pago Pago (UTC-11) and St John's (UTC-3:30). In
    # January, 08:00-21:00 holds everywhere only from 22:00 UTC (08:00 in Guam, next day) to
    # 00:30 UTC (21:00 in St John's): 17:00-19:30 in New York.
    assert rules.next_allowed(TOLL_FREE, local(NEW_YORK, 2025, 1, 15, 10, 0)) == utc(2025, 1, 15, 22, 0)
    assert rules.next_allowed(TOLL_FREE, local(NEW_YORK, 2025, 1, 15, 19, 29)) is None
    assert rules.next_allowed(TOLL_FREE, local(NEW_YORK, 2025, 1, 15, 19, 30)) == utc(2025, 1, 16, 22, 0)


def test_uk_numbers_use_london_time_across_bst(rules):
    # 2025-03-30: the UK moves to BST at 01:00 UTC.
    assert rules.next_allowed(LONDON_FIXED, utc(2025, 3, 29, 7, 30)) == utc(2025, 3, 29, 8, 0)
    assert rules.next_allowed(LONDON_FIXED, utc(2025, 3, 30, 6, 30)) == utc(2025, 3, 30, 7, 0)
    assert rules.next_allowed(LONDON_FIXED, local(LONDON, 2025, 7, 1, 20, 59)) is None
    # A Guernsey mobile maps to four zones that share one clock.
    assert rules.next_allowed(UK_MOBILE, local(LONDON, 2025, 7, 1, 21, 0)) == local(LONDON, 2025, 7, 2, 8, 0)


def test_australian_mobile_spans_several_zones(rules):
    # January: Sydney and Lord Howe are UTC+11, Cocos (Keeling) UTC+6:30. The common window opens
    # at 08:00 in Cocos (01:30 UTC) and closes at 21:00 in Sydney (10:00 UTC).
    assert rules.next_allowed(AU_MOBILE, utc(2025, 1, 15, 1, 0)) == utc(2025, 1, 15, 1, 30)
    assert rules.next_allowed(AU_MOBILE, utc(2025, 1, 15, 9, 59)) is None
    assert rules.next_allowed(AU_MOBILE, utc(2025, 1, 15, 10, 0)) == utc(2025, 1, 16, 1, 30)
    # A Sydney landline is only Sydney: 21:00 there is 10:00 UTC, 08:00 is 21:00 UTC.
    assert rules.next_allowed(SYDNEY_FIXED, utc(2025, 1, 15, 10, 0)) == utc(2025, 1, 15, 21, 0)


def test_us_spring_forward(rules):
    # 2025-03-09 02:00 EST → 03:00 EDT. 08:00 that morning is 12:00 UTC, not 13:00.
    late = local(NEW_YORK, 2025, 3, 8, 21, 30)
    assert rules.next_allowed(NYC, late) == utc(2025, 3, 9, 12, 0)
    assert rules.next_allowed(NYC, utc(2025, 3, 9, 11, 59)) == utc(2025, 3, 9, 12, 0)


def test_us_fall_back(rules):
    # 2025-11-02 02:00 EDT → 01:00 EST. 08:00 that morning is 13:00 UTC, not 12:00.
    late = local(NEW_YORK, 2025, 11, 1, 22, 0)
    assert rules.next_allowed(NYC, late) == utc(2025, 11, 2, 13, 0)
    assert rules.next_allowed(NYC, utc(2025, 11, 2, 12, 30)) == utc(2025, 11, 2, 13, 0)
    # 20:59 EST on the long day is 01:59 UTC on the 3rd: still open.
    assert rules.next_allowed(NYC, utc(2025, 11, 3, 1, 59)) is None


def test_no_sunday_skips_to_monday(rules):
    # Alabama: 08:00-20:00, never on Sunday. 2026-01-17 is a Saturday.
    saturday_evening = local(CHICAGO, 2026, 1, 17, 20, 30)
    monday_morning = local(CHICAGO, 2026, 1, 19, 8, 0)
    assert rules.next_allowed(BIRMINGHAM_AL, saturday_evening) == monday_morning
    assert rules.next_allowed(BIRMINGHAM_AL, local(CHICAGO, 2026, 1, 18, 12, 0)) == monday_morning
    assert rules.next_allowed(BIRMINGHAM_AL, local(CHICAGO, 2026, 1, 17, 12, 0)) is None
    # The federal default has no Sunday rule.
    assert rules.next_allowed(NYC, local(NEW_YORK, 2026, 1, 18, 12, 0)) is None


def test_window_starting_inside_a_dst_gap_is_never_early(tmp_path):
    path = write_packs(tmp_path, FEDERAL.replace("start = 08:00:00", "start = 02:30:00"))
    rules = QuietHours.from_directory(path)
    answer = rules.next_allowed(NYC, local(NEW_YORK, 2025, 3, 8, 22, 0))
    # 02:30 does not exist on 2025-03-09; the answer is the first moment after it that is open.
    assert answer == local(NEW_YORK, 2025, 3, 9, 3, 30)
    assert rules.next_allowed(NYC, answer) is None


def test_empty_intersection_falls_back_to_widest_coverage(tmp_path):
    # A one-hour window cannot be open in New York and Los Angeles at once. The fallback is the
    # earliest moment open in as many zones as possible (here: one), and asking again at that
    # moment says "go", so a caller that defers and retries does not loop.
    narrower = FEDERAL.replace("start = 08:00:00\n    end = 21:00:00", "start = 09:00:00\n    end = 10:00:00")
    rules = QuietHours.from_directory(write_packs(tmp_path, narrower))
    answer = rules.next_allowed(UNASSIGNED_US, local(NEW_YORK, 2025, 1, 15, 7, 0))
    assert answer == local(NEW_YORK, 2025, 1, 15, 9, 0)
    assert rules.next_allowed(UNASSIGNED_US, answer) is None
    # The toll-free number's 42 zones have no common hour either; it still answers promptly.
    answer = rules.next_allowed(TOLL_FREE, utc(2025, 1, 15, 12, 0))
    assert answer is not None and answer - utc(2025, 1, 15, 12, 0) < timedelta(days=1)
    assert rules.next_allowed(TOLL_FREE, answer) is None


# --- property: next_allowed agrees with a brute-force scan ---------------------------------------

STEP = timedelta(minutes=15)  # every zone offset and window edge in the data is a multiple of this


def brute_force(rules: QuietHours, number: str, now: datetime) -> datetime | None:
    window, zones = rules.window_for(number, now), rules.zones_for(number)

    def open_everywhere(moment: datetime) -> bool:
        return all(window.is_open_at(moment.astimezone(zone)) for zone in zones)

    if open_everywhere(now):
        return None
    moment = datetime.min.replace(tzinfo=UTC) + ((now - datetime.min.replace(tzinfo=UTC)) // STEP + 1) * STEP
    for _ in range(8 * 24 * 4):
        if open_everywhere(moment):
            return moment
        moment += STEP
    raise AssertionError("no common window within 8 days")


@settings(max_examples=150, deadline=None)
@given(
    number=st.sampled_from(
        [NYC, MIAMI, PENSACOLA, BIRMINGHAM_AL, LOUISVILLE, TORONTO, TOLL_FREE, UNASSIGNED_US, UK_MOBILE, AU_MOBILE]
    ),
    now=st.datetimes(
        min_value=datetime(2024, 1, 1), max_value=datetime(2026, 12, 31), timezones=st.just(UTC)
    ),
)
def test_next_allowed_matches_a_brute_force_scan(number, now):
    rules = default_rules()
    answer = rules.next_allowed(number, now)
    assert answer == brute_force(rules, number, now)
    if answer is not None:
        assert answer > now and answer.tzinfo is UTC
        assert rules.next_allowed(number, answer) is None


# --- validation ----------------------------------------------------------------------------------


def test_minimal_packs_load(tmp_path):
    rules = QuietHours.from_directory(write_packs(tmp_path, FEDERAL, FLORIDA))
    window = rules.window_for(MIAMI, AT)
    assert (window.hours, window.daily_cap, window.source) == (EVERY_DAY_8_TO_8, 3, "US-FL")
    assert rules.window_for("+13215550123", AT).source == "federal"


@pytest.mark.parametrize(
    ("pack", "old", "new", "key"),
    [
        ("federal", 'fallback_zones = ["America/New_York", "America/Los_Angeles"]', "", "area_codes: missing"),
        ("federal", '"America/Los_Angeles"]', '"Mars/Olympus_Mons"]', "fallback_zones"),
        ("federal", 'time_zone = "America/New_York"', 'time_zone = "Mars/Base"', "time_zone"),
        ("federal", 'source = "https://www.ecfr.gov/"', "", r"versions\[0\]\.source"),
        ("federal", 'source = "https://www.ecfr.gov/"', 'source = "ecfr"', r"versions\[0\]\.source: expected a link"),
        ("federal", 'law = "TCPA"', "", r"versions\[0\]\.law"),
        ("federal", 'version = "1992"', "", r"versions\[0\]\.version"),
        ("federal", 'citation = "47 CFR 64.1200(c)(1)"', "", r"versions\[0\]\.citation"),
        ("federal", "effective = 1992-12-20", 'effective = "1992"', r"versions\[0\]\.effective"),
        ("federal", "end = 21:00:00", 'end = "21:00"', r"versions\[0\]\.end"),
        ("federal", "end = 21:00:00", "end = 07:00:00", r"versions\[0\]\.end"),
        ("federal", 'jurisdiction = "federal"', 'jurisdiction = "USA"', "jurisdiction"),
        ("florida", "end = 20:00:00", "end = 20:00:00\n    daily_limit = 3", r"versions\[0\]\.daily_limit: unknown"),
        ("florida", "daily_cap = 3", "daily_cap = true", r"versions\[0\]\.daily_cap"),
        ("florida", "daily_cap = 3", "daily_cap = 0", r"versions\[0\]\.daily_cap"),
        ("florida", "daily_cap = 3", "stop_binds_years = -1", r"versions\[0\]\.stop_binds_years"),
        ("florida", 'applies_to_texts = "yes"', 'applies_to_texts = "maybe"', r"versions\[0\]\.applies_to_texts"),
        ("florida", 'area_codes = ["305", "786"]', 'area_codes = ["305", 786]', "area_codes"),
        ("florida", 'area_codes = ["305", "786"]', 'area_codes = ["305", "105"]', "area_codes"),
        ("florida", 'area_codes = ["305", "786"]', "area_codes = []", "area_codes"),
        ("florida", 'name = "Florida"', "", "name"),
        ("florida", 'jurisdiction = "US-FL"', 'jurisdiction = "Florida"', "jurisdiction"),
        ("florida", "end = 20:00:00", "end = 20:00:00\n    sunday = { start = 09:00:00 }",
         r"versions\[0\]\.sunday\.end"),
        ("florida", "end = 20:00:00", 'end = 20:00:00\n    sunday = "shut"', r"versions\[0\]\.sunday"),
        ("florida", "start = 08:00:00\n    end = 20:00:00", "start = 21:00:00\n    end = 22:00:00",
         "closed every day"),
        ("florida", "[[versions]]", "[[version]]", "version: unknown key"),
    ],
)
def test_invalid_packs_name_the_file_and_key(tmp_path, pack, old, new, key):
    federal, florida = FEDERAL, FLORIDA
    if pack == "federal":
        assert old in federal
        federal = federal.replace(old, new, 1)
    else:
        assert old in florida
        florida = florida.replace(old, new, 1)
    with pytest.raises(ValueError, match=key):
        QuietHours.from_directory(write_packs(tmp_path, federal, florida))


def test_an_area_code_in_two_states_is_rejected(tmp_path):
    georgia = FLORIDA.replace('"US-FL"', '"US-GA"').replace('"Florida"', '"Georgia"').replace('"305", ', "")
    with pytest.raises(ValueError, match="area_codes: 786 is already listed under US-FL"):
        QuietHours.from_directory(write_packs(tmp_path, FEDERAL, FLORIDA, georgia))


def test_versions_of_one_law_may_not_overlap(tmp_path):
    later = FLORIDA + textwrap.dedent("""\
        [[versions]]
        version = "2027"
        law = "FTSA"
        citation = "Fla. Stat. 501.616(6)"
        source = "https://flsenate.gov/"
        effective = 2027-01-01
        applies_to_texts = "yes"
        start = 09:00:00
        end = 20:00:00
    """)
    with pytest.raises(ValueError, match="2021 is still in force when 2027 takes effect"):
        QuietHours.from_directory(write_packs(tmp_path, FEDERAL, later))


def test_no_packs_and_two_defaults_and_broken_toml(tmp_path):
    with pytest.raises(ValueError, match="no rule packs"):
        QuietHours.from_directory(tmp_path)
    with pytest.raises(ValueError, match="only one pack"):
        QuietHours.from_directory(write_packs(tmp_path / "two", FEDERAL, FEDERAL))
    with pytest.raises(ValueError, match="not valid TOML"):
        QuietHours.from_directory(write_packs(tmp_path / "broken", "[[versions]\n"))

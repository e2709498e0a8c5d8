"""A send decision's record (domain/decisions.py): what it keeps of the facts and the rules, that it
keeps no number, and its plain words. Pure: no store, fixed clocks."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from gateway.domain.decisions import Recorder, Stage, explain, load
from gateway.domain.gate import ALLOW, Decision, Facts, Kind, Places, Reason, decide
from gateway.domain.quiet_hours import default_rules

NYC = "+12125550141"  # America/New_York, federal rules only
MIAMI = "+13055550141"  # Florida: a state pack with its own hours and a daily cap
NOON_NY = datetime(2026, 3, 10, 17, 0, tzinfo=UTC)  # 13:00 in New York (EDT)
NIGHT_NY = datetime(2026, 3, 11, 3, 0, tzinfo=UTC)  # 23:00 in New York
EVENT = (41, 3, "ab" * 32)


@dataclass
class FakeProgram:
    settings: dict = field(default_factory=dict)
    version: str = "v7"


def program(**spec) -> FakeProgram:
    return FakeProgram({"spec": {"slug": "deals", "frequency": "Up to 4 msgs/month", **spec}})


def facts(e164=NYC, **changes) -> Facts:
    values = dict(e164=e164, status="opted_in", region="US", kind="mobile", consent_event=EVENT)
    values.update(changes)
    return Facts(**values)


def record(one: Facts, decision: Decision, *, kind=Kind.MARKETING, now=NOON_NY, stage=Stage.API, prog=None) -> dict:
    text = Recorder(prog or program(), kind, now, default_rules(), stage).record(one, decision)
    return json.loads(text)


def test_an_allowed_marketing_text_keeps_every_fact_and_rule_it_was_judged_by():
    prog = program(max_messages=4, per="month", allowed_countries=["US", "CA"])
    kept = record(facts(sent_last_day=1), ALLOW, prog=prog)
    assert (kept["stage"], kept["outcome"], kept["reason"], kept["kind"]) == ("api", "allowed", None, "marketing")
    assert kept["at"] == NOON_NY.isoformat()
    assert kept["consent"] == {"status": "opted_in", "expires_at": None,
                               "event": {"id": 41, "seq": 3, "hash": "ab" * 32}}
    assert (kept["suppressed"], kept["reachability"], kept["line_type"], kept["region"]) == (
        False, "ok", "mobile", "US")
    assert kept["allowed_countries"] == ["US", "CA"]
    assert kept["program"] == {"slug": "deals", "version": "v7", "frequency": "Up to 4 msgs/month"}
    clock = kept["quiet_hours"]
    assert clock["applies"] is True
    assert clock["local"] == [{"zone": "America/New_York", "time": "2026-03-10T13:00:00-04:00",
                               "hours": clock["local"][0]["hours"], "open": True}]
    assert [rule["rule"] for rule in clock["rules"]] == ["federal"]
    assert all(rule["version"] and rule["law"] for rule in clock["rules"])
    cap = kept["program_cap"]
    assert (cap["max"], cap["per"], cap["reached"], cap["reached_at"]) == (4, "month", False, None)
    assert cap["period_start"] == "2026-03-01T05:00:00+00:00"  # midnight on the 1st in New York
    assert cap["rule"]["citation"] == "Up to 4 msgs/month"
    assert kept["sent_last_day"] == 1


def test_a_record_names_no_phone_number():
    for e164 in (NYC, MIAMI):
        text = Recorder(program(), Kind.MARKETING, NOON_NY, default_rules(), Stage.WORKER).record(
            facts(e164), ALLOW)
        assert e164 not in text and e164[1:] not in text and e164[2:] not in text


def test_a_deferral_records_the_local_time_and_the_rule_that_closed_the_window():
    one = facts()
    decision = decide(one, program(), Kind.MARKETING, NIGHT_NY, default_rules())
    assert decision.reason is Reason.QUIET_HOURS
    kept = record(one, decision, now=NIGHT_NY, stage=Stage.WORKER)
    assert (kept["outcome"], kept["reason"]) == ("deferred", "quiet_hours")
    assert kept["not_before"] == decision.not_before.isoformat()
    assert kept["decided_by"] == dict(decision.rule)
    assert kept["quiet_hours"]["local"][0]["time"] == "2026-03-10T23:00:00-04:00"
    assert kept["quiet_hours"]["local"][0]["open"] is False


def test_a_state_daily_cap_is_recorded_with_its_count_and_rule():
    rules = default_rules()
    one = facts(MIAMI, sent_last_day=3)
    decision = decide(one, program(), Kind.MARKETING, NOON_NY, rules)
    kept = record(one, decision)
    clock = kept["quiet_hours"]
    assert clock["daily_cap"] == 3 and clock["daily_cap_rule"]["rule"] == "US-FL"
    assert (kept["outcome"], kept["reason"], kept["sent_last_day"]) == ("refused", "frequency_cap", 3)
    assert "US-FL" in [rule["rule"] for rule in clock["rules"]]


def test_a_refusal_for_suppression_still_records_what_the_consent_was():
    one = facts(suppressed=True)
    kept = record(one, decide(one, program(), Kind.MARKETING, NOON_NY, default_rules()))
    assert (kept["outcome"], kept["reason"], kept["suppressed"]) == ("refused", "suppressed", True)
    assert kept["consent"]["status"] == "opted_in" and kept["consent"]["event"]["seq"] == 3


def test_a_program_cap_reached_in_the_period_is_recorded_as_reached():
    prog = program(max_messages=2, per="week")
    reached = datetime(2026, 3, 10, 14, 0, tzinfo=UTC)  # a Tuesday, this week
    one = facts(cap_reached_at=reached)
    decision = decide(one, prog, Kind.MARKETING, NOON_NY, default_rules())
    kept = record(one, decision, prog=prog)
    assert (kept["reason"], kept["program_cap"]["reached"]) == ("frequency_cap", True)
    assert kept["program_cap"]["reached_at"] == reached.isoformat()
    assert kept["program_cap"]["period_start"] == "2026-03-09T04:00:00+00:00"  # Monday 00:00 in New York


def test_quiet_hours_do_not_apply_to_a_transactional_text_and_the_record_says_so():
    kept = record(facts(), ALLOW, kind=Kind.TRANSACTIONAL, now=NIGHT_NY)
    assert kept["quiet_hours"]["applies"] is False
    assert kept["sent_last_day"] is None
    assert any("do not apply to a transactional text" in line for line in explain(kept))


def test_an_erased_number_is_recorded_as_suppressed_with_no_place():
    kept = record(Facts(e164="", suppressed=True), Decision(False, Reason.SUPPRESSED), stage=Stage.WORKER)
    assert (kept["outcome"], kept["reason"], kept["quiet_hours"], kept["region"]) == (
        "refused", "suppressed", None, None)
    assert any("erased" in line for line in explain(kept))


@pytest.mark.parametrize(("now", "outcome"), [(NOON_NY, "allowed"), (NIGHT_NY, "deferred")])
def test_records_of_a_batch_share_the_places_and_equal_the_one_at_a_time_records(now, outcome):
    """A batch's records are built from parts shared between numbers: each must still be exactly the
    record of its own facts (its own ledger event, consent, counts) and its own decision."""
    rules, prog = default_rules(), program(max_messages=4, per="month")
    pick = random.Random(5).choice  # the facts vary independently, so numbers of one place share some
    many = {n: facts(f"+1{pick(('212', '305'))}555{n:04d}", sent_last_day=pick((0, 1, 2)),
                     consent_event=pick(((1000 + n, n % 7, f"{n:064x}"), None)),
                     expires_at=pick((None, now)), cap_reached_at=pick((None, datetime(2026, 1, 5, tzinfo=UTC))))
            for n in range(80)}
    places = Places(rules, now)
    shared = Recorder(prog, Kind.MARKETING, now, rules, Stage.BATCH, places)
    for one in many.values():
        decision = decide(one, prog, Kind.MARKETING, now, rules, places)
        kept = json.loads(shared.record(one, decision))
        alone = Recorder(prog, Kind.MARKETING, now, rules, Stage.BATCH)  # as the one-number paths make it
        assert kept == json.loads(alone.record(one, decision))
        assert kept["consent"]["event"] == (None if one.consent_event is None else dict(
            zip(("id", "seq", "hash"), one.consent_event)))
        assert kept["sent_last_day"] == one.sent_last_day
        assert kept["outcome"] == outcome


def test_plain_words_say_the_outcome_first_then_each_rule():
    one = facts(sent_last_day=1)
    decision = decide(one, program(), Kind.MARKETING, NIGHT_NY, default_rules())
    lines = explain(record(one, decision, now=NIGHT_NY, stage=Stage.WORKER))
    assert lines[0].startswith("Deferred by the worker right before sending, 2026-03-11T03:00:00+00:00: "
                               "quiet hours at the recipient, until ")
    text = "\n".join(lines)
    assert "Consent read: opted_in, made so by ledger event #3 (id 41, hash " + "ab" * 32 + ")" in text
    assert "Not on the suppression list." in text
    assert "Reachability ok; line type mobile; region US (the program texts any country)." in text
    assert "recipient's local time 23:00 in America/New_York" in text and "closed" in text
    assert "Program cap: none" in text


def test_plain_words_name_a_refusal_and_its_reason():
    one = facts(status="opted_out")
    lines = explain(record(one, decide(one, program(), Kind.MARKETING, NOON_NY, default_rules()),
                           stage=Stage.WORKER))
    assert lines[0].startswith("Refused by the worker right before sending")
    assert lines[0].endswith("the person opted out of this program.")


def test_load_reads_what_the_recorder_writes_and_nothing_as_none():
    text = Recorder(program(), Kind.MARKETING, NOON_NY, default_rules(), "release").record(facts(), ALLOW)
    assert load(text)["stage"] == "release"
    assert load(None) is None and load("") is None


def test_a_stored_value_that_needs_escaping_still_makes_valid_json():
    odd = facts(status='opted_in"}', kind="mobile\\", region="U\"S", consent_event=(1, 1, 'x"y'))
    kept = record(odd, ALLOW)
    assert (kept["consent"]["status"], kept["line_type"], kept["region"]) == ('opted_in"}', "mobile\\", 'U"S')
    assert kept["consent"]["event"]["hash"] == 'x"y'

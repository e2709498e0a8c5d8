"""The send gate on a fixed clock, reading a real store: every reason, quiet hours, caps, fail closed.

The rules alone (their order, many numbers at once) are tested without a store: tests/unit/domain/test_gate.py.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from gateway.domain.consent import Input, Source
from gateway.domain.gate import ALLOW, Decision, Facts, Kind, Reason
from gateway.domain.numbers import parse
from gateway.services import consents, policy
from gateway.store import consents as store_consents
from gateway.store import outbox, programs
from gateway.store.database import Database

# 2026-03-04 is a Wednesday before the US moves its clocks (2026-03-08): New York is UTC-5.
NOON_NY = datetime(2026, 3, 4, 17, 0, tzinfo=UTC)
NIGHT_NY = datetime(2026, 3, 5, 3, 0, tzinfo=UTC)  # 22:00 in New York
MORNING_NY = datetime(2026, 3, 5, 13, 0, tzinfo=UTC)  # 08:00 in New York
NYC = "+12125550123"
MIAMI = "+13055550123"  # Florida: 08:00-20:00, at most 3 marketing texts in 24 h
OKLAHOMA_CITY = "+14055550123"
BALTIMORE = "+14105550123"
GUERNSEY = "+447911123456"
EVIDENCE = consents.Evidence(Source.API, actor="test")


def number(session, phone=NYC):
    return store_consents.number_row(session, parse(phone))


def given_state(session, phone, slug, *inputs, now=NOON_NY, expires_at=None):
    """Put (phone, program) through `inputs`; returns the number row."""
    row = number(session, phone)
    for step in inputs:
        consents.apply(session, row, programs.by_slug(session, slug), step, EVIDENCE, now=now,
                      expires_at=expires_at if step is Input.API_REQUEST else None)
    return row


def ask(gateway, session, row, slug, kind=None, now=NOON_NY, message_id=None):
    program = programs.by_slug(session, slug)
    return policy.gate_of(gateway).may_send(session, row, program, kind or Kind(program.category), now,
                                            message_id=message_id)


def sent_before(session, row, slug, count, at, status="queued"):
    """`count` marketing-or-not messages of `slug` to `row`, accepted at `at`, now in `status`."""
    program = programs.by_slug(session, slug)
    ids = []
    for _ in range(count):
        message = outbox.accept(session, number=row, program=program, kind=Kind(program.category), body="hi",
                                decision=ALLOW, now=at)
        if status != "queued":
            message.status = status
        ids.append(message.id)
    return ids


# --- every reason --------------------------------------------------------------------------------


def test_an_opted_in_number_may_be_texted(gateway, db):
    with db.transaction() as session:
        row = given_state(session, NYC, "deals", Input.IMPORT_OPT_IN)
        assert ask(gateway, session, row, "deals") == ALLOW


def test_never_asked_and_expired_are_no_consent(gateway, db):
    with db.transaction() as session:
        never = number(session, NYC)
        expired = given_state(session, MIAMI, "deals", Input.API_REQUEST, Input.DOI_EXPIRED,
                              expires_at=NOON_NY + timedelta(hours=48))
        assert ask(gateway, session, never, "deals") == Decision(False, Reason.NO_CONSENT)
        assert ask(gateway, session, expired, "deals").reason is Reason.NO_CONSENT


def test_pending_is_not_consent_but_may_receive_its_confirmation(gateway, db):
    with db.transaction() as session:
        row = given_state(session, NYC, "deals", Input.API_REQUEST, expires_at=NOON_NY + timedelta(hours=48))
        assert ask(gateway, session, row, "deals").reason is Reason.PENDING_CONFIRMATION
        assert ask(gateway, session, row, "deals", Kind.CONFIRMATION) == ALLOW
        # Confirmations answer the person's own request: quiet hours do not hold them back.
        assert ask(gateway, session, row, "deals", Kind.CONFIRMATION, now=NIGHT_NY) == ALLOW


def test_a_confirmation_needs_a_live_pending_request(gateway, db):
    with db.transaction() as session:
        row = given_state(session, NYC, "deals", Input.API_REQUEST, expires_at=NOON_NY + timedelta(hours=48))
        later = NOON_NY + timedelta(hours=48)
        assert ask(gateway, session, row, "deals", Kind.CONFIRMATION, now=later).reason is Reason.NO_PENDING_REQUEST
        opted_in = given_state(session, MIAMI, "deals", Input.IMPORT_OPT_IN)
        assert ask(gateway, session, opted_in, "deals", Kind.CONFIRMATION).reason is Reason.NO_PENDING_REQUEST
        assert ask(gateway, session, number(session, BALTIMORE), "deals", Kind.CONFIRMATION).reason \
            is Reason.NO_PENDING_REQUEST


def test_opted_out(gateway, db):
    with db.transaction() as session:
        row = given_state(session, NYC, "deals", Input.IMPORT_OPT_IN, Input.KEYWORD_STOP)
        assert ask(gateway, session, row, "deals").reason is Reason.OPTED_OUT
        # Another program's consent is its own.
        given_state(session, NYC, "alerts", Input.IMPORT_OPT_IN)
        assert ask(gateway, session, row, "alerts") == ALLOW


def test_suppressed_numbers_and_erased_rows(gateway, db):
    with db.transaction() as session:
        row = given_state(session, NYC, "deals", Input.IMPORT_OPT_IN)
        consents.suppress(session, gateway.settings.suppression_key, NYC, "erased")
        assert ask(gateway, session, row, "deals").reason is Reason.SUPPRESSED
        erased = given_state(session, MIAMI, "deals", Input.IMPORT_OPT_IN)
        erased.e164 = None
        assert ask(gateway, session, erased, "deals").reason is Reason.SUPPRESSED


@pytest.mark.parametrize(("reachability", "reason"), [("unreachable", Reason.UNREACHABLE),
                                                      ("landline", Reason.LANDLINE)])
def test_numbers_that_failed_delivery(gateway, db, reachability, reason):
    with db.transaction() as session:
        row = given_state(session, NYC, "orders", Input.IMPORT_OPT_IN)
        row.reachability = reachability
        session.flush()
        assert ask(gateway, session, row, "orders").reason is reason


def test_a_country_the_program_does_not_send_to(gateway, db):
    with db.transaction() as session:
        row = given_state(session, GUERNSEY, "alerts", Input.IMPORT_OPT_IN)
        assert row.region == "GG"
        assert ask(gateway, session, row, "alerts", now=NOON_NY).reason is Reason.COUNTRY_NOT_ALLOWED
        # Worked out from the number when the row does not say (rows from before the column).
        row.region = None
        assert ask(gateway, session, row, "alerts", now=NOON_NY).reason is Reason.COUNTRY_NOT_ALLOWED


def test_every_reason_is_reached_by_a_test_above():
    tested = {Reason.NO_CONSENT, Reason.PENDING_CONFIRMATION, Reason.OPTED_OUT, Reason.SUPPRESSED,
              Reason.NO_PENDING_REQUEST, Reason.UNREACHABLE, Reason.LANDLINE, Reason.COUNTRY_NOT_ALLOWED,
              Reason.FREQUENCY_CAP, Reason.QUIET_HOURS}
    assert tested == set(Reason)


# --- quiet hours ---------------------------------------------------------------------------------


def test_marketing_at_night_is_deferred_to_8am_local_and_then_released(gateway, db):
    with db.transaction() as session:
        row = given_state(session, NYC, "deals", Input.IMPORT_OPT_IN)
        deferred = ask(gateway, session, row, "deals", now=NIGHT_NY)
        assert (deferred.allowed, deferred.reason, deferred.not_before) == (False, Reason.QUIET_HOURS, MORNING_NY)
        assert deferred.rule["rule"] == "federal"
        assert deferred.deferred and not deferred.allowed
        assert ask(gateway, session, row, "deals", now=MORNING_NY - timedelta(seconds=1)).deferred
        assert ask(gateway, session, row, "deals", now=MORNING_NY) == ALLOW


def test_florida_closes_at_8pm(gateway, db):
    eight_pm_miami = datetime(2026, 3, 5, 1, 0, tzinfo=UTC)
    with db.transaction() as session:
        miami = given_state(session, MIAMI, "deals", Input.IMPORT_OPT_IN)
        nyc = given_state(session, NYC, "deals", Input.IMPORT_OPT_IN)
        assert ask(gateway, session, miami, "deals", now=eight_pm_miami - timedelta(minutes=1)) == ALLOW
        assert ask(gateway, session, miami, "deals", now=eight_pm_miami).not_before == MORNING_NY
        assert ask(gateway, session, nyc, "deals", now=eight_pm_miami) == ALLOW


@pytest.mark.parametrize("slug", ["orders", "alerts"])
def test_transactional_and_informational_texts_are_never_deferred_nor_capped(gateway, db, slug):
    with db.transaction() as session:
        row = given_state(session, MIAMI, slug, Input.IMPORT_OPT_IN)
        sent_before(session, row, slug, 5, NIGHT_NY - timedelta(hours=1))
        assert ask(gateway, session, row, slug, now=NIGHT_NY) == ALLOW


# --- caps ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("phone", [MIAMI, OKLAHOMA_CITY, BALTIMORE])
def test_florida_oklahoma_maryland_allow_three_marketing_texts_a_day(gateway, db, phone):
    with db.transaction() as session:
        row = given_state(session, phone, "deals", Input.IMPORT_OPT_IN)
        given_state(session, phone, "alerts", Input.IMPORT_OPT_IN)
        # Two from this program, one from another marketing program... all count for the state rule.
        first = sent_before(session, row, "deals", 2, NOON_NY - timedelta(hours=23))
        assert ask(gateway, session, row, "deals") == ALLOW
        sent_before(session, row, "deals", 1, NOON_NY - timedelta(hours=1))
        assert ask(gateway, session, row, "deals").reason is Reason.FREQUENCY_CAP
        # The worker's re-check does not count the message it is about to send.
        assert ask(gateway, session, row, "deals", message_id=first[0]) == ALLOW
        # 24 hours after the first two, they no longer count.
        assert ask(gateway, session, row, "deals", now=NOON_NY + timedelta(hours=1, seconds=1)) == ALLOW


def test_refused_and_non_marketing_messages_do_not_count(gateway, db):
    with db.transaction() as session:
        row = given_state(session, MIAMI, "deals", Input.IMPORT_OPT_IN)
        given_state(session, MIAMI, "orders", Input.IMPORT_OPT_IN)
        sent_before(session, row, "deals", 2, NOON_NY - timedelta(hours=2), status="blocked")
        sent_before(session, row, "deals", 2, NOON_NY - timedelta(hours=2), status="failed")
        sent_before(session, row, "orders", 3, NOON_NY - timedelta(hours=2))
        sent_before(session, row, "deals", 2, NOON_NY - timedelta(hours=2), status="delivered")
        assert ask(gateway, session, row, "deals") == ALLOW


def _capped(example_programs, slug, max_messages, per):
    deals = next(p for p in example_programs if p.slug == "deals")
    return replace(deals, slug=slug, join_keywords=(slug.upper(),), max_messages=max_messages, per=per,
                   frequency=f"Up to {max_messages} msgs/{per}")


def test_a_programs_own_cap_per_day(gateway, db, example_programs):
    with db.transaction() as session:
        programs.store(session, [_capped(example_programs, "flash", 2, "day")])
        row = given_state(session, NYC, "flash", Input.IMPORT_OPT_IN)
        given_state(session, NYC, "deals", Input.IMPORT_OPT_IN)
        sent_before(session, row, "deals", 3, NOON_NY - timedelta(hours=2))  # New York has no state cap
        sent_before(session, row, "flash", 1, NOON_NY - timedelta(hours=2))
        assert ask(gateway, session, row, "flash") == ALLOW
        sent_before(session, row, "flash", 1, NOON_NY - timedelta(hours=1))
        refused = ask(gateway, session, row, "flash")
        assert refused.reason is Reason.FREQUENCY_CAP
        assert (refused.rule["rule"], refused.rule["citation"]) == ("program:flash", "Up to 2 msgs/day")
        assert refused.rule["version"] == programs.by_slug(session, "flash").version
        # Other programs count on their own: deals has had 3 of its 4 this month.
        assert ask(gateway, session, row, "deals") == ALLOW
        # Midnight in New York starts a new day: no longer capped (only held for quiet hours now).
        assert ask(gateway, session, row, "flash", now=datetime(2026, 3, 5, 5, 0, tzinfo=UTC)).reason \
            is Reason.QUIET_HOURS


def test_a_program_cap_per_week_counts_from_monday_in_the_recipients_zone(gateway, db, example_programs):
    monday_00_30_la = datetime(2026, 3, 2, 8, 30, tzinfo=UTC)  # 03:30 Monday in New York
    los_angeles = "+13105550123"
    with db.transaction() as session:
        programs.store(session, [_capped(example_programs, "weekly", 2, "week")])
        la = given_state(session, los_angeles, "weekly", Input.IMPORT_OPT_IN)
        nyc = given_state(session, NYC, "weekly", Input.IMPORT_OPT_IN)
        # Two texts each on Sunday evening in Los Angeles (early Monday in New York).
        sent_before(session, la, "weekly", 2, datetime(2026, 3, 2, 6, 0, tzinfo=UTC))
        sent_before(session, nyc, "weekly", 2, datetime(2026, 3, 2, 6, 0, tzinfo=UTC))
        kind = Kind.INFORMATIONAL  # a cap binds whatever the program's category: a promise is a promise
        assert ask(gateway, session, la, "weekly", kind, now=monday_00_30_la) == ALLOW  # a new week there
        assert ask(gateway, session, nyc, "weekly", kind, now=monday_00_30_la).reason is Reason.FREQUENCY_CAP
        # Blocked texts do not count.
        sent_before(session, la, "weekly", 3, monday_00_30_la - timedelta(minutes=1), status="blocked")
        assert ask(gateway, session, la, "weekly", kind, now=monday_00_30_la) == ALLOW


def test_the_worker_counts_only_texts_accepted_before_its_own(gateway, db, example_programs):
    """Two texts accepted at once past a cap of one: the earlier goes, the later is refused, not both."""
    with db.transaction() as session:
        programs.store(session, [_capped(example_programs, "once", 1, "day")])
        row = given_state(session, NYC, "once", Input.IMPORT_OPT_IN)
        [first] = sent_before(session, row, "once", 1, NOON_NY - timedelta(seconds=2))
        [second] = sent_before(session, row, "once", 1, NOON_NY - timedelta(seconds=1))
        session.flush()
        assert ask(gateway, session, row, "once", message_id=first) == ALLOW
        assert ask(gateway, session, row, "once", message_id=second).reason is Reason.FREQUENCY_CAP


# --- fail closed ---------------------------------------------------------------------------------


def test_an_unreadable_store_raises_instead_of_answering(gateway, db, tmp_path):
    with db.transaction() as session:
        row = given_state(session, NYC, "deals", Input.IMPORT_OPT_IN)
        program = programs.by_slug(session, "deals")
    empty = Database(f"sqlite:///{tmp_path / 'empty.db'}")  # a store without its tables
    try:
        with empty.sessions() as broken, pytest.raises(Exception, match="no such table"):
            policy.gate_of(gateway).may_send(broken, row, program, Kind.MARKETING, NOON_NY)
    finally:
        empty.dispose()


def test_a_store_that_fails_mid_check_raises(gateway, db):
    with db.transaction() as session:
        row = given_state(session, NYC, "deals", Input.IMPORT_OPT_IN)
    with db.sessions() as session:
        program = programs.by_slug(session, "deals")
        session.connection().invalidate()  # the connection dies under the session
        with pytest.raises(Exception):
            policy.gate_of(gateway).may_send(session, row, program, Kind.MARKETING, NOON_NY)


# --- many at once: the same answers as one at a time ---------------------------------------------


def test_load_facts_for_many_matches_one_at_a_time(gateway, db):
    now = NOON_NY
    with db.transaction() as session:
        rows = [
            given_state(session, NYC, "deals", Input.IMPORT_OPT_IN),
            given_state(session, MIAMI, "deals", Input.API_REQUEST, expires_at=now + timedelta(hours=1)),
            given_state(session, OKLAHOMA_CITY, "deals", Input.IMPORT_OPT_IN, Input.KEYWORD_STOP),
            given_state(session, BALTIMORE, "alerts", Input.IMPORT_OPT_IN),
            given_state(session, GUERNSEY, "deals", Input.IMPORT_OPT_IN),
        ]
        rows[3].reachability = "landline"
        consents.suppress(session, gateway.settings.suppression_key, GUERNSEY, "test")
        sent_before(session, rows[0], "deals", 2, now - timedelta(hours=3))
        sent_before(session, rows[0], "deals", 2, now - timedelta(hours=2))  # deals: up to 4 a month
        sent_before(session, rows[0], "alerts", 1, now - timedelta(hours=3))
        # Excluded, as the worker excludes the message it checks: only texts accepted before it count
        # against a program's cap.
        excluded = sent_before(session, rows[1], "deals", 1, now - timedelta(hours=1))[0]
        session.flush()
        program = programs.by_slug(session, "deals")
        gate = policy.gate_of(gateway)
        for count_recent in (True, False):
            one_by_one = {}
            for row in rows:
                one_by_one.update(gate.facts(session, [row], program, now, count_recent=count_recent,
                                             exclude_message=excluded))
            together = gate.facts_by_e164(session, [r.e164 for r in rows] + ["+12025550111"], program, now,
                                          count_recent=count_recent, exclude_message=excluded)
            assert together.pop("+12025550111") == (None, Facts(e164="+12025550111"))
            assert {known.id: found for known, found in together.values()} == one_by_one
            # The fourth newest deals text reached the cap: one ranked scan for many, one indexed read for one.
            assert one_by_one[rows[0].id].cap_reached_at == now - timedelta(hours=3)
            assert one_by_one[rows[1].id].cap_reached_at is None
            if count_recent:  # alerts is informational: only the four deals texts count
                assert one_by_one[rows[0].id].sent_last_day == 4
                assert one_by_one[rows[1].id].sent_last_day == 0  # its only message is the one excluded
            # A batch reads the consent's ledger event only where the consent is opted in (it records nothing
            # else); every other fact is the same.
            opted_in_events = gate.facts_by_e164(session, [r.e164 for r in rows], program, now,
                                                 count_recent=count_recent, exclude_message=excluded,
                                                 events_of="opted_in")
            for known, found in opted_in_events.values():
                alone = one_by_one[known.id]
                assert alone.consent_event is not None or alone.status is None
                assert found == (alone if alone.status == "opted_in" else replace(alone, consent_event=None))


def test_store_rows_carry_the_region(db):
    with db.transaction() as session:
        assert number(session, "+14165550123").region == "CA"
        assert session.execute(text("SELECT region FROM numbers WHERE e164 = '+14165550123'")).scalar() == "CA"


def test_digests_in_bulk_are_the_digests_one_at_a_time():
    key = b"a suppression key of some length, longer than a block? no: 64 bytes is the block size" * 2
    numbers = [NYC, MIAMI, GUERNSEY, "+15005550006"]
    for secret in (key, b"short"):
        one_by_one = [consents.suppression_digest(secret, n) for n in numbers]
        assert consents.suppression_digests(secret, numbers) == one_by_one

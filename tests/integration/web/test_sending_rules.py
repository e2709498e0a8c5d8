"""Sending by the rules through the API, the worker and imports: a program's cap (409 frequency_cap),
state rule packs on fixed clocks with the rule cited in the message's history, the exemptions from
quiet hours, and Virginia's ten-year STOP."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from gateway.domain.consent import Input, Source
from gateway.domain.gate import ALLOW, Kind, Reason
from gateway.domain.numbers import parse
from gateway.services import consents, imports, inbound, policy, sending
from gateway.store import consents as store_consents
from gateway.store import outbox, programs
from gateway.store.models import Consent, OutboundMessage, PhoneNumber, Program
from tests.integration.web.test_api_messages import _number_in_quiet_hours, _world_program, consent, post
from tests.outbound_support import captured_queue, weekly  # noqa: F401  (fixtures)

NYC = "+12125550141"  # federal rules only
PORTLAND_OR = "+15035550141"
RICHMOND_VA = "+18045550141"
SHARED_SENDER = "+15005550006"
PACIFIC = ZoneInfo("America/Los_Angeles")
EVIDENCE = consents.Evidence(Source.IMPORT, actor="test")


@pytest.fixture(autouse=True)
def queue(captured_queue):
    return captured_queue


@pytest.fixture
def headers(make_key):
    return {"Authorization": f"Bearer {make_key('send', 'read')}"}



def history(client, headers, message_id):
    response = client.get(f"/v1/messages/{message_id}", headers=headers)
    assert response.status_code == 200
    return response.json["history"]


# --- the frequency the person agreed to is a cap --------------------------------------------------------


def test_a_third_message_against_up_to_2_a_week_is_409_frequency_cap(client, headers, db, weekly):
    consent(db, NYC, "weekly")
    consent(db, "+12125550142", "weekly")
    first, second = (post(client, headers, to=NYC, program="weekly", body=f"Sale {n}") for n in (1, 2))
    # Queued or deferred for quiet hours, depending on the real clock: either way they count.
    assert [first.status_code, second.status_code] == [202, 202]
    third = post(client, headers, to=NYC, program="weekly", body="Sale 3")
    assert third.status_code == 409
    error = third.json["error"]
    assert error["code"] == "frequency_cap"
    with db.sessions() as session:
        version = programs.by_slug(session, "weekly").version
        assert session.query(OutboundMessage).count() == 2  # the refusal stored nothing
    assert error["rule"] == {"rule": "program:weekly", "law": "the message frequency the person agreed to",
                             "version": version, "citation": "Up to 2 msgs/week", "source": None}
    # The cap is per number and program: another number, or another program, is not held back.
    assert post(client, headers, to="+12125550142", program="weekly", body="Sale").status_code == 202
    consent(db, NYC, "orders")
    assert post(client, headers, to=NYC, program="orders", body="Shipped").status_code == 202


def test_a_batch_counts_the_cap_per_recipient_including_its_own_messages(client, headers, db, weekly):
    had_two, had_one, had_none = "+12125550143", "+12125550144", "+12125550145"
    for phone in (had_two, had_one, had_none):
        consent(db, phone, "weekly")
    for phone, count in ((had_two, 2), (had_one, 1)):
        for _ in range(count):
            assert post(client, headers, to=phone, program="weekly", body="Earlier").status_code == 202

    def batch():
        response = client.post("/v1/messages/batch", headers=headers, json={
            "recipients": [had_two, had_one, had_none, had_none], "program": "weekly", "body": "Sale"})
        return response.json["accepted"], {r["to"]: r["reason"] for r in response.json["refused_recipients"]}

    # The same number twice in one batch is texted once; the batch's own messages count next time.
    assert batch() == (2, {had_two: "frequency_cap", had_none: "duplicate"})
    assert batch() == (1, {had_two: "frequency_cap", had_one: "frequency_cap", had_none: "duplicate"})
    assert batch() == (0, {had_two: "frequency_cap", had_one: "frequency_cap", had_none: "frequency_cap"})


# --- state rule packs, on fixed clocks, cited in the history --------------------------------------------


def _accepted(db, phone, slug, at, count=1):
    """`count` messages of `slug` to `phone`, accepted (queued) at `at`; their ids."""
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(phone))
        program = programs.by_slug(session, slug)
        if store_consents.consent_row(session, row, program) is None:
            consents.apply(session, row, program, Input.IMPORT_OPT_IN, EVIDENCE, now=at - timedelta(days=30))
        return [outbox.accept(session, number=row, program=program, kind=Kind(program.category), body="Sale",
                              decision=ALLOW, now=at).id for _ in range(count)]


def _may_send(gateway, db, phone, slug, now):
    with db.transaction() as session:
        row = store_consents.find_number(session, phone)
        program = programs.by_slug(session, slug)
        return policy.gate_of(gateway).may_send(session, row, program, Kind(program.category), now)


def test_oregon_hours_change_on_2026_01_01_and_the_deferral_cites_hb_3865(client, headers, gateway, db):
    # 20:30 in Portland: open under the federal rule on 31 December, closed under HB 3865 a day later.
    new_years_eve = datetime(2025, 12, 31, 20, 30, tzinfo=PACIFIC)
    new_years_day = datetime(2026, 1, 1, 20, 30, tzinfo=PACIFIC)
    [message_id] = _accepted(db, PORTLAND_OR, "deals", new_years_eve - timedelta(minutes=5))
    assert _may_send(gateway, db, PORTLAND_OR, "deals", new_years_eve) == ALLOW
    [message_id] = _accepted(db, PORTLAND_OR, "deals", new_years_day - timedelta(minutes=5))
    outcome = sending.send(gateway, message_id, now=new_years_day)
    assert (outcome.status, outcome.reason) == ("deferred", "quiet_hours")
    steps = history(client, headers, message_id)
    assert [s["status"] for s in steps] == ["queued", "sending", "deferred"]
    assert steps[-1]["rule"] == {
        "rule": "US-OR", "law": "Oregon HB 3865 (2025), telephone solicitation by text and RCS",
        "version": "HB 3865 (2026-01-01)", "citation": "Or. Laws 2025, HB 3865, signed 2025-07-24",
        "source": "https://production.jdsupra.com/legalnews/oregon-passes-new-telephone-8210765"}
    assert "rule" not in steps[0]  # a step no rule decided cites none
    with db.sessions() as session:
        assert session.get(OutboundMessage, message_id).not_before == datetime(2026, 1, 2, 8, tzinfo=PACIFIC)


def test_oregons_3_per_24_hours_blocks_in_the_worker_from_its_date_and_says_so(client, headers, gateway, db):
    before = datetime(2025, 12, 30, 12, tzinfo=PACIFIC)
    _accepted(db, PORTLAND_OR, "deals", before - timedelta(hours=3), count=3)
    assert _may_send(gateway, db, PORTLAND_OR, "deals", before) == ALLOW  # no state cap yet
    after = datetime(2026, 1, 2, 12, tzinfo=PACIFIC)
    _accepted(db, PORTLAND_OR, "alerts", after - timedelta(hours=3))  # informational: not counted
    earlier = _accepted(db, PORTLAND_OR, "deals", after - timedelta(hours=2), count=3)
    [fourth] = _accepted(db, PORTLAND_OR, "deals", after - timedelta(hours=1))
    outcome = sending.send(gateway, fourth, now=after)
    assert (outcome.status, outcome.reason) == ("blocked", "frequency_cap")
    steps = history(client, headers, fourth)
    assert steps[-1]["status"] == "blocked"
    assert (steps[-1]["rule"]["rule"], steps[-1]["rule"]["version"]) == ("US-OR", "HB 3865 (2026-01-01)")
    assert len(earlier) == 3


def test_a_programs_own_cap_blocks_in_the_worker_and_cites_the_promise(client, headers, gateway, db, weekly):
    """Two texts accepted at once past the cap (two API processes, each seeing one earlier): the worker's
    second look counts the program's texts accepted before this one and blocks it, citing the promise."""
    noon = datetime(2025, 12, 3, 12, tzinfo=PACIFIC)  # a Wednesday, before Oregon's own cap applies
    _accepted(db, PORTLAND_OR, "weekly", noon - timedelta(hours=2), count=2)
    [third] = _accepted(db, PORTLAND_OR, "weekly", noon - timedelta(hours=1))
    outcome = sending.send(gateway, third, now=noon)
    assert (outcome.status, outcome.reason) == ("blocked", "frequency_cap")
    rule = history(client, headers, third)[-1]["rule"]
    assert (rule["rule"], rule["citation"]) == ("program:weekly", "Up to 2 msgs/week")
    assert rule["version"] == weekly_version(db)


def weekly_version(db) -> str:
    with db.sessions() as session:
        return programs.by_slug(session, "weekly").version


def test_a_deferral_at_accept_time_is_cited_in_the_history(client, headers, db, gateway, example_programs):
    _world_program(db, example_programs)
    phone = _number_in_quiet_hours(gateway, quiet=True)
    consent(db, phone, "world")
    response = post(client, headers, to=phone, program="world", body="Sale!")
    assert (response.status_code, response.json["status"]) == (202, "deferred")
    [step] = history(client, headers, response.json["id"])
    assert step["reason"] == "quiet_hours"
    assert step["rule"]["rule"] == "federal" and step["rule"]["citation"].startswith("47 CFR 64.1200(c)(1)")


# --- what quiet hours never hold back ---------------------------------------------------------------------


NIGHT_NYC = datetime(2026, 12, 7, 3, 30, tzinfo=UTC)  # 22:30 in New York


def _text(body, sid, to=SHARED_SENDER, sender=NYC):
    return inbound.InboundText(message_sid=sid, from_=sender, to=to, body=body)


def test_help_stop_and_a_requested_confirmation_go_out_in_quiet_hours(gateway, db):
    # The person's own join keyword at 22:30: the confirmation is queued, not deferred, and the
    # worker's gate lets it go at that hour.
    handled = inbound.handle(gateway, _text("DEALS", "SM" + "1" * 32), now=NIGHT_NYC)
    [confirmation] = handled.queued
    with db.sessions() as session:
        assert session.get(OutboundMessage, confirmation).status == "queued"
        row = session.scalars(select(PhoneNumber).where(PhoneNumber.e164 == NYC)).one()
        program = programs.by_slug(session, "deals")
        assert policy.gate_of(gateway).may_send(session, row, program, Kind.CONFIRMATION, NIGHT_NYC,
                                                message_id=confirmation) == ALLOW
        # A marketing text at that hour would wait.
        assert policy.gate_of(gateway).decide(
            replace(policy.gate_of(gateway).facts(session, [row], program, NIGHT_NYC)[row.id], status="opted_in"),
            program, Kind.MARKETING, NIGHT_NYC).reason is Reason.QUIET_HOURS
    # HELP is answered at once, at night too: the webhook's own reply, never queued behind the clock.
    assert inbound.handle(gateway, _text("HELP", "SM" + "2" * 32), now=NIGHT_NYC).reply.startswith("Acme Deals:")
    # So is a STOP: on this sender Twilio's default filtering sends its own confirmation (so ours
    # would be a second one), and the opt-out takes effect at once, at 22:31.
    stopped = inbound.handle(gateway, _text("STOP", "SM" + "3" * 32), now=NIGHT_NYC + timedelta(minutes=1))
    assert stopped.intent == "opt_out" and stopped.reply is None
    with db.sessions() as session:
        assert store_consents.consent_row(session, store_consents.find_number(session, NYC),
                                    programs.by_slug(session, "deals")).status == "opted_out"


# --- Virginia: a STOP binds for ten years -----------------------------------------------------------------


STOPPED_AT = datetime(2026, 1, 5, 15, tzinfo=UTC)


def _opted_in_then_stopped(gateway, db, phone):
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(phone))
        consents.apply(session, row, programs.by_slug(session, "deals"), Input.IMPORT_OPT_IN, EVIDENCE,
                      now=STOPPED_AT - timedelta(days=10))
    inbound.handle(gateway, _text("STOP", "SM" + phone[1:].rjust(32, "0"), sender=phone), now=STOPPED_AT)


def _import(gateway, db, phone, slug, now):
    outcome = imports.import_text(db, f"phone,program,status\n{phone},{slug},opted_in\n", region="US", actor="ops",
                                  suppression_key=gateway.settings.suppression_key, rules=gateway.quiet_hours, now=now)
    return outcome.counts, imports.refusals(db, outcome.import_id)


def _status(db, phone, slug):
    with db.sessions() as session:
        return session.scalar(select(Consent.status).join(PhoneNumber).join(Program)
                              .where(PhoneNumber.e164 == phone, Program.slug == slug))


def test_an_import_cannot_lift_a_virginia_stop_for_ten_years(gateway, db):
    _opted_in_then_stopped(gateway, db, RICHMOND_VA)
    _opted_in_then_stopped(gateway, db, NYC)
    # "orders" is on another sender: the STOP left it untouched, so an import could opt the number in.
    later = datetime(2035, 12, 31, tzinfo=UTC)
    applied, refused = _import(gateway, db, RICHMOND_VA, "orders", later)
    assert dict(applied) == {}
    [(line, why)] = refused
    assert line == 2 and why.startswith("stop_binding: this number opted out on 2026-01-05")
    assert "Virginia SB 1339" in why and "until 2036-01-05" in why
    assert _status(db, RICHMOND_VA, "orders") is None
    # Elsewhere no such rule: the same import goes in.
    assert dict(_import(gateway, db, NYC, "orders", later)[0]) == {"import_opt_in": 1}
    # Ten years on, the STOP no longer binds.
    assert dict(_import(gateway, db, RICHMOND_VA, "orders", datetime(2036, 1, 6, tzinfo=UTC))[0]) \
        == {"import_opt_in": 1}


def test_only_the_persons_own_text_lifts_a_virginia_stop(gateway, db):
    _opted_in_then_stopped(gateway, db, RICHMOND_VA)
    soon = STOPPED_AT + timedelta(days=30)
    assert _import(gateway, db, RICHMOND_VA, "orders", soon)[1]
    inbound.handle(gateway, _text("START", "SM" + "4" * 32, sender=RICHMOND_VA), now=soon)
    assert _status(db, RICHMOND_VA, "deals") == "opted_in"
    assert dict(_import(gateway, db, RICHMOND_VA, "orders", soon + timedelta(minutes=1))[0]) \
        == {"import_opt_in": 1}


def _opted_in_then(gateway, db, phone, body):
    """`phone` opted in to deals and alerts (on one sender), then texted `body` to that sender."""
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(phone))
        for slug in ("deals", "alerts"):
            consents.apply(session, row, programs.by_slug(session, slug), Input.IMPORT_OPT_IN, EVIDENCE,
                          now=STOPPED_AT - timedelta(days=10))
    inbound.handle(gateway, _text(body, "SM" + phone[1:].rjust(32, "5"), sender=phone), now=STOPPED_AT)


@pytest.mark.parametrize("reply", ["wrong number", "no thanks"])
def test_a_wrong_number_or_an_ambiguous_reply_from_virginia_binds_like_stop(gateway, db, reply):
    # A wrong number ends every program; "no thanks" ends deals (the default) and leaves alerts for review.
    # Either is the person's own revocation: no import opts the number in to orders for ten years.
    _opted_in_then(gateway, db, RICHMOND_VA, reply)
    later = datetime(2035, 12, 31, tzinfo=UTC)
    applied, [(line, why)] = _import(gateway, db, RICHMOND_VA, "orders", later)
    assert dict(applied) == {} and why.startswith("stop_binding: this number opted out on 2026-01-05")
    assert _status(db, RICHMOND_VA, "orders") == ("opted_out" if reply == "wrong number" else None)


def test_an_opt_out_by_review_binds_like_stop(gateway, db):
    from gateway.services import review

    _opted_in_then(gateway, db, RICHMOND_VA, "not interested")
    with db.transaction() as session:
        [item] = review.pending(session).items
    # Staff read it a month later: the opt-out binds from then.
    review.resolve(gateway, item.event_id, "opt-out", by="ada", via="cli", now=STOPPED_AT + timedelta(days=30))
    applied, [(_, why)] = _import(gateway, db, RICHMOND_VA, "orders", datetime(2030, 1, 1, tzinfo=UTC))
    assert dict(applied) == {} and why.startswith("stop_binding: this number opted out on 2026-02-04")


def test_a_number_that_changed_hands_binds_nobody(gateway, db):
    """A carrier deactivation ends consent but is no one's STOP: the number's next holder may opt in."""
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(RICHMOND_VA))
        deals = programs.by_slug(session, "deals")
        consents.apply(session, row, deals, Input.IMPORT_OPT_IN, EVIDENCE, now=STOPPED_AT - timedelta(days=10))
        consents.apply(session, row, deals, Input.CARRIER_DEACTIVATION, consents.Evidence(Source.CARRIER),
                      now=STOPPED_AT)
    assert dict(_import(gateway, db, RICHMOND_VA, "orders", STOPPED_AT + timedelta(days=1))[0]) == {"import_opt_in": 1}


def test_the_stores_binding_stops_are_the_domains_revocations():
    from gateway.domain.consent import OWN_OPT_INS, REVOCATIONS

    assert set(store_consents.STOPS) == {input.value for input in REVOCATIONS}
    assert set(store_consents.OWN_OPT_INS) == {input.value for input in OWN_OPT_INS}
    assert {"wrong_number", "ambiguous_reply", "review_opt_out"} <= set(store_consents.STOPS)
    assert not {"carrier_deactivation", "reassigned_number"} & set(store_consents.STOPS)


def test_an_api_request_cannot_lift_a_virginia_stop(gateway, db, client, make_key):
    _opted_in_then_stopped(gateway, db, RICHMOND_VA)
    key = make_key("subscribe")
    response = client.post("/v1/subscriptions", headers={"Authorization": f"Bearer {key}"},
                           json={"phone": RICHMOND_VA, "program": "orders"})
    assert response.status_code == 409
    error = response.json["error"]
    assert error["code"] == "stop_binding"
    assert error["rule"]["rule"] == "US-VA" and error["binds_until"] == "2036-01-05T15:00:00Z"
    assert _status(db, RICHMOND_VA, "orders") is None
    with db.sessions() as session:
        assert session.query(OutboundMessage).count() == 0  # no confirmation text either

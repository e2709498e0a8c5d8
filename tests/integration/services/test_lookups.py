"""Carrier look-ups before a send and the Deactivations list, through the real twilio client against
the sandbox served over real HTTP."""

from dataclasses import replace
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from gateway.cli import main
from gateway.domain.consent import Input, Source
from gateway.domain.gate import ALLOW, Kind
from gateway.domain.numbers import parse
from gateway.services import consents, deactivations, lookups, sending
from gateway.store import consents as store_consents
from gateway.store import outbox, programs
from gateway.store.models import DeactivationDay, LedgerEvent, PhoneNumber, utcnow
from gateway.twilio.client import Provider
from gateway.twilio.sandbox.config import LookupNumber
from tests.e2e.test_outbound import at_provider
from tests.outbound_support import captured_queue, fresh_limits  # noqa: F401  (fixtures)
from tests.sandbox_support import message_row, sandbox_config

YESTERDAY = utcnow().date() - timedelta(days=1)


@pytest.fixture(autouse=True)
def queue(captured_queue, live_server, instant_sandbox):
    """Nothing here goes to the session's worker; the sandbox answers over HTTP."""
    return captured_queue


from tests.sandbox_support import instant_sandbox  # noqa: E402,F401  (a fixture)


def with_lookups(gateway, **settings):
    """The session's Gateway with look-up settings changed (its provider built afresh)."""
    changed = replace(gateway.settings, **({"lookup_line_type": True} | settings))
    return replace(gateway, settings=changed, make_provider=lambda: Provider.from_settings(changed))


def opted_in(db, phone: str, *slugs: str) -> None:
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(phone))
        for slug in slugs:
            consents.apply(session, row, programs.by_slug(session, slug), Input.IMPORT_OPT_IN,
                          consents.Evidence(Source.IMPORT, actor="test"))


def accepted(db, phone: str, slug: str = "orders") -> str:
    with db.transaction() as session:
        row = store_consents.find_number(session, phone)
        program = programs.by_slug(session, slug)
        return outbox.accept(session, number=row, program=program, kind=Kind(program.category), body="Shipped",
                             decision=ALLOW).id


def events(db, phone: str) -> list[LedgerEvent]:
    with db.sessions() as session:
        number = session.scalars(select(PhoneNumber).where(PhoneNumber.e164 == phone)).one()
        return list(session.scalars(select(LedgerEvent).where(LedgerEvent.number_id == number.id)
                                    .order_by(LedgerEvent.seq)))


def number(db, phone: str) -> PhoneNumber:
    with db.sessions() as session:
        return session.scalars(select(PhoneNumber).where(PhoneNumber.e164 == phone)).one()


def statuses(db, phone: str) -> dict[str, str]:
    with db.sessions() as session:
        row = session.scalars(select(PhoneNumber).where(PhoneNumber.e164 == phone)).one()
        return {consent.program.slug: consent.status for consent in consents.consents(session, row)}


# --- before a send --------------------------------------------------------------------------------


def test_a_landline_is_refused_after_the_lookup_and_the_answer_kept_as_evidence(gateway, db):
    phone = "+14155550111"
    opted_in(db, phone, "orders")
    outcome = sending.send(with_lookups(gateway), accepted(db, phone))
    assert (outcome.status, outcome.reason) == ("blocked", "landline")
    assert at_provider(db, to=phone) == []
    check = events(db, phone)[-1]
    assert (check.type, check.source, check.actor, check.program_id) == ("line_type_check", "carrier", "twilio", None)
    assert check.evidence["verdict"] == "landline"
    assert check.evidence["answer"]["line_type_intelligence"]["type"] == "landline"
    assert check.evidence["answer"]["line_type_intelligence"]["carrier_name"] == "Sandbox Telephone Co"
    stored = number(db, phone)
    assert (stored.line_type, stored.reachability) == ("landline", "landline")


def test_a_mobile_is_looked_up_once_and_sent(gateway, db):
    phone = "+14155550110"
    opted_in(db, phone, "orders")
    looking = with_lookups(gateway)
    assert sending.send(looking, accepted(db, phone)).status == "sent"
    assert lookups.before_send(looking, accepted(db, phone), utcnow()) is None  # the stored answer holds
    checks = [e for e in events(db, phone) if e.type == "line_type_check"]
    assert [c.evidence["verdict"] for c in checks] == ["ok"]  # the second send used the stored answer
    assert (number(db, phone).line_type, number(db, phone).carrier) == ("mobile", "310-999")


def test_non_fixed_voip_is_sent_and_flagged(gateway, db):
    phone = "+14155550113"
    opted_in(db, phone, "orders")
    assert sending.send(with_lookups(gateway), accepted(db, phone)).status == "sent"
    assert events(db, phone)[-1].evidence["verdict"] == "flagged_non_fixed_voip"


def test_with_lookups_off_nothing_is_asked(gateway, db):
    phone = "+14155550111"
    opted_in(db, phone, "orders")
    assert not gateway.settings.lookup_line_type  # the default
    assert sending.send(gateway, accepted(db, phone)).status == "sent"
    assert [e.type for e in events(db, phone)] == ["import"]


@pytest.mark.parametrize("phone", ["+14155550118", "+14155550119"])  # 429, then 503
def test_a_lookup_that_fails_lets_the_message_go_unchecked_and_asks_again_next_time(gateway, db, phone):
    opted_in(db, phone, "orders")
    looking = with_lookups(gateway)
    assert sending.send(looking, accepted(db, phone)).status == "sent"
    assert [e.type for e in events(db, phone)] == ["import"]
    assert number(db, phone).line_checked_at is None


def test_a_lookup_that_times_out_lets_the_message_go(app, gateway, db):
    phone = "+14155550131"
    opted_in(db, phone, "orders")
    slow = LookupNumber(number=phone, description="slow", delay=2.0)
    config = app.extensions["sandbox"].config
    changed = replace(gateway.settings, lookup_line_type=True)
    impatient = replace(gateway, settings=changed, make_provider=lambda: Provider(
        changed.twilio_account_sid, changed.twilio_auth_token, api_base_url=changed.twilio_api_base_url,
        status_callback=changed.public_url("/webhooks/twilio/status"), timeout=0.5))
    with sandbox_config(app, lookup_numbers={**config.lookup_numbers, phone: slow}):
        assert sending.send(impatient, accepted(db, phone)).status == "sent"
    assert number(db, phone).line_checked_at is None


def test_a_reassigned_number_loses_every_consent(gateway, db):
    phone = "+14155550116"
    opted_in(db, phone, "orders", "alerts")
    message_id = accepted(db, phone)
    sending.send(with_lookups(gateway, lookup_reassigned_number=True), message_id)
    # Ending the consents blocked the waiting message before any claim (as any opt-out does).
    assert message_row(db, message_id).status == "blocked"
    assert at_provider(db, to=phone) == []
    assert statuses(db, phone) == {"orders": "opted_out", "alerts": "opted_out"}
    ended = [e for e in events(db, phone) if e.input == "reassigned_number"]
    assert len(ended) == 2
    assert ended[0].evidence["reason"] == "reassigned number"
    assert ended[0].evidence["answer"]["reassigned_number"]["is_number_reassigned"] == "yes"
    assert ended[0].evidence["last_verified_date"] == utcnow().date().isoformat()  # the consent's date
    assert number(db, phone).possibly_reassigned_at is not None


@pytest.mark.parametrize(("phone", "verdict"), [("+14155550110", "no"), ("+14155550117", "no_data")])
def test_a_number_not_reassigned_is_sent_and_the_check_recorded(gateway, db, phone, verdict):
    opted_in(db, phone, "orders")
    looking = with_lookups(gateway, lookup_line_type=False, lookup_reassigned_number=True)
    assert sending.send(looking, accepted(db, phone)).status == "sent"
    assert lookups.before_send(looking, accepted(db, phone), utcnow()) is None
    checks = [e for e in events(db, phone) if e.type == "reassigned_check"]
    assert [c.evidence["verdict"] for c in checks] == [verdict]  # asked once
    assert statuses(db, phone) == {"orders": "opted_in"}


# --- the Deactivations list -----------------------------------------------------------------------


def test_the_daily_job_ends_a_deactivated_number_and_keeps_a_ported_one(gateway, db):
    deactivated, ported, untouched = "+14155550114", "+14155550115", "+14155550110"
    opted_in(db, deactivated, "orders", "alerts")
    opted_in(db, ported, "orders")
    opted_in(db, untouched, "orders")
    with db.transaction() as session:  # an earlier look-up found the ported number on another carrier
        session.scalars(select(PhoneNumber).where(PhoneNumber.e164 == ported)).one().carrier = "310-999"
    looking = with_lookups(gateway)
    run = deactivations.run_day(looking, YESTERDAY)
    assert (run.listed, run.held, run.ended, run.ported, run.finished) == (2, 2, 1, 1, True)
    assert statuses(db, deactivated) == {"orders": "opted_out", "alerts": "opted_out"}
    assert statuses(db, ported) == {"orders": "opted_in"}
    assert statuses(db, untouched) == {"orders": "opted_in"}
    ended = [e for e in events(db, deactivated) if e.input == "carrier_deactivation"]
    assert len(ended) == 2
    assert ended[0].evidence["reason"] == "carrier deactivation"
    assert ended[0].evidence["day"] == YESTERDAY.isoformat()
    assert ended[0].evidence["lookup"]["line_type_intelligence"]["error_code"] == 60600
    kept = events(db, ported)[-1]
    assert (kept.type, kept.evidence["verdict"]) == ("deactivation_check", "ported")
    assert number(db, ported).carrier == "311-998"
    # A re-run of the day changes nothing.
    before = {phone: len(events(db, phone)) for phone in (deactivated, ported)}
    assert deactivations.run_day(looking, YESTERDAY).already
    assert {phone: len(events(db, phone)) for phone in (deactivated, ported)} == before
    with db.sessions() as session:
        day = session.get(DeactivationDay, YESTERDAY)
        assert (day.listed, day.held, day.ended, day.ported) == (2, 2, 1, 1)


def test_without_lookups_every_listed_number_of_ours_ends(gateway, db):
    opted_in(db, "+14155550115", "orders")
    run = deactivations.run_day(gateway, YESTERDAY)
    assert (run.ended, run.ported) == (1, 0)
    assert events(db, "+14155550115")[-1].evidence["lookup"] is None


def test_an_unreachable_file_leaves_the_day_for_the_next_run(app, gateway, db):
    opted_in(db, "+14155550114", "orders")
    with sandbox_config(app, deactivations_file_status=503):
        run = deactivations.run_day(gateway, YESTERDAY)
    assert not run.finished and "503" in run.error
    assert statuses(db, "+14155550114") == {"orders": "opted_in"}
    with db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(DeactivationDay)) == 0
    assert YESTERDAY in deactivations.days_due(gateway)
    assert deactivations.run_day(gateway, YESTERDAY).ended == 1  # the next run
    assert YESTERDAY not in deactivations.days_due(gateway)


def test_a_lookup_that_fails_leaves_the_number_and_the_day_for_the_next_run(app, gateway, db):
    phone = "+14155550114"
    opted_in(db, phone, "orders")
    config = app.extensions["sandbox"].config
    failing = replace(config.lookup_numbers[phone], http_status=503)
    with sandbox_config(app, lookup_numbers={**config.lookup_numbers, phone: failing}):
        run = deactivations.run_day(with_lookups(gateway), YESTERDAY)
    assert (run.left, run.finished) == (1, False)
    assert statuses(db, phone) == {"orders": "opted_in"}
    assert deactivations.run_day(with_lookups(gateway), YESTERDAY).ended == 1


def test_the_command_reads_a_day_and_refuses_bad_dates(gateway, db, test_env, monkeypatch):
    opted_in(db, "+14155550114", "orders")
    for name, value in test_env.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    for bad in ("2026-13-01", "yesterday", (utcnow().date()).isoformat()):
        result = runner.invoke(main, ["deactivations", "run", "--date", bad])
        assert result.exit_code == 2, result.output
        assert "--date" in result.output
    assert statuses(db, "+14155550114") == {"orders": "opted_in"}
    result = runner.invoke(main, ["deactivations", "run", "--date", YESTERDAY.isoformat()])
    assert result.exit_code == 0, result.output
    assert "listed 2, ours 1, ended 1, ported 0" in result.output
    again = runner.invoke(main, ["deactivations", "run", "--date", YESTERDAY.isoformat()])
    assert "read already, nothing changed" in again.output

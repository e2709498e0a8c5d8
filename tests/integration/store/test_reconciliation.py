"""Inbound reconciliation's SQL on both databases: watermarks that only move forward, the look-up of
stored MessageSids, the senders to read, and what tells a late text from the person's later word."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from sqlalchemy import select

from gateway.domain.consent import Input, Source
from gateway.domain.numbers import parse
from gateway.services import consents, inbound
from gateway.store import consents as store_consents
from gateway.store import programs, reconciliation
from gateway.store.models import InboundMessage, PhoneNumber, utcnow
from tests.integration.services.test_inbound import text

PERSON = "+14155552671"
SENDER = "+15005550006"  # deals and alerts
ORDERS_SENDER = "+18885550199"
NOW = utcnow().replace(microsecond=0)


def _watermark(db, key: str):
    with db.statements() as connection:
        return reconciliation.watermarks(connection, [key]).get(key)


def test_a_watermark_only_moves_forward(db):
    with db.statements() as connection:
        reconciliation.advance(connection, SENDER, NOW)
        reconciliation.advance(connection, SENDER, NOW - timedelta(minutes=5))  # a slower, older run
    assert _watermark(db, SENDER) == NOW
    with db.statements() as connection:
        reconciliation.advance(connection, SENDER, NOW + timedelta(minutes=5))
    assert _watermark(db, SENDER) == NOW + timedelta(minutes=5)


def test_known_message_sids_finds_only_stored_texts(gateway, db):
    stored = text("hello")
    inbound.handle(gateway, stored)
    with db.statements() as connection:
        assert reconciliation.known_message_sids(connection, [stored.message_sid, "SM" + "f" * 32]) == {
            stored.message_sid}
        assert reconciliation.known_message_sids(connection, []) == set()


def test_senders_are_each_programs_number_or_service_once(gateway, db, example_programs):
    service = "MG" + "d" * 32
    extra = [dataclasses.replace(example_programs[0], slug="svc-a", sender=None, messaging_service=service,
                                 service_numbers=("+15005550011",)),
             dataclasses.replace(example_programs[0], slug="svc-b", sender=None, messaging_service=service)]
    with db.transaction() as session:
        programs.store(session, list(example_programs) + extra)
    with db.statements() as connection:
        found = {sender.key: sender for sender in reconciliation.senders(connection)}
    assert set(found) == {SENDER, ORDERS_SENDER, service}
    assert found[SENDER].numbers == (SENDER,) and found[SENDER].messaging_service_sid is None
    assert found[service].numbers == ("+15005550011",) and found[service].messaging_service_sid == service


def test_watermarks_of_senders_never_read_are_missing(db):
    with db.statements() as connection:
        assert reconciliation.watermarks(connection, [SENDER, ORDERS_SENDER]) == {}
        assert reconciliation.watermarks(connection, []) == {}


def test_consent_moves_after_a_time_count_but_records_and_earlier_moves_do_not(gateway, db):
    earlier = NOW - timedelta(minutes=10)
    with db.transaction() as session:
        number, deals, orders = (store_consents.number_row(session, parse(PERSON)), programs.by_slug(session, "deals"),
                                 programs.by_slug(session, "orders"))
        consents.apply(session, number, deals, Input.API_REQUEST, consents.Evidence(Source.API), now=earlier,
                       expires_at=earlier + timedelta(hours=48))
        deals_id, orders_id = deals.id, orders.id
    inbound.handle(gateway, text("HELP"), now=NOW)  # a record, on deals: no move
    with db.statements() as connection:
        assert reconciliation.consent_moved_after(connection, PERSON, [deals_id], earlier - timedelta(seconds=1))
        assert not reconciliation.consent_moved_after(connection, PERSON, [deals_id], earlier)
        assert not reconciliation.consent_moved_after(connection, PERSON, [orders_id], earlier - timedelta(seconds=1))
        assert not reconciliation.consent_moved_after(connection, "+14155550000", [deals_id], earlier)


def test_intents_texted_after_a_time_to_some_senders(gateway, db):
    inbound.handle(gateway, text("START"), now=NOW - timedelta(minutes=2))
    inbound.handle(gateway, text("STOP", to=ORDERS_SENDER), now=NOW)
    with db.statements() as connection:
        after = NOW - timedelta(minutes=5)
        assert reconciliation.intents_texted_after(connection, PERSON, [SENDER], after) == {"opt_in"}
        assert reconciliation.intents_texted_after(connection, PERSON, None, after) == {"opt_in", "opt_out"}
        assert reconciliation.intents_texted_after(connection, PERSON, [SENDER], NOW - timedelta(minutes=1)) == set()
        assert reconciliation.intents_texted_after(connection, PERSON, ["MG" + "d" * 32], after) == set()


def test_an_overtaken_text_is_stored_for_its_number_without_a_reply(gateway, db):
    inbound.handle(gateway, text("hello"))  # the number has a row
    with db.statements() as connection:
        reconciliation.record_overtaken(connection, message_sid="SM" + "e" * 32, account_sid=None, e164=PERSON,
                                        to=SENDER, messaging_service_sid=None, body="START", intent="opt_in",
                                        received_at=NOW)
        assert reconciliation.known_message_sids(connection, ["SM" + "e" * 32]) == {"SM" + "e" * 32}
    with db.sessions() as session:
        row = session.scalars(select(InboundMessage).where(InboundMessage.message_sid == "SM" + "e" * 32)).one()
        number_id = session.scalar(select(PhoneNumber.id).where(PhoneNumber.e164 == PERSON))
    assert (row.number_id, row.intent, row.reply, row.body) == (number_id, "opt_in", None, "START")
    assert row.received_at == NOW

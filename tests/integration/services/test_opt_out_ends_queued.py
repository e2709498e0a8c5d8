"""An opt-out ends what is already queued: the number's queued and deferred messages of the programs it
ends are blocked in the same write as the opt-out, before any worker looks at them.

Over HTTP where the opt-out comes over HTTP (the SMS webhook, the API), and read back through
GET /v1/messages/{id} straight after the answer; then the worker's own path (`sending.send`, the
sweeper) is run and must send none of them.
"""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from sqlalchemy import select

from gateway.domain.consent import Input, Source
from gateway.domain.gate import ALLOW, Decision, Kind, Reason
from gateway.domain.numbers import parse
from gateway.services import carrier, consents, privacy, sending
from gateway.store import consents as store_consents
from gateway.store import database, outbox, programs
from gateway.store.models import OutboundMessage, utcnow
from gateway.twilio.sandbox.models import SandboxMessage
from tests.outbound_support import captured_queue, fresh_limits  # noqa: F401  (fixtures)
from tests.sandbox_support import instant_sandbox, sandbox_config  # noqa: F401  (a fixture)

PHONE = "+14155550177"
OTHER_PHONE = "+14155550178"
DEALS_SENDER = "+15005550006"  # deals and alerts
ORDERS_SENDER = "+18885550199"  # orders
EVIDENCE = consents.Evidence(Source.IMPORT, actor="test")
_sids = itertools.count(1)


@pytest.fixture(autouse=True)
def queue(captured_queue):
    return captured_queue


@pytest.fixture
def reader(make_key):
    return {"Authorization": f"Bearer {make_key('read')}"}


def waiting_messages(db, phone=PHONE) -> dict[str, str]:
    """For each of deals, alerts and orders: a message waiting for `phone` (deals' deferred to the
    morning, the others queued), the number opted in to all three. Returns slug -> message id."""
    now = utcnow()
    ids = {}
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(phone))
        for slug in ("deals", "alerts", "orders"):
            program = programs.by_slug(session, slug)
            consents.apply(session, row, program, Input.IMPORT_OPT_IN, EVIDENCE, now=now)
            decision = Decision(False, Reason.QUIET_HOURS, now + timedelta(hours=9)) if slug == "deals" else ALLOW
            ids[slug] = outbox.accept(session, number=row, program=program, kind=Kind(program.category),
                                      body=f"{slug} text", decision=decision, now=now).id
    return ids


def shown(client, reader, message_id) -> tuple[str, str | None]:
    body = client.get(f"/v1/messages/{message_id}", headers=reader).json
    return body["status"], body["reason"]


def text_from(twilio_post, phone, to, body):
    params = {"MessageSid": f"SM{next(_sids):032x}", "AccountSid": "AC" + "1" * 32, "From": phone, "To": to,
              "Body": body, "NumMedia": "0"}
    response = twilio_post("/webhooks/twilio/sms", params)
    assert response.status_code == 200
    return response


def provider_texts(db) -> list[str]:
    with db.sessions() as session:
        return list(session.scalars(select(SandboxMessage.body).where(SandboxMessage.direction == "outbound-api")))


def run_the_worker_on(gateway, ids, now=None):
    """What the worker would do with each id, due or not: the sweeper, then a send task for each."""
    later = (now or utcnow()) + timedelta(days=1)
    sending.sweep(gateway, later)
    return {message_id: sending.send(gateway, message_id, now=later).status for message_id in ids}


def test_a_stop_blocks_the_senders_queued_and_deferred_messages_at_once(
        gateway, db, client, reader, twilio_post, live_server, instant_sandbox):
    ids = waiting_messages(db)
    assert shown(client, reader, ids["deals"]) == ("deferred", "quiet_hours")
    text_from(twilio_post, PHONE, DEALS_SENDER, "STOP")
    # Straight after the webhook's answer, before any worker ran: deals and alerts (this sender's
    # programs) are blocked; orders, on another sender, still waits.
    assert shown(client, reader, ids["deals"]) == ("blocked", "opted_out")
    assert shown(client, reader, ids["alerts"]) == ("blocked", "opted_out")
    assert shown(client, reader, ids["orders"]) == ("queued", None)
    history = client.get(f"/v1/messages/{ids['deals']}", headers=reader).json["history"]
    assert [(step["status"], step["reason"]) for step in history] == [("deferred", "quiet_hours"),
                                                                        ("blocked", "opted_out")]
    outcomes = run_the_worker_on(gateway, [ids["deals"], ids["alerts"]])
    assert outcomes == {ids["deals"]: "skipped", ids["alerts"]: "skipped"}  # not theirs to send any more
    assert provider_texts(db) == []
    assert run_the_worker_on(gateway, [ids["orders"]]) == {ids["orders"]: "sent"}
    assert provider_texts(db) == ["orders text"]


def test_stopall_blocks_every_program(gateway, db, client, reader, twilio_post):
    ids = waiting_messages(db)
    text_from(twilio_post, PHONE, DEALS_SENDER, "STOPALL")
    assert {slug: shown(client, reader, message_id) for slug, message_id in ids.items()} == {
        slug: ("blocked", "opted_out") for slug in ids}


def test_a_stop_leaves_other_numbers_messages_alone(db, client, reader, twilio_post):
    mine, theirs = waiting_messages(db), waiting_messages(db, OTHER_PHONE)
    text_from(twilio_post, PHONE, DEALS_SENDER, "STOP")
    assert shown(client, reader, mine["alerts"]) == ("blocked", "opted_out")
    assert {slug: shown(client, reader, message_id)[0] for slug, message_id in theirs.items()} == {
        "deals": "deferred", "alerts": "queued", "orders": "queued"}


def test_a_stop_to_the_other_sender_leaves_this_senders_messages_alone(db, client, reader, twilio_post):
    ids = waiting_messages(db)
    text_from(twilio_post, PHONE, ORDERS_SENDER, "STOP")
    assert shown(client, reader, ids["orders"]) == ("blocked", "opted_out")
    assert shown(client, reader, ids["deals"]) == ("deferred", "quiet_hours")
    assert shown(client, reader, ids["alerts"]) == ("queued", None)


def test_an_api_opt_out_of_one_program_blocks_only_its_messages(db, client, reader, make_key):
    ids = waiting_messages(db)
    response = client.post(f"/v1/consents/{PHONE}/opt-out", json={"program": "alerts"},
                           headers={"Authorization": f"Bearer {make_key('subscribe')}"})
    assert response.status_code == 200
    assert shown(client, reader, ids["alerts"]) == ("blocked", "opted_out")
    assert shown(client, reader, ids["deals"]) == ("deferred", "quiet_hours")
    assert shown(client, reader, ids["orders"]) == ("queued", None)


def test_a_carrier_opt_out_blocks_the_senders_messages(db, client, reader):
    ids = waiting_messages(db)
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(PHONE))
        carrier.record_opt_out(session, row, ORDERS_SENDER, consents.Evidence(Source.CARRIER, actor="twilio"))
    assert shown(client, reader, ids["orders"]) == ("blocked", "opted_out")
    assert shown(client, reader, ids["alerts"]) == ("queued", None)


def test_an_erasure_blocks_everything_still_waiting(gateway, db, client, reader):
    ids = waiting_messages(db)
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(PHONE))
        privacy.erase(session, row, gateway.settings.suppression_key, consents.Evidence(Source.API, actor="test"))
    # The consent is forgotten: what the gate would answer now, and never a text whose body was erased.
    assert {slug: shown(client, reader, message_id) for slug, message_id in ids.items()} == {
        slug: ("blocked", "no_consent") for slug in ids}


def test_a_claimed_message_is_left_to_the_workers_own_check(gateway, db, client, reader, twilio_post):
    ids = waiting_messages(db)
    with db.statements(atomic=True) as connection:
        assert outbox.claim(connection, ids["alerts"]) is not None  # a worker holds it, about to ask the gate
    text_from(twilio_post, PHONE, DEALS_SENDER, "STOP")
    assert shown(client, reader, ids["alerts"]) == ("sending", None)
    assert shown(client, reader, ids["deals"]) == ("blocked", "opted_out")


def test_a_final_message_keeps_its_status(gateway, db, client, reader, twilio_post):
    ids = waiting_messages(db)
    with db.transaction() as session:
        outbox.advance(session, session.get(OutboundMessage, ids["alerts"]), outbox.Status.FAILED,
                       reason="provider_error")
    text_from(twilio_post, PHONE, DEALS_SENDER, "STOP")
    assert shown(client, reader, ids["alerts"]) == ("failed", "provider_error")


def test_the_stop_stays_one_read_and_one_write_on_postgresql(db, twilio_post, monkeypatch):
    """The blocking rides in the opt-out's own guarded write (docs/decisions/0006): no round trip more."""
    if db.dialect != "postgresql":
        pytest.skip("SQLite runs the writes one by one inside one transaction")
    ids = waiting_messages(db)
    text_from(twilio_post, OTHER_PHONE, DEALS_SENDER, "HELLO")  # the senders' programs are cached now
    run, statements = database.on_driver, []

    def counted(store, sql, params, **options):
        statements.append(sql.split(None, 1)[0])
        return run(store, sql, params, **options)

    monkeypatch.setattr(database, "on_driver", counted)
    text_from(twilio_post, PHONE, DEALS_SENDER, "STOP")
    assert statements == ["SELECT", "WITH"]
    with db.sessions() as session:
        assert session.get(OutboundMessage, ids["alerts"]).status == "blocked"


def opted_in(db, phone) -> None:
    """`phone` opted in to deals and alerts, with nothing queued for it."""
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(phone))
        for slug in ("deals", "alerts"):
            consents.apply(session, row, programs.by_slug(session, slug), Input.IMPORT_OPT_IN, EVIDENCE, now=utcnow())


def test_the_read_of_an_opt_out_says_whether_anything_waits(db):
    ids = waiting_messages(db)
    opted_in(db, OTHER_PHONE)
    with db.sessions() as session:
        both = [programs.by_slug(session, slug).id for slug in ("deals", "alerts")]
    with db.statements() as connection:
        assert store_consents.held(connection, PHONE, both, waiting=True).waiting is True
        assert store_consents.held(connection, OTHER_PHONE, both, waiting=True).waiting is False
        # Not asked: whatever a change ends is blocked (nothing said there is nothing to block).
        assert store_consents.held(connection, OTHER_PHONE, both).waiting is True
    with db.transaction() as session:  # sent: nothing waits any more
        for message_id in ids.values():
            session.get(OutboundMessage, message_id).status = "sent"
    with db.statements() as connection:
        assert store_consents.held(connection, PHONE, both, waiting=True).waiting is False


def test_an_opt_out_with_nothing_waiting_leaves_the_outbox_out_of_its_write(db, twilio_post, monkeypatch):
    """Fewer tables in the write: PostgreSQL locks and opens every table and index a statement names."""
    if db.dialect != "postgresql":
        pytest.skip("SQLite runs the writes one by one inside one transaction")
    ids = waiting_messages(db)
    opted_in(db, OTHER_PHONE)
    run, writes = database.on_driver, []

    def counted(store, sql, params, **options):
        if sql.startswith("WITH"):
            writes.append(sql)
        return run(store, sql, params, **options)

    monkeypatch.setattr(database, "on_driver", counted)
    text_from(twilio_post, OTHER_PHONE, DEALS_SENDER, "STOP")
    text_from(twilio_post, PHONE, DEALS_SENDER, "STOP")
    assert [" messages " in sql for sql in writes] == [False, True]
    with db.sessions() as session:
        assert session.get(OutboundMessage, ids["alerts"]).status == "blocked"

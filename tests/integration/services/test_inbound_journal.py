"""The inbound journal with real faults: a web app whose store cannot be reached journals the signed
text and answers empty TwiML; the replayer applies it once the store answers, exactly once.

The broken app is the same code and settings but for its store: on PostgreSQL a port where nothing
listens (connection refused), on SQLite a directory where the database file should be (unable to
open). Each test has a var directory (so a journal) of its own: a journal left in the session's
would send every later text into it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from gateway.config import ROOT
from gateway.services import inbound, inbound_journal
from gateway.services.ports import Gateway
from gateway.store.journal import Journal
from gateway.store.models import Consent, InboundMessage, LedgerEvent, PhoneNumber, Program
from gateway.web.app import create_app
from tests.conftest import wait_for
from tests.integration.services.test_inbound import give_consent

SMS = "/webhooks/twilio/sms"
PERSON = "+14155552671"
SENDER = "+15005550006"  # deals and alerts
EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response />'
_sids = itertools.count(1)


def form(body, *, sid=None, to=SENDER, **fields):
    return {"MessageSid": sid or f"SM{next(_sids):032x}", "AccountSid": "AC" + "1" * 32, "From": PERSON, "To": to,
            "Body": body, "NumMedia": "0", **fields}


def _unreachable_store(settings, tmp_path) -> str:
    if settings.is_sqlite:
        return f"sqlite:///{tmp_path}"  # a directory: the database file cannot be opened
    url = settings.database_url
    scheme, _, rest = url.partition("://")
    credentials, _, location = rest.rpartition("@")
    name = location.split("/", 1)[1]
    return f"{scheme}://{credentials}@127.0.0.1:1/{name}"  # nothing listens on port 1


@pytest.fixture
def var_dir(tmp_path):
    return tmp_path / "var"


@pytest.fixture
def broken_app(settings, tmp_path, var_dir):
    broken = create_app(dataclasses.replace(settings, database_url=_unreachable_store(settings, tmp_path),
                                            var_dir=var_dir))
    yield broken
    _close(broken)


def _close(app):
    """Stop what a request started (the sandbox's courier, which stands in for the session app's)."""
    if "sandbox" in app.extensions:
        app.extensions["sandbox"].courier.stop()
    app.extensions["gateway"].db.dispose()


@pytest.fixture
def healthy(gateway, var_dir) -> Gateway:
    """The session's store and queue, with this test's var directory (so its journal)."""
    return dataclasses.replace(gateway, settings=dataclasses.replace(gateway.settings, var_dir=var_dir))


@pytest.fixture
def post(sign):
    def send(app, params):
        return app.test_client().post(SMS, data=urlencode(params), content_type="application/x-www-form-urlencoded",
                                      headers={"X-Twilio-Signature": sign(SMS, params)})

    return send


def stored(db):
    with db.sessions() as session:
        return tuple(session.scalar(select(func.count()).select_from(m))
                     for m in (InboundMessage, PhoneNumber, Consent, LedgerEvent))


def statuses(db):
    with db.sessions() as session:
        rows = session.execute(select(Program.slug, Consent.status).join(Consent, Consent.program_id == Program.id)
                               .join(PhoneNumber, PhoneNumber.id == Consent.number_id)
                               .where(PhoneNumber.e164 == PERSON))
        return dict(rows.all())


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite keeps no zone


def test_a_stop_the_store_cannot_take_is_journaled_and_answered_with_empty_twiml(broken_app, post, var_dir, db):
    """Today's code answers 500 and the STOP is lost: Twilio does not send it again."""
    before = datetime.now(UTC)
    response = post(broken_app, form("STOP", sid="SM" + "a" * 32))
    assert (response.status_code, response.mimetype, response.data) == (200, "application/xml", EMPTY_TWIML)
    assert stored(db) == (0, 0, 0, 0)
    [record] = Journal(var_dir).snapshot().records
    assert record["text"]["message_sid"] == "SM" + "a" * 32
    assert record["text"]["from_"] == PERSON and record["text"]["to"] == SENDER and record["text"]["body"] == "STOP"
    assert record["text"]["account_sid"] == "AC" + "1" * 32
    assert before <= datetime.fromisoformat(record["received_at"]) <= datetime.now(UTC)
    assert record["because"] == "OperationalError"


def test_replay_applies_a_journaled_text_once_at_its_delivery_time(broken_app, post, healthy, var_dir, db):
    sid = "SM" + "b" * 32
    post(broken_app, form("please stop texting me", sid=sid, MessagingServiceSid="MG" + "c" * 32))
    received_at = datetime.fromisoformat(Journal(var_dir).snapshot().records[0]["received_at"])

    replayed = inbound_journal.replay(healthy)
    assert (replayed.applied, replayed.duplicates, replayed.newly_held, replayed.waiting) == (1, 0, 0, 0)
    assert Journal(var_dir).is_empty()
    assert statuses(db) == {"deals": "opted_out", "alerts": "opted_out"}
    with db.sessions() as session:
        row = session.scalars(select(InboundMessage).where(InboundMessage.message_sid == sid)).one()
        assert row.intent == "opt_out" and row.reply is None  # no reply was sent for it
        assert _utc(row.received_at) == received_at
        events = session.scalars(select(LedgerEvent).where(LedgerEvent.reference == sid)).all()
    assert events and all(_utc(event.occurred_at) == received_at for event in events)
    assert all(event.evidence["origin"] == "journal" for event in events)
    assert all(event.evidence["messaging_service_sid"] == "MG" + "c" * 32 for event in events)

    counts = stored(db)
    again = inbound_journal.replay(healthy)
    assert (again.applied, again.duplicates, again.waiting) == (0, 0, 0)
    assert stored(db) == counts


def test_a_text_already_in_the_store_is_skipped(broken_app, post, healthy, twilio_post, var_dir, db):
    params = form("STOP")
    post(broken_app, params)
    Journal(var_dir).append(Journal(var_dir).snapshot().records[0])  # journaled twice, as after a crash
    assert twilio_post(SMS, params).status_code == 200  # and delivered again through a healthy web process
    counts = stored(db)
    replayed = inbound_journal.replay(healthy)
    assert (replayed.applied, replayed.duplicates, replayed.waiting) == (0, 2, 0)
    assert stored(db) == counts


def test_texts_arriving_while_the_journal_is_not_empty_queue_behind_it(broken_app, post, healthy, settings, db):
    """A START that came after a journaled STOP must not be applied before it."""
    healthy_app = create_app(healthy.settings)
    try:
        give_consent(db, "deals")
        post(broken_app, form("STOP"))
        response = post(healthy_app, form("START"))  # the store is fine, but a STOP waits in the journal
        assert (response.status_code, response.data) == (200, EMPTY_TWIML)
        assert statuses(db) == {"deals": "opted_in"}
        replayed = inbound_journal.replay(healthy)
        assert (replayed.applied, replayed.waiting) == (2, 0)
        assert statuses(db)["deals"] == "opted_in"  # stopped, then started again: the person's last word
        with db.sessions() as session:
            events = session.execute(select(LedgerEvent.input, LedgerEvent.evidence).order_by(LedgerEvent.id)).all()
        replayed_inputs = [event.input for event in events if event.evidence.get("origin") == "journal"]
        assert list(dict.fromkeys(replayed_inputs)) == ["keyword_stop", "keyword_start"]
    finally:
        _close(healthy_app)


def test_while_the_store_is_still_down_replay_keeps_everything_in_order(broken_app, post, var_dir):
    journaled_before = _sample("smsgate_inbound_journaled_total")
    for body in ("STOP", "START", "HELP"):
        post(broken_app, form(body))
    assert _sample("smsgate_inbound_journaled_total") == journaled_before + 3
    before = Journal(var_dir).snapshot().records
    replayed = inbound_journal.replay(broken_app.extensions["gateway"])
    assert (replayed.applied, replayed.newly_held, replayed.waiting) == (0, 0, 3)
    assert Journal(var_dir).snapshot().records == before
    # /metrics still answers with the store down: the journal's length is read from its file.
    exposition = broken_app.test_client().get("/metrics").get_data(as_text=True)
    scraped = {sample.name: sample.value for family in text_string_to_metric_families(exposition)
               for sample in family.samples}
    assert (scraped["smsgate_inbound_journal_length"], scraped["smsgate_store_up"]) == (3, 0)


def _sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_text_that_cannot_be_applied_is_held_and_counted_never_dropped(broken_app, post, healthy, var_dir, db):
    held_before = _sample("smsgate_inbound_held_total", reason="unknown_sender")
    post(broken_app, form("STOP", to="+15005550001"))  # not one of our senders: only the store knows that
    post(broken_app, form("STOP"))
    replayed = inbound_journal.replay(healthy)
    assert (replayed.applied, replayed.newly_held, replayed.waiting, replayed.held) == (1, 1, 0, 1)
    [held] = Journal(var_dir).held()
    assert held["reason"] == "unknown_sender" and held["entry"]["text"]["to"] == "+15005550001"
    assert _sample("smsgate_inbound_held_total", reason="unknown_sender") == held_before + 1
    # Still refused when tried again: it stays held.
    again = inbound_journal.retry_held(healthy)
    assert (again.applied, again.held) == (0, 1)
    assert Journal(var_dir).held()[0]["entry"] == held["entry"]


def test_a_torn_line_is_kept_aside_and_the_texts_around_it_are_applied(broken_app, post, healthy, var_dir, db):
    post(broken_app, form("STOP"))
    with open(Journal(var_dir).path, "ab") as handle:
        handle.write(b'{"received_at":"2026-')  # a web process killed in the middle of its append
    post(broken_app, form("HELP"))
    replayed = inbound_journal.replay(healthy)
    assert (replayed.applied, replayed.newly_held, replayed.waiting) == (2, 1, 0)
    assert Journal(var_dir).held() == [{"reason": "torn", "line": '{"received_at":"2026-',
                                        "held_at": Journal(var_dir).held()[0]["held_at"]}]


def test_the_web_process_replays_on_a_timer(broken_app, post, healthy, db):
    post(broken_app, form("STOP"))
    replayer = inbound_journal.Replayer(healthy, 0.05).start()
    try:
        wait_for(lambda: statuses(db) == {"deals": "opted_out", "alerts": "opted_out"}, timeout=10)
    finally:
        replayer.stop()


def test_smsgate_inbound_replay_prints_its_counts(broken_app, post, test_env, var_dir, db):
    post(broken_app, form("STOP"))
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "inbound", "replay"], cwd=ROOT,
                            env={**os.environ, **test_env, "VAR_DIR": str(var_dir)}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "applied 1, already stored 0, newly held 0, waiting 0, held 0" in result.stdout
    assert statuses(db) == {"deals": "opted_out", "alerts": "opted_out"}


def test_a_failure_that_is_not_the_stores_is_not_journaled():
    class Driver(Exception):
        pass

    assert inbound_journal.is_store_fault(OperationalError("SELECT 1", {}, Driver()))
    assert inbound_journal.is_store_fault(InterfaceError("SELECT 1", {}, Driver()))
    assert inbound_journal.is_store_fault(DBAPIError("SELECT 1", {}, Driver(), connection_invalidated=True))
    assert inbound_journal.is_store_fault(inbound.Contended("the ledger kept moving"))
    assert not inbound_journal.is_store_fault(DBAPIError("SELECT 1", {}, Driver()))
    assert not inbound_journal.is_store_fault(IntegrityError("INSERT", {}, Driver()))
    assert not inbound_journal.is_store_fault(KeyError("a bug"))


def test_the_journal_record_survives_any_body(broken_app, post, healthy, var_dir, db):
    post(broken_app, form("STOP\x00 \U0001f600 \u00e9"))
    assert json.loads(Journal(var_dir).path.read_text())["text"]["body_as_sent"] == "STOP\x00 \U0001f600 \u00e9"
    assert inbound_journal.replay(healthy).applied == 1
    assert statuses(db) == {"deals": "opted_out", "alerts": "opted_out"}

"""A live web process (gunicorn, two workers sharing the host's journal) whose PostgreSQL database
refuses connections: opt-outs are answered 200 and journaled, and once the database is back, the web
process's own replayer puts them in the store within seconds.

The fault is real: `ALLOW_CONNECTIONS false` on the test database and every backend of it ended, from
an admin connection to the `postgres` database; the database allows connections again in a finally,
whatever happened, so the rest of the run is not affected (its pools reconnect, docs/decisions/0007).
SQLite has no server that could refuse connections: tests/integration/services/test_inbound_journal.py
covers the journal there with a store that cannot be opened.
"""

from __future__ import annotations

import contextlib
import re
import time
from urllib.parse import urlencode

import pytest
import requests
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from twilio.request_validator import RequestValidator

from gateway.store.journal import Journal
from gateway.store.models import Consent, LedgerEvent, PhoneNumber
from tests.conftest import AUTH_TOKEN, wait_for
from tests.faults_support import WebProcess

pytestmark = pytest.mark.e2e

SMS = "/webhooks/twilio/sms"
SENDER = "+15005550006"  # deals and alerts
KEYWORD, FREE_TEXT = "+14155550101", "+14155550102"
EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response />'


@pytest.fixture
def postgres_only(settings):
    if settings.is_sqlite:
        pytest.skip("SQLite has no server to refuse connections (the integration tests cover the journal there)")


@contextlib.contextmanager
def connections_refused(database_url: str):
    """The database refuses new connections and its open ones are ended, until the block is left."""
    url = make_url(database_url)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    name = url.database
    try:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false'))
            connection.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": name})
        yield
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true'))
        admin.dispose()


@pytest.fixture
def web_process(test_env, tmp_path):
    """gunicorn as the Procfile runs it, two workers, replaying the journal every second."""
    web = WebProcess({**test_env, "VAR_DIR": str(tmp_path / "var"), "INBOUND_JOURNAL_REPLAY_SECONDS": "1"},
                     tmp_path / "web.log", workers=2)
    try:
        web.start()
        yield web.base, tmp_path / "var", web.log_path
    finally:
        web.stop()


def _text(base: str, sender: str, body: str, sid: str) -> requests.Response:
    params = {"MessageSid": sid, "AccountSid": "AC" + "1" * 32, "From": sender, "To": SENDER, "Body": body,
              "NumMedia": "0"}
    signature = RequestValidator(AUTH_TOKEN).compute_signature(base + SMS, params)
    return requests.post(base + SMS, data=urlencode(params), timeout=15,
                         headers={"X-Twilio-Signature": signature,
                                  "Content-Type": "application/x-www-form-urlencoded"})


def _opted_out(db) -> set[str]:
    with db.sessions() as session:
        return set(session.scalars(select(PhoneNumber.e164).join(Consent, Consent.number_id == PhoneNumber.id)
                                   .where(Consent.status == "opted_out")))


def test_opt_outs_sent_while_the_database_refuses_connections_reach_the_store_after(
        postgres_only, web_process, settings, db):
    """Today's code answers both 500, and neither opt-out is ever stored: Twilio does not retry."""
    base, var_dir, log = web_process
    for n in range(4):  # the workers hold pooled connections, which the fault ends
        assert _text(base, f"+1415555020{n}", "hello", f"SM{n:032x}").status_code == 200
    with connections_refused(settings.database_url):
        stop = _text(base, KEYWORD, "STOP", "SM" + "a" * 32)
        free_text = _text(base, FREE_TEXT, "please stop texting me", "SM" + "b" * 32)
        assert (stop.status_code, stop.content) == (200, EMPTY_TWIML), log.read_text()[-3000:]
        assert (free_text.status_code, free_text.content) == (200, EMPTY_TWIML), log.read_text()[-3000:]
        journaled = Journal(var_dir).snapshot().records
        assert sorted(record["text"]["from_"] for record in journaled) == [KEYWORD, FREE_TEXT]
        time.sleep(1.5)  # a replay round or two while the database still refuses: nothing is lost to them
        assert len(Journal(var_dir).snapshot().records) == 2
    started = time.monotonic()
    wait_for(lambda: {KEYWORD, FREE_TEXT} <= _opted_out(db), timeout=15)
    recovered_in = time.monotonic() - started
    assert wait_for(lambda: Journal(var_dir).is_empty(), timeout=5)
    with db.sessions() as session:
        evidence = session.scalars(select(LedgerEvent.evidence).where(
            LedgerEvent.reference.in_(["SM" + "a" * 32, "SM" + "b" * 32]))).all()
    assert evidence and all(item["origin"] == "journal" for item in evidence)
    metrics = requests.get(f"{base}/metrics", timeout=5).text
    assert _value(metrics, "smsgate_inbound_journaled_total") == 2
    assert _value(metrics, "smsgate_inbound_replayed_total") == 2
    print(f"opt-outs in the store {recovered_in:.1f} s after the database allowed connections again")


def _value(exposition: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", exposition, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))

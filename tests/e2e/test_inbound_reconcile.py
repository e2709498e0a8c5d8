"""A STOP whose webhook never reached us, with real processes: gunicorn serving the web app and the
sandbox, and the Celery worker with beat as the Procfile runs them, reconciling every second. The
sandbox logs the text without posting it (and its webhook URL is wrong besides, so no one could post
it); within a reconcile interval or two the opt-out is in the store, from Twilio's log.

Today's code never looks at the log: the text stays unknown to the store for good.
"""

from __future__ import annotations

import subprocess
import time
from datetime import timedelta

import pytest
import requests
from sqlalchemy import select

from gateway.config import ROOT
from gateway.store.models import LedgerEvent
from gateway.twilio.sandbox.models import SandboxMessage
from tests.conftest import wait_for
from tests.e2e.test_deploy import _stop, procfile
from tests.faults_support import WebProcess
from tests.integration.services.test_inbound import statuses
from tests.integration.services.test_inbound_reconcile import consented_before

pytestmark = pytest.mark.e2e

PERSON = "+14155552671"
SENDER = "+15005550006"  # deals and alerts


@pytest.fixture
def web_and_worker(test_env, tmp_path):
    """gunicorn and `celery worker --beat` from the Procfile, reconciling inbound texts every second."""
    web = WebProcess({**test_env, "VAR_DIR": str(tmp_path / "var"), "INBOUND_RECONCILE_SECONDS": "1",
                      # A wrong webhook URL: nothing the sandbox posts could reach the gateway.
                      "SANDBOX_SMS_URL": "http://127.0.0.1:9/sms"}, tmp_path / "web.log", workers=1)
    worker_log, worker = tmp_path / "worker.log", None
    try:
        web.start()
        worker = subprocess.Popen(procfile()["worker"], cwd=ROOT, env=web.env, stdout=worker_log.open("wb"),
                                  stderr=subprocess.STDOUT)
        wait_for(lambda: b" ready." in worker_log.read_bytes() or worker.poll() is not None, timeout=60)
        assert worker.poll() is None, worker_log.read_text()[-3000:]
        yield web.base, worker_log
    finally:
        if worker is not None:
            _stop(worker)
        web.stop()


def test_a_stop_whose_webhook_was_lost_is_in_the_store_within_an_interval(web_and_worker, db):
    base, worker_log = web_and_worker
    consented_before(db, "deals", "alerts", number=PERSON)
    response = requests.post(f"{base}/sandbox/phone/messages", headers={"Origin": base}, timeout=10,
                             json={"from": PERSON, "to": SENDER, "body": "STOP", "webhook": False})
    assert response.status_code == 201, response.text
    sid = response.json()["sid"]
    # It reached Twilio a minute ago: past the 30 seconds in which its webhook could still be on the way.
    with db.transaction() as session:
        message = session.get(SandboxMessage, sid)
        message.date_sent -= timedelta(minutes=1)
        message.date_created -= timedelta(minutes=1)
    started = time.monotonic()

    wait_for(lambda: statuses(db, PERSON) == {"deals": "opted_out", "alerts": "opted_out"}, timeout=20)
    print(f"opt-out in the store {time.monotonic() - started:.1f} s after the text was logged a minute old")

    with db.sessions() as session:
        events = session.scalars(select(LedgerEvent).where(LedgerEvent.reference == sid)).all()
        logged = session.get(SandboxMessage, sid)
    assert {event.type for event in events} == {"opt_out"} and len(events) == 2
    assert all(event.evidence["origin"] == "reconciled" for event in events)
    assert all(event.occurred_at == logged.date_sent.replace(microsecond=0) for event in events)
    assert logged.webhook_status is None  # never posted: the store has it from the log alone

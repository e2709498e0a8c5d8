"""Inbound reconciliation: texts in the provider's message log that the store lacks are applied once,
in the order they were sent, at the time they were sent, with no reply; the rest is left alone.

The message log here is in memory (the service takes it as a port); the same path through the official
twilio client and the sandbox is at the end, and with real processes in tests/e2e/test_inbound_reconcile.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
import sys
from datetime import datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from gateway.config import ROOT, SANDBOX_ACCOUNT_SID, ConfigError, load_settings
from gateway.domain.consent import Input, Source
from gateway.domain.message_log import LoggedText
from gateway.domain.numbers import parse
from gateway.domain.outbound import ErrorKind, ProviderError
from gateway.queue.app import QueueNames, TaskNames, make_celery
from gateway.services import consents, inbound, inbound_reconcile
from gateway.store import consents as store_consents
from gateway.store import programs, reconciliation
from gateway.store.models import InboundMessage, LedgerEvent, utcnow
from gateway.twilio.sandbox import messages as sandbox_messages
from gateway.twilio.sandbox.models import SandboxMessage
from tests.integration.services.test_inbound import give_consent, statuses, text

PERSON = "+14155552671"
SENDER = "+15005550006"  # deals and alerts
ORDERS_SENDER = "+18885550199"
# Ahead of the clock: consents given in a test (at the clock's time) come before every text it logs.
NOW = utcnow().replace(microsecond=0) + timedelta(hours=1)
_sids = itertools.count(1)


def logged(body: str, *, ago: timedelta, to: str = SENDER, sender: str = PERSON, sid: str | None = None,
           service: str | None = None) -> LoggedText:
    return LoggedText(sid=sid or f"SMab{next(_sids):030x}", from_=sender, to=to, body=body, date_sent=NOW - ago,
                      messaging_service_sid=service, account_sid="AC" + "1" * 32)


class FakeLog:
    """The provider's message log: what Twilio holds, listed as the Provider lists it (newest first)."""

    def __init__(self, *texts: LoggedText):
        self.texts = list(texts)
        self.calls: list[tuple[str | None, datetime]] = []
        self.failing: set[str | None] = set()

    def inbound_messages(self, *, to: str | None, since: datetime) -> list[LoggedText]:
        self.calls.append((to, since))
        if to in self.failing:
            raise ProviderError(ErrorKind.RETRYABLE, 20429, "Too Many Requests")
        found = [t for t in self.texts if (to is None or t.to == to) and t.date_sent >= since]
        return sorted(found, key=lambda t: t.date_sent, reverse=True)


def consented_before(db, *slugs: str, number: str = PERSON, ago: timedelta = timedelta(minutes=10)) -> None:
    """Opt `number` in (request + YES) `ago`: before the texts a test logs now, which would otherwise
    find the YES a later word of the person's."""
    at = utcnow() - ago
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(number))
        for slug in slugs:
            program = programs.by_slug(session, slug)
            consents.apply(session, row, program, Input.API_REQUEST, consents.Evidence(Source.API), now=at,
                           expires_at=at + timedelta(hours=48))
            consents.apply(session, row, program, Input.CONFIRM_YES, consents.Evidence(Source.SMS), now=at)


def _events(db, sid: str) -> list[LedgerEvent]:
    with db.sessions() as session:
        return session.scalars(select(LedgerEvent).where(LedgerEvent.reference == sid).order_by(LedgerEvent.id)).all()


def _inbound(db, sid: str) -> InboundMessage | None:
    with db.sessions() as session:
        return session.scalars(select(InboundMessage).where(InboundMessage.message_sid == sid)).one_or_none()


def _watermark(db, key: str) -> datetime | None:
    with db.statements() as connection:
        return reconciliation.watermarks(connection, [key]).get(key)


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_a_stop_whose_webhook_never_came_is_applied_once_at_twilios_time(gateway, db):
    give_consent(db, "deals", "alerts")
    stop = logged("STOP", ago=timedelta(minutes=3))
    before = _sample("smsgate_inbound_reconciled_total")

    reconciled = inbound_reconcile.reconcile(gateway, FakeLog(stop), now=NOW)

    assert (reconciled.listed, reconciled.applied, reconciled.stored, reconciled.young) == (1, 1, 0, 0)
    assert statuses(db) == {"deals": "opted_out", "alerts": "opted_out"}
    events = _events(db, stop.sid)
    assert [e.type for e in events] == ["opt_out", "opt_out"]
    assert all(e.occurred_at == stop.date_sent for e in events)
    assert all(e.evidence["origin"] == "reconciled" and e.evidence["body"] == "STOP" for e in events)
    row = _inbound(db, stop.sid)
    assert (row.intent, row.reply, row.received_at) == ("opt_out", None, stop.date_sent)  # no late reply
    assert _sample("smsgate_inbound_reconciled_total") == before + 1


def test_a_second_run_changes_nothing(gateway, db):
    give_consent(db, "deals")
    log = FakeLog(logged("STOP", ago=timedelta(minutes=3)))
    inbound_reconcile.reconcile(gateway, log, now=NOW)
    with db.sessions() as session:
        events = session.scalars(select(LedgerEvent.id)).all()

    again = inbound_reconcile.reconcile(gateway, log, now=NOW + timedelta(minutes=5))

    assert (again.listed, again.applied, again.stored) == (1, 0, 1)
    with db.sessions() as session:
        assert session.scalars(select(LedgerEvent.id)).all() == events


def test_a_text_the_webhook_brought_is_skipped(gateway, db):
    give_consent(db, "deals")
    delivered = text("STOP")
    inbound.handle(gateway, delivered, now=NOW - timedelta(minutes=3))
    log = FakeLog(logged("STOP", ago=timedelta(minutes=3), sid=delivered.message_sid))

    reconciled = inbound_reconcile.reconcile(gateway, log, now=NOW)

    assert (reconciled.applied, reconciled.stored) == (0, 1)
    assert all(e.evidence.get("origin") is None for e in _events(db, delivered.message_sid))


def test_texts_under_30_seconds_old_are_left_for_the_next_run(gateway, db):
    give_consent(db, "deals", "alerts")
    young = logged("STOP", ago=timedelta(seconds=10))
    log = FakeLog(young)

    first = inbound_reconcile.reconcile(gateway, log, now=NOW)
    assert (first.listed, first.applied, first.young) == (1, 0, 1)
    assert _inbound(db, young.sid) is None  # its webhook may still be on the way
    assert statuses(db) == {"deals": "opted_in", "alerts": "opted_in"}

    later = inbound_reconcile.reconcile(gateway, log, now=NOW + timedelta(seconds=60))
    assert (later.applied, later.young) == (1, 0)
    assert statuses(db) == {"deals": "opted_out", "alerts": "opted_out"}


def test_a_start_after_a_stop_is_applied_after_it(gateway, db):
    give_consent(db, "deals", "alerts")
    stop, start = logged("STOP", ago=timedelta(minutes=5)), logged("START", ago=timedelta(minutes=4))

    reconciled = inbound_reconcile.reconcile(gateway, FakeLog(stop, start), now=NOW)

    assert reconciled.applied == 2
    assert statuses(db) == {"deals": "opted_in", "alerts": "opted_in"}
    with db.sessions() as session:
        applied = session.execute(select(LedgerEvent.reference, LedgerEvent.type, LedgerEvent.occurred_at)
                                  .where(LedgerEvent.reference.in_([stop.sid, start.sid])).order_by(LedgerEvent.id))
        order = [(reference, kind) for reference, kind, _ in applied]
    assert order == [(stop.sid, "opt_out"), (stop.sid, "opt_out"), (start.sid, "opt_in"), (start.sid, "opt_in")]


def test_a_lost_start_the_person_followed_with_a_stop_that_reached_us_is_not_applied(gateway, db):
    give_consent(db, "deals", "alerts")
    inbound.handle(gateway, text("STOP"), now=NOW - timedelta(minutes=1))  # its webhook came
    start = logged("START", ago=timedelta(minutes=2))  # sent before it, its webhook lost

    reconciled = inbound_reconcile.reconcile(gateway, FakeLog(start), now=NOW)

    assert (reconciled.applied, reconciled.overtaken) == (0, 1)
    assert statuses(db) == {"deals": "opted_out", "alerts": "opted_out"}  # the person's last word stands
    assert _events(db, start.sid) == []
    row = _inbound(db, start.sid)
    assert (row.intent, row.reply, row.received_at, row.body) == ("opt_in", None, start.date_sent, "START")
    again = inbound_reconcile.reconcile(gateway, FakeLog(start), now=NOW + timedelta(minutes=5))
    assert (again.applied, again.overtaken, again.stored) == (0, 0, 1)


def test_a_lost_start_yields_to_a_later_opt_out_by_api(gateway, db):
    give_consent(db, "deals")
    with db.transaction() as session:
        consents.apply(session, store_consents.number_row(session, parse(PERSON)), programs.by_slug(session, "deals"),
                       Input.API_OPT_OUT, consents.Evidence(Source.API), now=NOW - timedelta(minutes=1))
    start = logged("START", ago=timedelta(minutes=2))
    assert inbound_reconcile.reconcile(gateway, FakeLog(start), now=NOW).overtaken == 1
    assert statuses(db)["deals"] == "opted_out"


def test_a_lost_stop_yields_only_to_a_later_text_of_the_persons(gateway, db):
    give_consent(db, "deals", "alerts")
    stop = logged("STOP", ago=timedelta(minutes=5))
    # Later: a HELP and a hello reach us (no consent moves), and an API call opts the number in again.
    inbound.handle(gateway, text("HELP"), now=NOW - timedelta(minutes=4))
    inbound.handle(gateway, text("hello"), now=NOW - timedelta(minutes=3))
    reconciled = inbound_reconcile.reconcile(gateway, FakeLog(stop), now=NOW)
    assert (reconciled.applied, reconciled.overtaken) == (1, 0)
    assert statuses(db) == {"deals": "opted_out", "alerts": "opted_out"}

    # A STOP the person followed with a START that reached us: the START is their last word.
    give_consent(db, "orders")
    orders_stop = logged("STOP", ago=timedelta(minutes=2), to=ORDERS_SENDER)
    inbound.handle(gateway, text("START", to=ORDERS_SENDER), now=NOW - timedelta(minutes=1))
    assert statuses(db)["orders"] == "opted_in"
    reconciled = inbound_reconcile.reconcile(gateway, FakeLog(orders_stop), now=NOW + timedelta(minutes=1))
    assert (reconciled.applied, reconciled.overtaken) == (0, 1)
    assert statuses(db)["orders"] == "opted_in"


def test_the_first_run_looks_back_a_day_and_later_runs_from_the_watermark_less_the_overlap(gateway, db):
    log = FakeLog()
    inbound_reconcile.reconcile(gateway, log, now=NOW)
    assert {since for _, since in log.calls} == {NOW - inbound_reconcile.FIRST_LOOK_BACK}
    assert {to for to, _ in log.calls} == {SENDER, ORDERS_SENDER}  # each program's sender, once
    assert _watermark(db, SENDER) == NOW - inbound_reconcile.SETTLE

    log.calls.clear()
    later = NOW + timedelta(minutes=5)
    inbound_reconcile.reconcile(gateway, log, now=later)
    assert {since for _, since in log.calls} == {NOW - inbound_reconcile.SETTLE - inbound_reconcile.OVERLAP}
    assert _watermark(db, SENDER) == later - inbound_reconcile.SETTLE


def test_a_text_indexed_late_within_the_overlap_is_still_found(gateway, db):
    log = FakeLog()
    inbound_reconcile.reconcile(gateway, log, now=NOW)
    # Sent before the watermark, listed by Twilio only after that run.
    late = logged("STOP", ago=timedelta(minutes=2))
    log.texts.append(late)
    reconciled = inbound_reconcile.reconcile(gateway, log, now=NOW + timedelta(minutes=5))
    assert reconciled.applied == 1 and _inbound(db, late.sid) is not None


def test_a_sender_the_provider_does_not_answer_for_keeps_its_watermark(gateway, db):
    give_consent(db, "orders", number=PERSON)
    log = FakeLog(logged("STOP", ago=timedelta(minutes=3), to=ORDERS_SENDER))
    log.failing.add(SENDER)

    reconciled = inbound_reconcile.reconcile(gateway, log, now=NOW)

    assert reconciled.failed == [SENDER] and reconciled.applied == 1  # the other sender still read
    assert _watermark(db, SENDER) is None and _watermark(db, ORDERS_SENDER) == NOW - inbound_reconcile.SETTLE


def test_a_store_failure_stops_that_sender_and_the_next_run_takes_it(gateway, db, monkeypatch):
    give_consent(db, "deals", "alerts")
    stop = logged("STOP", ago=timedelta(minutes=3))
    log = FakeLog(stop)
    real = inbound.handle

    def store_down(*args, **kwargs):
        raise OperationalError("INSERT", {}, Exception("connection refused"))

    monkeypatch.setattr(inbound, "handle", store_down)
    failed = inbound_reconcile.reconcile(gateway, log, now=NOW)
    assert failed.failed == [SENDER] and _watermark(db, SENDER) is None

    monkeypatch.setattr(inbound, "handle", real)
    later = inbound_reconcile.reconcile(gateway, log, now=NOW + timedelta(minutes=5))
    assert later.applied == 1 and statuses(db) == {"deals": "opted_out", "alerts": "opted_out"}


def test_a_text_from_no_phone_number_is_refused_and_the_rest_applied(gateway, db):
    give_consent(db, "deals", "alerts")
    log = FakeLog(logged("STOP", ago=timedelta(minutes=4), sender="whatsapp:+14155552671"),
                  logged("STOP", ago=timedelta(minutes=3)))
    reconciled = inbound_reconcile.reconcile(gateway, log, now=NOW)
    assert (reconciled.applied, reconciled.refused) == (1, 1)
    assert _watermark(db, SENDER) == NOW - inbound_reconcile.SETTLE


def test_a_service_without_listed_numbers_is_read_from_the_whole_account(gateway, db, example_programs):
    service = "MG" + "d" * 32
    spec = dataclasses.replace(example_programs[0], slug="svc", name="Service deals", sender=None,
                               messaging_service=service, join_keywords=("SVC",))
    with db.transaction() as session:
        programs.store(session, list(example_programs) + [spec])
    give_consent(db, "svc")
    ours = logged("STOP", ago=timedelta(minutes=3), to="+15005550011", service=service)
    someone_elses = logged("STOP", ago=timedelta(minutes=3), to="+15005550012", service="MG" + "e" * 32)

    reconciled = inbound_reconcile.reconcile(gateway, FakeLog(ours, someone_elses), now=NOW)

    assert reconciled.applied == 1 and _inbound(db, ours.sid) is not None and _inbound(db, someone_elses.sid) is None
    assert statuses(db)["svc"] == "opted_out"


# --- through the official client and the sandbox --------------------------------------------------

def _lost_text(gateway, app, body: str, *, ago: timedelta, handset: str = PERSON) -> str:
    """A text the sandbox logged whose webhook was lost, sent `ago` (its webhook's chance long gone)."""
    sent = utcnow() - ago
    with gateway.db.transaction() as session:
        message = sandbox_messages.receive(session, app.extensions["sandbox"].config, SANDBOX_ACCOUNT_SID,
                                           handset=handset, to=SENDER, body=body, now=sent, webhook=False)
        return message.sid


def test_a_lost_stop_in_the_sandbox_log_is_applied_through_the_twilio_client(app, gateway, live_server, db):
    consented_before(db, "deals", "alerts")
    sid = _lost_text(gateway, app, "STOP", ago=timedelta(minutes=2))

    reconciled = inbound_reconcile.reconcile(gateway)

    assert reconciled.applied == 1 and not reconciled.failed
    assert statuses(db) == {"deals": "opted_out", "alerts": "opted_out"}
    events = _events(db, sid)
    assert events and all(e.evidence["origin"] == "reconciled" for e in events)
    with db.sessions() as session:
        date_sent = session.get(SandboxMessage, sid).date_sent
    assert all(e.occurred_at == date_sent.replace(microsecond=0) for e in events)  # Twilio's whole seconds
    assert inbound_reconcile.reconcile(gateway).applied == 0


def test_smsgate_inbound_reconcile_prints_its_counts(app, gateway, live_server, test_env, db):
    consented_before(db, "deals", "alerts")
    _lost_text(gateway, app, "STOP", ago=timedelta(minutes=2))
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "inbound", "reconcile"], cwd=ROOT,
                            env={**os.environ, **test_env}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    counts = "listed 1, applied 1, already stored 0, overtaken 0, left for the next run 0, refused 0, failed senders 0"
    assert counts in result.stdout
    assert statuses(db) == {"deals": "opted_out", "alerts": "opted_out"}


def test_beat_reconciles_on_the_periodic_queue_at_the_configured_interval_and_not_at_0(settings):
    celery = make_celery(settings)  # the worker's app (the test's dispatcher is an in-memory one)
    entry = celery.conf.beat_schedule["reconcile-inbound"]
    assert entry == {"task": TaskNames.RECONCILE_INBOUND, "schedule": float(settings.inbound_reconcile_seconds)}
    assert celery.amqp.router.route({}, TaskNames.RECONCILE_INBOUND)["queue"].name == QueueNames.PERIODIC
    off = make_celery(dataclasses.replace(settings, inbound_reconcile_seconds=0))
    assert "reconcile-inbound" not in off.conf.beat_schedule


def test_the_interval_is_a_setting_300_by_default(tmp_path):
    assert load_settings(env={"SANDBOX": "on", "VAR_DIR": str(tmp_path)}).inbound_reconcile_seconds == 300
    assert load_settings(env={"SANDBOX": "on", "VAR_DIR": str(tmp_path),
                              "INBOUND_RECONCILE_SECONDS": "0"}).inbound_reconcile_seconds == 0
    with pytest.raises(ConfigError, match="INBOUND_RECONCILE_SECONDS"):
        load_settings(env={"SANDBOX": "on", "VAR_DIR": str(tmp_path), "INBOUND_RECONCILE_SECONDS": "often"})

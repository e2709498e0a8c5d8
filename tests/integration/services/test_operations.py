"""The operator's view (services/operations.py, store/operations.py): what the store says about the
backlog, the worker's heartbeat and the last traffic, read as `smsgate status` and /metrics read it."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from gateway.services import operations
from gateway.store.models import OutboundMessage, utcnow
from tests.sandbox_support import opt_in, queue


def scrape(client) -> dict[tuple[str, tuple], float]:
    exposition = client.get("/metrics").get_data(as_text=True)
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(exposition) for sample in family.samples}


def _age(db, message_id: str, seconds: int, **values) -> None:
    with db.transaction() as session:
        session.execute(update(OutboundMessage).where(OutboundMessage.id == message_id)
                        .values(created_at=utcnow() - timedelta(seconds=seconds), **values))


def test_a_new_store_has_no_heartbeat_and_says_so(gateway):
    health = operations.read(gateway)
    assert health.store_error is None
    assert health.heartbeat is None and health.heartbeat_age is None
    assert health.backlog.by_status == {"queued": 0, "deferred": 0, "sending": 0}
    assert health.problems(gateway.settings) == [
        "no worker has ever written a heartbeat: is the worker (with beat) running?"]


def test_the_backlog_counts_what_waits_and_ages_the_oldest_queued(gateway, db):
    opt_in(db, "+14155550301", "orders")
    first, second, third = (queue(gateway, "+14155550301", "orders", f"order {n}") for n in range(3))
    _age(db, first, 400)
    _age(db, second, 50, status="deferred", not_before=utcnow() - timedelta(seconds=5))
    _age(db, third, 10, status="sending")
    operations.beat(gateway, "celery@test")
    health = operations.read(gateway)
    assert health.backlog.by_status == {"queued": 1, "deferred": 1, "sending": 1}
    assert health.backlog.deferred_due == 1
    assert 399 <= health.oldest_queued_age < 420
    # 400 s is past the default OUTBOX_BACKLOG_MAX_SECONDS (300): the one problem named.
    assert health.problems(gateway.settings) == [
        f"the oldest queued message has waited {health.oldest_queued_age:.0f} s for a worker "
        "(OUTBOX_BACKLOG_MAX_SECONDS=300)"]


def test_a_heartbeat_moves_and_goes_stale(gateway):
    operations.beat(gateway, "celery@a", now=utcnow() - timedelta(seconds=500))
    operations.beat(gateway, "celery@b", now=utcnow() - timedelta(seconds=90))
    health = operations.read(gateway)
    assert health.heartbeat[0] == "celery@b" and 89 <= health.heartbeat_age < 100
    assert any(problem.startswith("the worker is stale: its last heartbeat (celery@b) was")
               for problem in health.problems(gateway.settings))
    operations.beat(gateway, "celery@a")  # the same worker's row moves: no second row
    health = operations.read(gateway)
    assert health.heartbeat[0] == "celery@a" and health.heartbeat_age < 5
    assert health.problems(gateway.settings) == []


def test_pending_confirmations_and_last_inbound_are_read(gateway, twilio_post):
    before = operations.read(gateway)
    assert before.last_inbound is None and before.pending_requests == 0
    answer = twilio_post("/webhooks/twilio/sms", {"MessageSid": "SM" + "7" * 32, "From": "+14155550302",
                                                  "To": "+15005550006", "Body": "DEALS"})
    assert answer.status_code == 200
    after = operations.read(gateway)
    assert after.pending_requests == 1
    assert after.age(after.last_inbound) < 60


def test_an_unreadable_store_is_reported_not_raised(gateway, monkeypatch):
    def refuse(*args, **kwargs):
        raise ConnectionError("connection refused")

    monkeypatch.setattr(gateway.db, "statements", refuse)
    health = operations.read(gateway)
    assert health.store_error == "ConnectionError: connection refused"
    assert health.problems(gateway.settings) == ["the store cannot be read: ConnectionError: connection refused"]


def test_metrics_carry_the_gauges_read_at_scrape_time(client, gateway, db):
    scraped = scrape(client)
    assert scraped[("smsgate_worker_heartbeat_age_seconds", ())] == float("inf")
    assert scraped[("smsgate_store_up", ())] == 1
    opt_in(db, "+14155550303", "orders")
    message_id = queue(gateway, "+14155550303", "orders", "Your order shipped")
    _age(db, message_id, 120)
    operations.beat(gateway, "celery@test", now=utcnow() - timedelta(seconds=30))
    scraped = scrape(client)
    assert scraped[("smsgate_outbox_messages", (("status", "queued"),))] == 1
    assert scraped[("smsgate_outbox_messages", (("status", "sending"),))] == 0
    assert 119 <= scraped[("smsgate_outbox_oldest_queued_seconds", ())] < 140
    assert 29 <= scraped[("smsgate_worker_heartbeat_age_seconds", ())] < 50
    assert scraped[("smsgate_pending_confirmations", ())] == 0
    assert scraped[("smsgate_inbound_journal_length", ())] == 0


def test_metrics_answer_when_the_store_does_not(client, gateway, monkeypatch):
    def refuse(*args, **kwargs):
        raise ConnectionError("down")

    monkeypatch.setattr(gateway.db, "statements", refuse)
    response = client.get("/metrics")
    assert response.status_code == 200
    scraped = scrape(client)
    assert scraped[("smsgate_store_up", ())] == 0
    assert ("smsgate_outbox_oldest_queued_seconds", ()) not in scraped

"""The monitoring the repository ships: alert rules checked by Prometheus's own tool, and a dashboard
that only asks for metrics the gateway exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from gateway.config import ROOT
from gateway.store import checkpoints, reconciliation
from gateway.store.models import utcnow
from tests.outbound_support import captured_queue  # noqa: F401  (a fixture)
from tests.sandbox_support import instant_sandbox, opt_in  # noqa: F401  (a fixture)

RULES = ROOT / "config" / "prometheus"
DASHBOARD = ROOT / "config" / "grafana" / "smsgate.json"
# Counted by the worker process (served on its own port); the test process defines them all alike.
METRIC = re.compile(r"\bsmsgate_[a-z0-9_]+")


@pytest.fixture
def promtool():
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return path


def test_alert_rules_are_valid(promtool):
    result = subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=RULES, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


def test_alert_rules_fire_and_stay_quiet_as_their_tests_say(promtool):
    result = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=RULES, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def worked(gateway):
    """The work behind the gauges that exist only once it happened: a reconciliation run's watermark,
    a ledger checkpoint."""
    with gateway.db.transaction() as session:
        reconciliation.advance(session, "+15005550006", utcnow())
    checkpoint_log, signer = checkpoints.from_settings(gateway.settings)
    with gateway.db.snapshot() as session:
        checkpoints.take(session, checkpoint_log, signer)


def exported(client) -> set[str]:
    """Every metric name a scrape of the web's /metrics shows, samples and declared families alike
    (a labelled counter nothing has counted yet is declared, with no sample)."""
    names = set()
    for line in client.get("/metrics").get_data(as_text=True).splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
            if kind == "counter" and not name.endswith("_total"):
                names.add(f"{name}_total")
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_every_dashboard_query_names_an_exported_metric(client, worked):
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(queries) >= 15
    asked = {name for query in queries for name in METRIC.findall(query)}
    missing = asked - exported(client)
    assert not missing, f"the dashboard asks for metrics nobody exports: {sorted(missing)}"


def test_every_alert_names_an_exported_metric(client, worked):
    rules = (RULES / "alerts.yml").read_text()
    expressions = re.findall(r"^\s+expr: (.+)$", rules, re.MULTILINE)
    assert len(expressions) == 8
    missing = {name for expr in expressions for name in METRIC.findall(expr)} - exported(client)
    assert not missing, f"alert rules compare metrics nobody exports: {sorted(missing)}"


OPERATIONS = ROOT / "docs" / "operations.md"


def test_every_metric_the_docs_list_appears_after_the_work_that_produces_it(
        client, gateway, db, live_server, instant_sandbox, twilio_post, make_key, captured_queue, worked):
    """The work of a day in small: a refused webhook, a STOP, a double opt-in request, a send that the
    worker's code takes to the sandbox and whose delivery is called back, a send refused, a carrier
    opt-out; then every metric docs/operations.md lists is on the scrape, and those this work makes
    have samples."""
    from gateway.domain.gate import ALLOW, Kind
    from gateway.services import sending
    from gateway.store import consents as store_consents
    from gateway.store import outbox, programs
    from gateway.store.models import OutboundMessage

    listed = set(METRIC.findall(OPERATIONS.read_text()))
    assert len(listed) >= 25
    opt_in(db, "+14155550171", "orders")
    opt_in(db, "+14155550172", "deals", "alerts")
    assert client.post("/webhooks/twilio/sms", data={"From": "+14155550172"}).status_code == 403
    assert twilio_post("/webhooks/twilio/sms", {"MessageSid": "SM" + "a1" * 16, "From": "+14155550172",
                                                "To": "+15005550006", "Body": "STOP"}).status_code == 200
    subscribe = {"Authorization": f"Bearer {make_key('subscribe')}"}
    assert client.post("/v1/subscriptions", headers=subscribe, json={
        "phone": "+14155550173", "program": "alerts", "evidence": {"ip": "203.0.113.9"}}).status_code == 202
    send = {"Authorization": f"Bearer {make_key('send')}"}
    sent = client.post("/v1/messages", headers=send, json={"to": "+14155550171", "program": "orders",
                                                           "body": "Your order shipped"})
    assert sent.status_code == 202
    assert client.post("/v1/messages", headers=send, json={"to": "+14155550172", "program": "deals",
                                                           "body": "20% off"}).status_code == 409
    assert sending.send(gateway, sent.json["id"]).status in ("sent", "delivered")
    with db.sessions() as session:
        provider_sid = session.get(OutboundMessage, sent.json["id"]).provider_sid
    assert twilio_post("/webhooks/twilio/status", {"MessageSid": provider_sid, "MessageStatus": "delivered",
                                                   "To": "+14155550171", "From": "+15005550006"}).status_code == 200
    # A message Twilio refuses with 21610 in its callback: the person opted out at Twilio.
    with db.transaction() as session:
        program = programs.by_slug(session, "orders")
        refused = outbox.accept(session, number=store_consents.find_number(session, "+14155550171"), program=program,
                                kind=Kind.TRANSACTIONAL, body="Shipped", decision=ALLOW)
        refused.provider_sid, refused.status = "SM" + "b2" * 16, "sent"
    assert twilio_post("/webhooks/twilio/status", {"MessageSid": "SM" + "b2" * 16, "MessageStatus": "undelivered",
                                                   "ErrorCode": "21610", "To": "+14155550171",
                                                   "From": "+15005550006"}).status_code == 200

    exposition = client.get("/metrics").get_data(as_text=True)
    declared = exported(client)
    assert listed <= declared, f"docs/operations.md lists metrics the scrape lacks: {sorted(listed - declared)}"
    with_samples = {re.split(r"[{ ]", line, maxsplit=1)[0] for line in exposition.splitlines()
                    if line and not line.startswith("#")}
    produced = {"smsgate_http_responses_total", "smsgate_webhook_rejected_total", "smsgate_inbound_messages_total",
                "smsgate_consent_events_total", "smsgate_subscription_requests_total",
                "smsgate_messages_accepted_total", "smsgate_messages_refused_total", "smsgate_messages_sent_total",
                "smsgate_provider_seconds_count", "smsgate_delivery_status_total", "smsgate_carrier_opt_outs_total",
                "smsgate_worker_heartbeat_age_seconds", "smsgate_outbox_messages", "smsgate_pending_confirmations",
                "smsgate_inbound_reconcile_watermark_age_seconds", "smsgate_ledger_checkpoint_age_seconds"}
    assert produced <= with_samples, f"no samples after the work: {sorted(produced - with_samples)}"

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

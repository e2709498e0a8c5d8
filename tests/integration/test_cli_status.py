"""`smsgate status`, run as an operator runs it: a real process against the test store."""

import os
import subprocess
import sys
from datetime import timedelta

import pytest

from gateway.config import ROOT
from gateway.services import operations
from gateway.store.models import utcnow


@pytest.fixture
def status(app, test_env):
    def run(**env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gateway.cli", "status"], cwd=ROOT, capture_output=True,
                              text=True, timeout=60, env={**os.environ, **test_env, **env})

    return run


def test_status_fails_naming_a_worker_that_never_beat(status):
    result = status()
    assert result.returncode == 1
    assert "PROBLEM: no worker has ever written a heartbeat" in result.stderr
    assert result.stdout.splitlines()[0].startswith("store ")


def test_status_passes_with_a_fresh_heartbeat_and_fails_when_it_is_stale(status, gateway):
    operations.beat(gateway, "celery@host-1")
    fresh = status()
    assert fresh.returncode == 0, fresh.stderr
    assert "celery@host-1" in fresh.stdout and fresh.stderr == ""
    operations.beat(gateway, "celery@host-1", now=utcnow() - timedelta(seconds=120))
    stale = status(WORKER_STALE_SECONDS="60")
    assert stale.returncode == 1
    assert "PROBLEM: the worker is stale: its last heartbeat (celery@host-1) was 12" in stale.stderr


def test_status_names_an_unreachable_broker(status, gateway):
    operations.beat(gateway, "celery@host-1")
    result = status(CELERY_BROKER_URL="redis://127.0.0.1:1/0")
    assert result.returncode == 1
    assert "PROBLEM: the broker cannot be reached" in result.stderr


def test_status_says_whether_postgresql_runs_autovacuum(status, db):
    # Off, the statistics and the prepared statements' plans of a table that grew stay those of when
    # it was small (a send gate planned on an empty messages table scans it on every send).
    lines = dict(line.split("  ", 1) for line in status().stdout.splitlines())
    if db.dialect != "postgresql":
        assert "store upkeep" not in lines
        return
    with db.engine.connect() as connection:
        running = connection.exec_driver_sql("SHOW autovacuum").scalar()
    expected = "autovacuum on" if running == "on" else "autovacuum OFF: tables keep the statistics"
    assert lines["store upkeep"].strip().startswith(expected)

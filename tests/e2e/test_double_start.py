"""A second start beside a running gateway refuses before it touches anything of the running one.

It used to clear the shared metrics directory first and only then fail on the busy port: the running
gateway's /metrics stayed empty from then on.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import ROOT
from tests.faults_support import WebProcess, procfile

pytestmark = pytest.mark.e2e


def _rejected(base: str) -> float:
    """smsgate_webhook_rejected_total summed over its labels, from a scrape of the web process."""
    families = text_string_to_metric_families(requests.get(f"{base}/metrics", timeout=10).text)
    return sum(sample.value for family in families if family.name == "smsgate_webhook_rejected"
               for sample in family.samples if sample.name == "smsgate_webhook_rejected_total")


@pytest.fixture
def running(test_env, tmp_path):
    web = WebProcess({**test_env, "VAR_DIR": str(tmp_path / "var")}, tmp_path / "first.log")
    web.start()
    for _ in range(3):  # unsigned webhooks: refused, and counted in /metrics
        assert requests.post(f"{web.base}/webhooks/twilio/sms", data={"Body": "hi"}, timeout=10).status_code == 403
    assert _rejected(web.base) == 3
    yield web
    web.stop()


def _second(running: WebProcess, tmp_path, **overrides: str) -> tuple[int, str]:
    env = {**running.env, **overrides}
    finished = subprocess.run(procfile()["web"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    return finished.returncode, finished.stdout + finished.stderr


def test_a_second_web_process_on_the_same_port_refuses_and_the_first_keeps_its_metrics(running, tmp_path):
    code, output = _second(running, tmp_path)
    assert code != 0
    assert f"port {running.port}" in output and f"pid {running.process.pid}" in output, output
    assert "nothing of it was touched" in output
    assert _rejected(running.base) == 3  # its samples are all still there
    assert requests.post(f"{running.base}/webhooks/twilio/sms", data={"Body": "hi"}, timeout=10).status_code == 403
    assert _rejected(running.base) == 4  # and it goes on counting


def test_a_second_web_process_on_another_port_joins_and_clears_nothing(running, tmp_path):
    """Two web processes with one VAR_DIR (`honcho start -c web=2`): the second counts into the same
    metrics directory instead of emptying it; each /metrics shows the host's totals."""
    second = WebProcess({**running.env, "VAR_DIR": running.env["VAR_DIR"]}, tmp_path / "second.log")
    second.start()
    try:
        assert _rejected(running.base) == 3 and _rejected(second.base) == 3
        assert requests.post(f"{second.base}/webhooks/twilio/sms", data={"Body": "hi"}, timeout=10).status_code == 403
        assert _rejected(running.base) == 4 and _rejected(second.base) == 4
    finally:
        second.stop()


def test_a_web_process_on_a_busy_port_refuses_naming_it(running, tmp_path):
    other_var = tmp_path / "other-var"
    code, output = _second(running, tmp_path, VAR_DIR=str(other_var))
    assert code != 0
    assert f"port {running.port}" in output and "already in use" in output, output
    assert not (other_var / "prometheus").exists()  # refused before it made or cleared anything
    assert _rejected(running.base) == 3


def test_make_run_checks_before_starting_anything(running):
    """`make run`'s first step (`python -m gateway.banner --check`) refuses while the gateway runs."""
    refused = subprocess.run([sys.executable, "-m", "gateway.banner", "--check"], cwd=ROOT, env=running.env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert f"pid {running.process.pid}" in refused.stderr and "not starting" in refused.stderr
    running.stop()
    allowed = subprocess.run([sys.executable, "-m", "gateway.banner", "--check"], cwd=ROOT, env=running.env,
                             capture_output=True, text=True, timeout=60)
    assert allowed.returncode == 0, allowed.stderr


def test_a_killed_web_process_leaves_no_lock_behind(running, tmp_path):
    """SIGKILL leaves web.lock and its pid on disk, but the kernel dropped the lock: the next start goes."""
    running.kill()
    assert (tmp_path / "var" / "web.lock").exists()
    again = WebProcess({**running.env, "VAR_DIR": str(tmp_path / "var")}, tmp_path / "again.log")
    again.start()
    try:
        assert requests.get(f"{again.base}/metrics", timeout=10).status_code == 200
    finally:
        again.stop()

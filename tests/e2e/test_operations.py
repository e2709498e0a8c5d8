"""A frozen worker, seen from outside as an operator sees it: `smsgate status`, the web's gauges, the
worker's own /metrics and the alert a real Prometheus fires from config/prometheus/alerts.yml, with
real processes (gunicorn as the Procfile runs it, a Celery worker with beat, a broker of their own,
Debian's Prometheus scraping both).

Before: with the worker stopped (SIGSTOP), sends were answered 202 and stayed queued, while every
signal an operator had said all was well.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import ROOT
from tests.conftest import WorkerProcess, _free_port, wait_for
from tests.e2e.test_outbound import opted_in
from tests.faults_support import Broker, WebProcess, children_of, kill_with_children
from tests.sandbox_support import message_row

pytestmark = pytest.mark.e2e


@pytest.fixture
def prometheus_installed():
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus)")


@pytest.fixture
def broker(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: the test runs a broker of its own")
    broker = Broker(tmp_path / "redis.log")
    broker.start()
    yield broker
    broker.kill()


class Prometheus:
    """A Prometheus server scraping `targets` every second and evaluating the repository's alert rules."""

    def __init__(self, directory, targets: dict[str, str]):
        self.port, self.directory = _free_port(), directory
        jobs = "\n".join(f"  - job_name: {job}\n    static_configs: [{{targets: ['{target}']}}]"
                          for job, target in targets.items())
        (directory / "prometheus.yml").write_text(
            f"global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n"
            f"rule_files: ['{ROOT / 'config' / 'prometheus' / 'alerts.yml'}']\n"
            f"scrape_configs:\n{jobs}\n")
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=(directory / "prometheus.log").open("ab"), stderr=subprocess.STDOUT)

    def firing(self) -> set[str]:
        answer = requests.get(f"http://127.0.0.1:{self.port}/api/v1/alerts", timeout=5).json()
        return {alert["labels"]["alertname"] for alert in answer["data"]["alerts"] if alert["state"] == "firing"}

    def ready(self) -> bool:
        assert self.process.poll() is None, (self.directory / "prometheus.log").read_text()[-3000:]
        try:
            return requests.get(f"http://127.0.0.1:{self.port}/-/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    exposition = requests.get(url, timeout=5).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(exposition) for sample in family.samples}


def total(scraped: dict, name: str) -> float:
    return sum(value for (sample, _), value in scraped.items() if sample == name)


def test_a_frozen_worker_is_named_by_status_gauges_metrics_and_alert_then_recovers(
        test_env, broker, prometheus_installed, tmp_path, live_server, db, make_key):
    environment = {**test_env, "CELERY_BROKER_URL": broker.url, "VAR_DIR": str(tmp_path / "var"),
                   "WORKER_HEARTBEAT_SECONDS": "1", "WORKER_STALE_SECONDS": "4",
                   "WORKER_METRICS_PORT": str(_free_port())}
    web = WebProcess(environment, tmp_path / "web.log")
    # The worker calls the sandbox where the session serves it.
    worker = WorkerProcess(environment | {"PUBLIC_BASE_URL": test_env["PUBLIC_BASE_URL"]}, tmp_path / "worker.log",
                           "--beat")
    worker_metrics = f"http://127.0.0.1:{environment['WORKER_METRICS_PORT']}/metrics"

    def status() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gateway.cli", "status"], cwd=ROOT, capture_output=True,
                              text=True, timeout=60, env={**os.environ, **environment})

    key = make_key("send", "read")
    opted_in(db, "orders", "+14155550401")
    web.start()
    worker.start()
    (tmp_path / "prometheus").mkdir()
    prometheus = Prometheus(tmp_path / "prometheus", {
        "smsgate-web": web.base.removeprefix("http://"),
        "smsgate-worker": f"127.0.0.1:{environment['WORKER_METRICS_PORT']}"})
    frozen: list[int] = []
    try:
        wait_for(prometheus.ready, timeout=30, what="Prometheus is ready")
        healthy = wait_for(lambda: (result := status()).returncode == 0 and result, timeout=30,
                           what="smsgate status passes once the worker beats")
        heartbeat_line = next(line for line in healthy.stdout.splitlines() if line.startswith("worker heartbeat"))
        assert " s ago (" in heartbeat_line, healthy.stdout
        first = web.send(key, "+14155550401", "orders", "Your order shipped")
        assert first.status_code == 202, first.text
        wait_for(lambda: message_row(db, first.json()["id"]).status in ("sent", "delivered"), timeout=30)
        # The worker's own counts, on its own endpoint (counted just after the row says sent).
        counted = wait_for(lambda: (found := scrape(worker_metrics))
                           and total(found, "smsgate_messages_sent_total") >= 1 and found, timeout=10,
                           what="the worker counts the send")
        assert total(counted, "smsgate_provider_seconds_count") >= 1
        assert total(counted, "smsgate_worker_heartbeats_total") >= 1

        frozen = [worker.process.pid, *children_of(worker.process.pid)]  # the worker and its beat
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        second = web.send(key, "+14155550401", "orders", "Your order is out for delivery")
        assert second.status_code == 202  # accepted: the outbox holds it for the worker
        stale = wait_for(lambda: (result := status()).returncode == 1 and result, timeout=20,
                         what="smsgate status fails while the worker is frozen")
        assert "the worker is stale" in stale.stderr, stale.stderr
        gauges = scrape(f"{web.base}/metrics")
        assert gauges[("smsgate_worker_heartbeat_age_seconds", ())] > 4
        assert gauges[("smsgate_outbox_messages", (("status", "queued"),))] == 1
        assert gauges[("smsgate_outbox_oldest_queued_seconds", ())] > 0
        wait_for(lambda: "SmsgateWorkerStale" in prometheus.firing(), timeout=20,
                 what="Prometheus fires SmsgateWorkerStale")

        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        frozen = []
        wait_for(lambda: message_row(db, second.json()["id"]).status in ("sent", "delivered"), timeout=30)
        wait_for(lambda: status().returncode == 0, timeout=20, what="smsgate status passes again")
        assert scrape(f"{web.base}/metrics")[("smsgate_worker_heartbeat_age_seconds", ())] < 4
        wait_for(lambda: "SmsgateWorkerStale" not in prometheus.firing(), timeout=20,
                 what="the alert clears once the worker beats again")
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        prometheus.stop()
        web.stop()
        children = children_of(worker.process.pid) if worker.process else set()
        worker.stop()
        if worker.process:
            kill_with_children(worker.process, children)

"""What a Procfile host (Heroku, Dokku, honcho in a container) runs: the Procfile's own commands, found
on PATH, with production settings (SANDBOX off, a real-looking account), in a checkout with no var/."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from gateway.config import ROOT
from tests.conftest import REAL_TWILIO_ENV, _free_port

pytestmark = pytest.mark.e2e
VENV_BIN = Path(sys.executable).parent


def procfile() -> dict[str, list[str]]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            entries[name.strip()] = shlex.split(command)
    return entries


def production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A deployment's environment: the commands on PATH, nothing under the checkout's var/."""
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("TWILIO_", "SANDBOX", "PROMETHEUS_"))}
    environment.update(REAL_TWILIO_ENV)
    environment.update({
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'gateway.db'}",
        "CELERY_BROKER_URL": f"filesystem://{tmp_path / 'broker'}",
        "REDIS_URL": "",
        "SUPPRESSION_KEY": "deploy-test-suppression-key-0123456789",
        "PUBLIC_BASE_URL": "https://sms.example.com",
        "VAR_DIR": str(tmp_path / "fresh" / "var"),  # does not exist yet, as in a fresh checkout
        **extra,
    })
    return environment


def test_the_procfile_names_its_commands_plainly():
    """A Procfile host runs the commands from its own PATH; a path into .venv exists only here."""
    entries = procfile()
    assert set(entries) == {"web", "worker"}
    for name, argv in entries.items():
        assert "/" not in argv[0], f"{name}: {argv[0]}"
        assert (VENV_BIN / argv[0]).exists(), f"{name}: {argv[0]} is not installed by the project"


def _run(argv: list[str], environment: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=ROOT, env=environment, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_the_web_process_listens_where_the_settings_say(tmp_path):
    """gunicorn binds WEB_HOST:PORT from the settings (here 127.0.0.2, another loopback address), not a
    host written into its configuration."""
    port = _free_port()
    environment = production_env(tmp_path, WEB_HOST="127.0.0.2", PORT=str(port), WEB_CONCURRENCY="1")
    process = _run(procfile()["web"], environment, tmp_path / "web.log")
    try:
        deadline, answer = time.monotonic() + 60, None
        while answer is None and time.monotonic() < deadline and process.poll() is None:
            try:
                answer = requests.get(f"http://127.0.0.2:{port}/healthz", timeout=5)
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or its worker still booting
                time.sleep(0.2)
        assert answer is not None, (tmp_path / "web.log").read_text()[-3000:]
        assert answer.status_code == 200 and answer.json() == {"status": "ok"}
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        # SANDBOX is off: nothing is mounted at /sandbox.
        assert requests.get(f"http://127.0.0.2:{port}/sandbox/phone", timeout=5).status_code == 404
    finally:
        _stop(process)


def test_the_worker_and_its_beat_start_in_a_checkout_without_var(tmp_path):
    environment = production_env(tmp_path)
    upgraded = subprocess.run([str(VENV_BIN / "smsgate"), "db", "upgrade"], cwd=ROOT, env=environment,
                              capture_output=True, text=True, timeout=120)
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    log = tmp_path / "worker.log"
    process = _run(procfile()["worker"], environment, log)
    schedule = Path(environment["VAR_DIR"]) / "celerybeat-schedule"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            text = log.read_text(errors="replace")
            if " ready." in text and "beat: Starting" in text and list(schedule.parent.glob(schedule.name + "*")):
                break
            time.sleep(0.2)
        time.sleep(1)  # beat opens its schedule just after it says it is starting
        text = log.read_text(errors="replace")
        assert process.poll() is None, text[-3000:]
        assert " ready." in text and "beat: Starting" in text, text[-3000:]
        assert "Traceback" not in text and "corrupted schedule" not in text, text[-3000:]
        assert list(schedule.parent.glob(schedule.name + "*")), text[-3000:]
    finally:
        _stop(process)

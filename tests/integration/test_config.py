"""Settings: defaults, environment overrides, and start-up errors that name the setting."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ROOT, SANDBOX_ACCOUNT_SID, SANDBOX_AUTH_TOKEN, ConfigError, load_settings

REAL_SID = "AC" + "5" * 32


def env(tmp_path, **overrides):
    base = {"VAR_DIR": str(tmp_path), "SUPPRESSION_KEY": "k" * 40}
    base.update(overrides)
    return base


def test_defaults_need_no_services(tmp_path):
    settings = load_settings(env={"VAR_DIR": str(tmp_path), "SANDBOX": "on"})
    assert settings.database_url == f"sqlite:///{tmp_path / 'gateway.db'}"
    assert settings.celery_broker_url == f"filesystem://{tmp_path / 'broker'}"
    assert settings.redis_url is None
    assert settings.sandbox is True
    assert settings.twilio_account_sid == SANDBOX_ACCOUNT_SID
    assert settings.twilio_auth_token == SANDBOX_AUTH_TOKEN
    assert settings.twilio_api_base_url == "http://127.0.0.1:5000/sandbox"
    assert (settings.web_host, settings.port) == ("127.0.0.1", 5000)


def test_a_message_whose_task_died_is_recovered_within_a_minute_by_default(tmp_path):
    settings = load_settings(env={"VAR_DIR": str(tmp_path), "SANDBOX": "on"})
    # The worst case: the threshold passes just after a sweep, and the next sweep finds it.
    assert settings.outbox_lost_task_seconds + settings.outbox_sweep_seconds < 60
    assert settings.outbox_claim_lease_seconds + settings.outbox_sweep_seconds < 60


def test_the_sandbox_is_off_unless_asked(tmp_path):
    with pytest.raises(ConfigError, match="TWILIO_AUTH_TOKEN: required when SANDBOX is off"):
        load_settings(env={"VAR_DIR": str(tmp_path)})
    settings = load_settings(env=env(tmp_path, TWILIO_ACCOUNT_SID=REAL_SID, TWILIO_AUTH_TOKEN="real-token"))
    assert settings.sandbox is False
    assert settings.twilio_api_base_url is None  # real Twilio


def test_the_sandbox_accepts_its_own_account_spelled_out(tmp_path):
    settings = load_settings(env=env(
        tmp_path, SANDBOX="on", TWILIO_ACCOUNT_SID=SANDBOX_ACCOUNT_SID, TWILIO_AUTH_TOKEN=SANDBOX_AUTH_TOKEN,
        PUBLIC_BASE_URL="http://127.0.0.1:5100", TWILIO_API_BASE_URL="http://127.0.0.1:5100/sandbox/"))
    assert settings.twilio_api_base_url == "http://127.0.0.1:5100/sandbox"
    assert settings.webhook_tokens == (SANDBOX_AUTH_TOKEN,)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"TWILIO_ACCOUNT_SID": REAL_SID}, "TWILIO_ACCOUNT_SID is a real account"),
        ({"TWILIO_AUTH_TOKEN": "a-real-token"}, "TWILIO_AUTH_TOKEN is a real token"),
        ({"TWILIO_AUTH_TOKENS_PREVIOUS": "an-old-real-token"}, "TWILIO_AUTH_TOKENS_PREVIOUS is set"),
        ({"TWILIO_API_BASE_URL": "https://api.twilio.com"}, "TWILIO_API_BASE_URL is not the sandbox"),
        ({"TWILIO_API_BASE_URL": "http://127.0.0.1:5999/sandbox"}, "TWILIO_API_BASE_URL is not the sandbox"),
    ],
)
def test_the_sandbox_refuses_a_real_account(tmp_path, overrides, named):
    """With the sandbox on, its texts would reach our webhooks signed with a real token, and sends
    would be reported delivered without going anywhere: start-up stops, naming SANDBOX and the setting."""
    with pytest.raises(ConfigError, match=f"^SANDBOX is on but {named}") as raised:
        load_settings(env=env(tmp_path, SANDBOX="on", **overrides))
    assert "a-real-token" not in str(raised.value) and "an-old-real-token" not in str(raised.value)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"TWILIO_AUTH_TOKEN": SANDBOX_AUTH_TOKEN}, "TWILIO_AUTH_TOKEN is the sandbox's"),
        ({"TWILIO_AUTH_TOKENS_PREVIOUS": f"old, {SANDBOX_AUTH_TOKEN}"},
         "TWILIO_AUTH_TOKENS_PREVIOUS holds the sandbox's"),
        ({"TWILIO_ACCOUNT_SID": SANDBOX_ACCOUNT_SID}, "TWILIO_ACCOUNT_SID is the sandbox's"),
    ],
)
def test_real_twilio_refuses_the_sandbox_account(tmp_path, overrides, named):
    """The sandbox's token is published: with the sandbox off it must never validate a webhook."""
    real = {"SANDBOX": "off", "TWILIO_ACCOUNT_SID": REAL_SID, "TWILIO_AUTH_TOKEN": "real-token"}
    with pytest.raises(ConfigError, match=f"^SANDBOX is off but {named}"):
        load_settings(env=env(tmp_path, **{**real, **overrides}))


def test_the_web_binds_where_told(tmp_path):
    settings = load_settings(env=env(tmp_path, SANDBOX="on", WEB_HOST="0.0.0.0", PORT="8080"))
    assert (settings.web_host, settings.port) == ("0.0.0.0", 8080)


def test_suppression_key_is_generated_once_and_kept(tmp_path):
    first = load_settings(env={"VAR_DIR": str(tmp_path), "SANDBOX": "on"}).suppression_key
    second = load_settings(env={"VAR_DIR": str(tmp_path), "SANDBOX": "on"}).suppression_key
    assert first == second and len(first) == 64
    assert (tmp_path / "suppression.key").stat().st_mode & 0o777 == 0o600


def test_environment_overrides_defaults(tmp_path):
    settings = load_settings(env=env(
        tmp_path, DATABASE_URL="postgres://u@db/x", PUBLIC_BASE_URL="https://sms.example.com/",
        SANDBOX="off", TWILIO_ACCOUNT_SID=REAL_SID, TWILIO_AUTH_TOKEN="tok", PENDING_TTL_HOURS="24",
        TWILIO_AUTH_TOKENS_PREVIOUS="old1, old2 ,",
    ))
    assert settings.database_url == "postgresql+psycopg://u@db/x"
    assert settings.public_base_url == "https://sms.example.com"
    assert settings.public_url("/webhooks/twilio/sms") == "https://sms.example.com/webhooks/twilio/sms"
    assert settings.sandbox is False and settings.twilio_api_base_url is None
    assert settings.pending_ttl_hours == 24
    assert settings.webhook_tokens == ("tok", "old1", "old2")


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"SANDBOX": "maybe"}, "SANDBOX"),
        ({"SANDBOX": "off"}, "TWILIO_AUTH_TOKEN"),
        ({"PUBLIC_BASE_URL": "localhost:5000"}, "PUBLIC_BASE_URL"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"TWILIO_ACCOUNT_SID": "AC123"}, "TWILIO_ACCOUNT_SID"),
        ({"DEFAULT_REGION": "XX"}, "DEFAULT_REGION"),
        ({"PENDING_TTL_HOURS": "two"}, "PENDING_TTL_HOURS"),
        ({"PENDING_TTL_HOURS": "0"}, "PENDING_TTL_HOURS"),
        ({"PROGRAMS_FILE": "/nonexistent.toml"}, "PROGRAMS_FILE"),
        ({"SUPPRESSION_KEY": "short"}, "SUPPRESSION_KEY"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"TWILIO_API_BASE_URL": "ftp://x"}, "TWILIO_API_BASE_URL"),
        ({"WEB_HOST": "0.0.0.0/0"}, "WEB_HOST"),
        ({"WEB_HOST": ""}, "WEB_HOST"),
        ({"PORT": "http"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"PORT": "0"}, "PORT"),
        ({"OUTBOX_SWEEP_SECONDS": "0"}, "OUTBOX_SWEEP_SECONDS"),
        ({"OUTBOX_LOST_TASK_SECONDS": "0"}, "OUTBOX_LOST_TASK_SECONDS"),
        # Under twice the provider call's timeout, a call could outlast the half-lease it starts in.
        ({"OUTBOX_CLAIM_LEASE_SECONDS": "19"}, "OUTBOX_CLAIM_LEASE_SECONDS"),
    ],
)
def test_bad_values_stop_start_up_naming_the_setting(tmp_path, overrides, named):
    with pytest.raises(ConfigError, match=named):
        load_settings(env=env(tmp_path, **{"SANDBOX": "on", **overrides}))


def test_bad_setting_stops_the_cli_with_its_name(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from gateway.cli import main

    monkeypatch.setenv("VAR_DIR", str(tmp_path))
    monkeypatch.setenv("SANDBOX", "perhaps")
    result = CliRunner().invoke(main, ["ledger", "verify"])
    assert result.exit_code == 1
    assert "SANDBOX" in result.output


@pytest.mark.parametrize("command", [
    ["gunicorn", "-c", "config/gunicorn.conf.py", "--check-config", "gateway.web.app:create_app()"],  # Procfile web
    ["celery", "-A", "worker", "report"],  # loads what the Procfile's worker loads
    ["smsgate", "db", "upgrade"],
], ids=["web", "worker", "smsgate"])
def test_every_process_refuses_the_sandbox_with_a_real_account(tmp_path, command):
    environment = {**os.environ, "VAR_DIR": str(tmp_path), "SANDBOX": "on", "TWILIO_ACCOUNT_SID": REAL_SID,
                   "DATABASE_URL": f"sqlite:///{tmp_path / 'never.db'}"}
    environment.pop("TWILIO_AUTH_TOKEN", None)
    environment.pop("TWILIO_API_BASE_URL", None)
    finished = subprocess.run([str(Path(sys.executable).parent / command[0]), *command[1:]], cwd=ROOT,
                              env=environment, capture_output=True, text=True, timeout=120)
    assert finished.returncode != 0
    assert "SANDBOX is on but TWILIO_ACCOUNT_SID is a real account" in finished.stdout + finished.stderr
    assert not (tmp_path / "never.db").exists()

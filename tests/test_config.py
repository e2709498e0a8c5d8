"""Settings: defaults, environment overrides, and start-up errors that name the setting."""

import pytest

from gateway.config import SANDBOX_AUTH_TOKEN, ConfigError, load_settings


def env(tmp_path, **overrides):
    base = {"VAR_DIR": str(tmp_path), "SUPPRESSION_KEY": "k" * 40}
    base.update(overrides)
    return base


def test_defaults_need_no_services(tmp_path):
    settings = load_settings(env={"VAR_DIR": str(tmp_path)})
    assert settings.database_url == f"sqlite:///{tmp_path / 'gateway.db'}"
    assert settings.celery_broker_url == f"filesystem://{tmp_path / 'broker'}"
    assert settings.redis_url is None
    assert settings.sandbox is True
    assert settings.twilio_auth_token == SANDBOX_AUTH_TOKEN
    assert settings.twilio_api_base_url == "http://127.0.0.1:5000/sandbox"


def test_suppression_key_is_generated_once_and_kept(tmp_path):
    first = load_settings(env={"VAR_DIR": str(tmp_path)}).suppression_key
    second = load_settings(env={"VAR_DIR": str(tmp_path)}).suppression_key
    assert first == second and len(first) == 64
    assert (tmp_path / "suppression.key").stat().st_mode & 0o777 == 0o600


def test_environment_overrides_defaults(tmp_path):
    settings = load_settings(env=env(
        tmp_path, DATABASE_URL="postgres://u@db/x", PUBLIC_BASE_URL="https://sms.example.com/",
        SANDBOX="off", TWILIO_AUTH_TOKEN="tok", PENDING_TTL_HOURS="24", TWILIO_AUTH_TOKENS_PREVIOUS="old1, old2 ,",
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
    ],
)
def test_bad_values_stop_start_up_naming_the_setting(tmp_path, overrides, named):
    with pytest.raises(ConfigError, match=named):
        load_settings(env=env(tmp_path, **overrides))


def test_bad_setting_stops_the_cli_with_its_name(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from gateway.cli import main

    monkeypatch.setenv("VAR_DIR", str(tmp_path))
    monkeypatch.setenv("SANDBOX", "perhaps")
    result = CliRunner().invoke(main, ["ledger", "verify"])
    assert result.exit_code == 1
    assert "SANDBOX" in result.output

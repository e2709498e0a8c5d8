"""Settings: defaults from config/settings.toml, overridden by the environment, validated once."""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import phonenumbers

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "config"
# The built-in sandbox's account and token (docs/sandbox.md). Published, so worth nothing as secrets:
# they are accepted only while SANDBOX is on, and a real account is refused while it is.
SANDBOX_ACCOUNT_SID = "AC" + "0" * 32
SANDBOX_AUTH_TOKEN = "sandbox-auth-token-not-a-secret"
ACCOUNT_SID_RE = re.compile(r"^AC[0-9a-fA-F]{32}$")
# An IPv4/IPv6 address or a host name: what gunicorn's bind takes before the port.
WEB_HOST_RE = re.compile(r"^[0-9A-Za-z.:-]+$")


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names it."""


@dataclasses.dataclass(frozen=True)
class Settings:
    database_url: str
    celery_broker_url: str
    redis_url: str | None
    twilio_account_sid: str
    twilio_auth_token: str
    # Older tokens still accepted on webhooks while a rotation is under way (TWILIO_AUTH_TOKENS_PREVIOUS).
    twilio_previous_auth_tokens: tuple[str, ...]
    twilio_api_base_url: str | None
    public_base_url: str
    programs_file: Path
    suppression_key: bytes
    sandbox: bool
    default_region: str
    log_level: str
    var_dir: Path
    pending_ttl_hours: int
    trusted_proxies: int
    max_content_length: int
    # Confirmation texts allowed, in `limits` notation: against SMS pumping (gateway/services/abuse.py).
    confirmation_limit_per_number: str = "3 per 24 hours"
    confirmation_limit_per_client: str = "10 per hour"
    confirmation_limit_per_program: str = "1000 per hour"
    # Where gunicorn listens (config/gunicorn.conf.py): WEB_HOST and PORT, which Procfile hosts set.
    web_host: str = "127.0.0.1"
    port: int = 5000
    # Ledger checkpoints (docs/ledger.md): the Ed25519 private key (32 bytes) that signs them, kept
    # outside the database; the directory of the checkpoint log; how often beat writes one.
    ledger_signing_key: bytes = dataclasses.field(default=b"", repr=False)
    ledger_checkpoint_dir: Path = Path("var/checkpoints")
    ledger_checkpoint_seconds: int = 3600
    # Per API key, whatever evidence.ip says; and how IPv6 clients are grouped for the per-client limit.
    confirmation_limit_per_key: str = "100 per hour"
    confirmation_client_ipv6_prefix: int = 64
    # How often each web process replays the inbound journal (gateway/services/inbound_journal.py); 0: never.
    inbound_journal_replay_seconds: int = 5
    # How often beat reads Twilio's message log for texts whose webhook never came
    # (gateway/services/inbound_reconcile.py); 0: never.
    inbound_reconcile_seconds: int = 300
    # Recovery of outbox messages whose task died (docs/decisions/0015-quick-recovery.md): how often
    # beat sweeps, how long a queued message's task has to take it, how long a claim is a worker's.
    outbox_sweep_seconds: int = 10
    outbox_lost_task_seconds: int = 30
    outbox_claim_lease_seconds: int = 40
    # Operating the gateway (docs/operations.md): the worker's own /metrics port (0: none), on WEB_HOST;
    # how often beat has a worker write its heartbeat; when `smsgate status` and the alerts call the
    # worker stale, and the oldest queued message too old.
    worker_metrics_port: int = 9101
    worker_heartbeat_seconds: int = 10
    worker_stale_seconds: int = 60
    outbox_backlog_max_seconds: int = 300
    # `text` (one line a record) or `json` (one object a line, event fields as keys): LOG_FORMAT.
    log_format: str = "text"
    # Carrier look-ups (docs/decisions/0027-lookups-and-deactivations.md). Each Lookup is billed by
    # Twilio, so both are off unless asked for: the line type of a number before its first message
    # (landlines refused, non-fixed VoIP flagged), and the reassigned-number check (US numbers, an
    # account Twilio approved for it); an answer is reused for `lookup_ttl_days`.
    lookup_line_type: bool = False
    lookup_reassigned_number: bool = False
    lookup_ttl_days: int = 30
    # The carriers' Deactivations list (free): how often beat looks for days not read yet (0: never;
    # `smsgate deactivations run` does it once), and how many days back it looks.
    deactivations_check_seconds: int = 3600
    deactivations_days_back: int = 7
    # The compliance console's sign-in limits (gateway/services/console.py): attempts per client address
    # (`limits` notation, shared by every web process); consecutive failures that lock an account, and
    # for how long; how long a session lasts unused, and at most.
    console_login_limit_per_client: str = "20 per 10 minutes"
    console_max_failed_logins: int = 5
    console_lockout_seconds: int = 900
    console_session_idle_seconds: int = 1800
    console_session_lifetime_seconds: int = 43200

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def webhook_tokens(self) -> tuple[str, ...]:
        """Every auth token a webhook signature may be made with, current first.

        The sandbox's published token only while the sandbox is on: load_settings refuses it otherwise,
        and this keeps it out even of settings built some other way (dataclasses.replace in tests).
        """
        tokens = (self.twilio_auth_token, *self.twilio_previous_auth_tokens)
        return tokens if self.sandbox else tuple(t for t in tokens if t != SANDBOX_AUTH_TOKEN)

    def public_url(self, path: str) -> str:
        return self.public_base_url.rstrip("/") + path


def _as_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name.upper()}: expected on/off, got {value!r}")


def _port(name: str, value: object, minimum: int) -> int:
    number = _as_int(name, value, minimum)
    if number > 65535:
        raise ConfigError(f"{name.upper()}: expected a TCP port up to 65535, got {number}")
    return number


def _as_int(name: str, value: object, minimum: int = 0) -> int:
    try:
        number = int(str(value).replace("_", ""))
    except ValueError:
        raise ConfigError(f"{name.upper()}: expected a whole number, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{name.upper()}: must be at least {minimum}, got {number}")
    return number


def _as_rate(name: str, value: object) -> str:
    from limits import parse

    text = str(value).strip()
    try:
        parse(text)
    except ValueError:
        raise ConfigError(f"{name.upper()}: expected a rate such as '3 per 24 hours', got {value!r}") from None
    return text


def _as_prefix(name: str, value: object) -> int:
    length = _as_int(name, value, minimum=1)
    if length > 128:
        raise ConfigError(f"{name.upper()}: an IPv6 prefix length is 1 to 128, got {length}")
    return length


def _path(value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else ROOT / path


def _suppression_key(raw: str, var_dir: Path) -> bytes:
    """The HMAC key for suppression hashes: from the environment, else generated once into var/."""
    if raw:
        if len(raw) < 32:
            raise ConfigError("SUPPRESSION_KEY: use at least 32 characters of secret")
        return raw.encode()
    return _generated_once(var_dir / "suppression.key").encode()


def _generated_once(key_file: Path) -> str:
    """The secret in `key_file`, 32 random bytes in hex written there (mode 0600) if there is none yet."""
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL so two processes starting together cannot write two different keys.
        try:
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
    return key_file.read_text().strip()


_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")


def _ledger_signing_key(raw: str, var_dir: Path) -> bytes:
    """The Ed25519 private key (its 32-byte seed, written as 64 hex digits) that signs ledger checkpoints:
    from the environment, else generated once into var/. Any 32 random bytes are a valid key."""
    where = "LEDGER_SIGNING_KEY"
    if not raw:
        key_file = var_dir / "ledger-signing.key"
        raw, where = _generated_once(key_file), f"LEDGER_SIGNING_KEY (generated into {key_file})"
    raw = raw.strip()
    if not _HEX_KEY.match(raw):
        raise ConfigError(f"{where}: expected 64 hex digits (a 32-byte Ed25519 private key, "
                          "e.g. from `openssl rand -hex 32`)")
    return bytes.fromhex(raw)


def _refuse_real_twilio(account_sid: str, auth_token: str, previous: tuple[str, ...], api_base: str | None,
                        sandbox_api: str) -> None:
    """With SANDBOX on, only the sandbox's account: the sandbox would otherwise post texts to our
    webhooks signed with a real token, and sends would go nowhere yet be reported delivered."""
    fix = "turn SANDBOX off for real Twilio, or unset"
    if account_sid != SANDBOX_ACCOUNT_SID:
        raise ConfigError(f"SANDBOX is on but TWILIO_ACCOUNT_SID is a real account ({account_sid[:6]}…): "
                          f"{fix} TWILIO_ACCOUNT_SID")
    if auth_token and auth_token != SANDBOX_AUTH_TOKEN:
        raise ConfigError(f"SANDBOX is on but TWILIO_AUTH_TOKEN is a real token: {fix} TWILIO_AUTH_TOKEN "
                          "(the sandbox has its own)")
    if previous:
        raise ConfigError(f"SANDBOX is on but TWILIO_AUTH_TOKENS_PREVIOUS is set: {fix} TWILIO_AUTH_TOKENS_PREVIOUS")
    if api_base is not None and api_base != sandbox_api:
        raise ConfigError(f"SANDBOX is on but TWILIO_API_BASE_URL is not the sandbox ({api_base}, not {sandbox_api}): "
                          f"{fix} TWILIO_API_BASE_URL")


def _refuse_sandbox_credentials(account_sid: str, auth_token: str, previous: tuple[str, ...]) -> None:
    """With SANDBOX off, the sandbox's published token must never validate a webhook, and its made-up
    account would only fail at Twilio: say so now rather than at the first send."""
    if not auth_token:
        raise ConfigError("TWILIO_AUTH_TOKEN: required when SANDBOX is off (turn SANDBOX on for the built-in sandbox)")
    if auth_token == SANDBOX_AUTH_TOKEN:
        raise ConfigError("SANDBOX is off but TWILIO_AUTH_TOKEN is the sandbox's published token: "
                          "set your Twilio auth token, or turn SANDBOX on")
    if SANDBOX_AUTH_TOKEN in previous:
        raise ConfigError("SANDBOX is off but TWILIO_AUTH_TOKENS_PREVIOUS holds the sandbox's published token: "
                          "remove it, or turn SANDBOX on")
    if account_sid == SANDBOX_ACCOUNT_SID:
        raise ConfigError("SANDBOX is off but TWILIO_ACCOUNT_SID is the sandbox's account: "
                          "set your Twilio account SID, or turn SANDBOX on")


def load_settings(env: Mapping[str, str] | None = None, file: Path | None = None) -> Settings:
    """Read defaults, apply environment overrides, validate; raise ConfigError naming the setting."""
    env = os.environ if env is None else env
    with open(file or CONFIG_DIR / "settings.toml", "rb") as handle:
        raw: dict[str, object] = tomllib.load(handle)
    for key in list(raw):
        if key.upper() in env:
            raw[key] = env[key.upper()]

    var_dir = _path(str(raw["var_dir"]))
    sandbox = _as_bool("sandbox", raw["sandbox"])
    public_base_url = str(raw["public_base_url"]).rstrip("/")
    parts = urlsplit(public_base_url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ConfigError(f"PUBLIC_BASE_URL: expected an absolute http(s) URL, got {public_base_url!r}")

    database_url = str(raw["database_url"]) or f"sqlite:///{var_dir / 'gateway.db'}"
    if database_url.startswith("postgres://"):
        database_url = "postgresql://" + database_url.removeprefix("postgres://")
    if database_url.startswith("postgresql://"):
        # psycopg 3 is the driver we install; say so explicitly rather than relying on the default.
        database_url = "postgresql+psycopg://" + database_url.removeprefix("postgresql://")
    if not database_url.startswith(("sqlite", "postgresql")):
        raise ConfigError(f"DATABASE_URL: only PostgreSQL and SQLite are supported, got {database_url.split(':')[0]!r}")

    account_sid = str(raw["twilio_account_sid"])
    if not ACCOUNT_SID_RE.match(account_sid):
        raise ConfigError("TWILIO_ACCOUNT_SID: expected AC followed by 32 hex digits")
    auth_token = str(raw["twilio_auth_token"])
    previous = tuple(t.strip() for t in env.get("TWILIO_AUTH_TOKENS_PREVIOUS", "").split(",") if t.strip())
    api_base = str(raw["twilio_api_base_url"]).rstrip("/") or None
    if api_base is not None and not urlsplit(api_base).scheme.startswith("http"):
        raise ConfigError(f"TWILIO_API_BASE_URL: expected an http(s) URL, got {api_base!r}")
    sandbox_api = public_base_url + "/sandbox"
    if sandbox:
        _refuse_real_twilio(account_sid, auth_token, previous, api_base, sandbox_api)
        auth_token, api_base = SANDBOX_AUTH_TOKEN, sandbox_api
    else:
        _refuse_sandbox_credentials(account_sid, auth_token, previous)

    region = str(raw["default_region"]).upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigError(f"DEFAULT_REGION: {region!r} is not a region phonenumbers knows")

    log_level = str(raw["log_level"]).upper()
    if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"LOG_LEVEL: expected DEBUG, INFO, WARNING or ERROR, got {log_level!r}")
    log_format = str(raw["log_format"]).strip().lower()
    if log_format not in {"text", "json"}:
        raise ConfigError(f"LOG_FORMAT: expected text or json, got {log_format!r}")

    programs_file = _path(str(raw["programs_file"]))
    if not programs_file.is_file():
        raise ConfigError(f"PROGRAMS_FILE: no such file {programs_file}")

    web_host = str(raw["web_host"]).strip()
    if not WEB_HOST_RE.match(web_host):
        raise ConfigError(f"WEB_HOST: expected an IP address or host name such as 0.0.0.0, got {web_host!r}")
    port = _port("port", raw["port"], minimum=1)

    broker = str(raw["celery_broker_url"]) or f"filesystem://{var_dir / 'broker'}"
    checkpoint_dir = (_path(str(raw["ledger_checkpoint_dir"])) if raw["ledger_checkpoint_dir"]
                      else var_dir / "checkpoints")
    if checkpoint_dir.exists() and not checkpoint_dir.is_dir():
        raise ConfigError(f"LEDGER_CHECKPOINT_DIR: {checkpoint_dir} exists and is not a directory")
    return Settings(
        database_url=database_url,
        celery_broker_url=broker,
        redis_url=str(raw["redis_url"]) or None,
        twilio_account_sid=account_sid,
        twilio_auth_token=auth_token,
        twilio_previous_auth_tokens=previous,
        twilio_api_base_url=api_base,
        public_base_url=public_base_url,
        programs_file=programs_file,
        suppression_key=_suppression_key(str(raw["suppression_key"]), var_dir),
        sandbox=sandbox,
        default_region=region,
        log_level=log_level,
        var_dir=var_dir,
        pending_ttl_hours=_as_int("pending_ttl_hours", raw["pending_ttl_hours"], minimum=1),
        trusted_proxies=_as_int("trusted_proxies", raw["trusted_proxies"]),
        max_content_length=_as_int("max_content_length", raw["max_content_length"], minimum=1024),
        **{key: _as_rate(key, raw[key]) for key in (
            "confirmation_limit_per_number", "confirmation_limit_per_client", "confirmation_limit_per_program",
            "confirmation_limit_per_key")},
        confirmation_client_ipv6_prefix=_as_prefix("confirmation_client_ipv6_prefix",
                                                   raw["confirmation_client_ipv6_prefix"]),
        web_host=web_host,
        port=port,
        ledger_signing_key=_ledger_signing_key(str(raw["ledger_signing_key"]), var_dir),
        ledger_checkpoint_dir=checkpoint_dir,
        ledger_checkpoint_seconds=_as_int("ledger_checkpoint_seconds", raw["ledger_checkpoint_seconds"], minimum=1),
        inbound_journal_replay_seconds=_as_int("inbound_journal_replay_seconds", raw["inbound_journal_replay_seconds"]),
        inbound_reconcile_seconds=_as_int("inbound_reconcile_seconds", raw["inbound_reconcile_seconds"]),
        outbox_sweep_seconds=_as_int("outbox_sweep_seconds", raw["outbox_sweep_seconds"], minimum=1),
        outbox_lost_task_seconds=_as_int("outbox_lost_task_seconds", raw["outbox_lost_task_seconds"], minimum=1),
        # A worker calls the provider only in the first half of its lease, and the call gives up after
        # the provider client's 10 s: at 20 s it has ended before the sweeper may ask about it.
        outbox_claim_lease_seconds=_as_int("outbox_claim_lease_seconds", raw["outbox_claim_lease_seconds"],
                                           minimum=20),
        worker_metrics_port=_port("worker_metrics_port", raw["worker_metrics_port"], minimum=0),
        worker_heartbeat_seconds=_as_int("worker_heartbeat_seconds", raw["worker_heartbeat_seconds"], minimum=1),
        worker_stale_seconds=_as_int("worker_stale_seconds", raw["worker_stale_seconds"], minimum=1),
        outbox_backlog_max_seconds=_as_int("outbox_backlog_max_seconds", raw["outbox_backlog_max_seconds"],
                                           minimum=1),
        log_format=log_format,
        lookup_line_type=_as_bool("lookup_line_type", raw["lookup_line_type"]),
        lookup_reassigned_number=_as_bool("lookup_reassigned_number", raw["lookup_reassigned_number"]),
        lookup_ttl_days=_as_int("lookup_ttl_days", raw["lookup_ttl_days"], minimum=1),
        deactivations_check_seconds=_as_int("deactivations_check_seconds", raw["deactivations_check_seconds"]),
        deactivations_days_back=_as_int("deactivations_days_back", raw["deactivations_days_back"], minimum=1),
        console_login_limit_per_client=_as_rate("console_login_limit_per_client",
                                                raw["console_login_limit_per_client"]),
        console_max_failed_logins=_as_int("console_max_failed_logins", raw["console_max_failed_logins"], minimum=1),
        console_lockout_seconds=_as_int("console_lockout_seconds", raw["console_lockout_seconds"], minimum=1),
        console_session_idle_seconds=_as_int("console_session_idle_seconds", raw["console_session_idle_seconds"],
                                             minimum=60),
        console_session_lifetime_seconds=_as_int("console_session_lifetime_seconds",
                                                 raw["console_session_lifetime_seconds"], minimum=60),
    )

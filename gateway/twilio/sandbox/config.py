"""The sandbox's own settings (config/sandbox.toml): step delays, test numbers, Messaging Services."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import CONFIG_DIR, ConfigError, _as_bool
from gateway.domain.numbers import is_e164
from gateway.twilio.statuses import FINAL, TwilioStatus


@dataclass(frozen=True)
class TestNumber:
    """A number that fails the way Twilio fails: at create, or later in delivery."""

    __test__ = False  # not a pytest test class, whatever its name says

    number: str
    description: str
    create_error: int | None = None
    http_status: int = 400
    times: int | None = None  # refuse only the first `times` creates (a transient error)
    final_status: str = TwilioStatus.DELIVERED
    error_code: int | None = None


@dataclass(frozen=True)
class LookupNumber:
    """How Lookup v2 answers for one number, and whether it is on the Deactivations list."""

    __test__ = False

    number: str
    description: str
    line_type: str | None = "mobile"
    carrier: str | None = "Sandbox Mobile"
    mobile_country_code: str | None = "310"
    mobile_network_code: str | None = "999"
    error_code: int | None = None  # line_type_intelligence.error_code (60600: unprovisioned or out of coverage)
    reassigned: str = "no"  # yes | no | no_data
    deactivated: bool = False  # on every day's Deactivations list
    http_status: int | None = None  # the look-up fails: 429, 500, 503…
    delay: float = 0.0  # seconds before answering (a slow Lookup, for timeouts)


# What Lookup says of a number the sandbox has no entry for: a mobile line on the sandbox's carrier.
DEFAULT_LOOKUP = LookupNumber(number="", description="any other number: a mobile line")


@dataclass(frozen=True)
class SandboxConfig:
    sent_delay: float = 1.0
    final_delay: float = 2.0
    poll_interval: float = 0.5
    sms_url: str = ""
    auto_replies: bool = True
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    service_number: str = "+15005550010"
    messaging_services: dict[str, tuple[str, ...]] = field(default_factory=dict)
    test_numbers: dict[str, TestNumber] = field(default_factory=dict)
    lookup_numbers: dict[str, LookupNumber] = field(default_factory=dict)
    # The HTTP status the Deactivations file answers with (tests set 503: the file is unreachable).
    deactivations_file_status: int = 200

    def lookup_of(self, number: str) -> LookupNumber:
        return self.lookup_numbers.get(number, DEFAULT_LOOKUP)

    def service_numbers(self, service_sid: str) -> tuple[str, ...]:
        return self.messaging_services.get(service_sid) or (self.service_number,)

    def service_of(self, number: str) -> str | None:
        """The configured Messaging Service `number` belongs to, if any."""
        for service_sid, numbers in self.messaging_services.items():
            if number in numbers:
                return service_sid
        return None


def _seconds(name: str, value: object) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"sandbox {name}: expected seconds, got {value!r}") from None
    if seconds < 0:
        raise ConfigError(f"sandbox {name}: must not be negative")
    return seconds


def _test_number(raw: dict) -> TestNumber:
    number = raw.get("number", "")
    if not is_e164(number):
        raise ConfigError(f"sandbox test_numbers: {number!r} is not an E.164 number")
    entry = TestNumber(
        number=number, description=str(raw.get("description", "")), create_error=raw.get("create_error"),
        http_status=int(raw.get("http_status", 400)), times=raw.get("times"),
        final_status=str(raw.get("final_status", TwilioStatus.DELIVERED.value)), error_code=raw.get("error_code"),
    )
    if entry.final_status not in FINAL:
        raise ConfigError(f"sandbox test number {number}: final_status must be one of {', '.join(FINAL)}")
    return entry


_LOOKUP_KEYS = {"number", "description", "line_type", "carrier", "mobile_country_code", "mobile_network_code",
                "error_code", "reassigned", "deactivated", "http_status", "delay"}


def _lookup_number(raw: dict) -> LookupNumber:
    number = raw.get("number", "")
    if not is_e164(number):
        raise ConfigError(f"sandbox lookup_numbers: {number!r} is not an E.164 number")
    unknown = set(raw) - _LOOKUP_KEYS
    if unknown:
        raise ConfigError(f"sandbox lookup number {number}: unknown keys {', '.join(sorted(unknown))}")
    entry = LookupNumber(**{key: raw[key] for key in raw if key != "delay"},
                         delay=_seconds("delay", raw.get("delay", 0)))
    if entry.reassigned not in ("yes", "no", "no_data"):
        raise ConfigError(f"sandbox lookup number {number}: reassigned must be yes, no or no_data")
    return entry


def load_sandbox_config(env: Mapping[str, str] | None = None, file: Path | None = None) -> SandboxConfig:
    """Read config/sandbox.toml, apply SANDBOX_* environment overrides, validate."""
    env = os.environ if env is None else env
    with open(file or CONFIG_DIR / "sandbox.toml", "rb") as handle:
        raw = tomllib.load(handle)
    for key in ("sent_delay", "final_delay", "poll_interval", "sms_url", "auto_replies"):
        if f"SANDBOX_{key.upper()}" in env:
            raw[key] = env[f"SANDBOX_{key.upper()}"]
    services = {}
    for service_sid, numbers in raw.get("messaging_services", {}).items():
        if not all(is_e164(n) for n in numbers):
            raise ConfigError(f"sandbox messaging_services.{service_sid}: expected a list of E.164 numbers")
        services[service_sid] = tuple(numbers)
    service_number = str(raw.get("service_number", "+15005550010"))
    if not is_e164(service_number):
        raise ConfigError("sandbox service_number: expected an E.164 number")
    return SandboxConfig(
        sent_delay=_seconds("sent_delay", raw.get("sent_delay", 1.0)),
        final_delay=_seconds("final_delay", raw.get("final_delay", 2.0)),
        poll_interval=max(0.05, _seconds("poll_interval", raw.get("poll_interval", 0.5))),
        sms_url=str(raw.get("sms_url", "")),
        auto_replies=_as_bool("sandbox_auto_replies", raw.get("auto_replies", True)),
        connect_timeout=_seconds("connect_timeout", raw.get("connect_timeout", 5.0)),
        read_timeout=_seconds("read_timeout", raw.get("read_timeout", 15.0)),
        service_number=service_number,
        messaging_services=services,
        test_numbers={entry.number: entry for entry in map(_test_number, raw.get("test_numbers", []))},
        lookup_numbers={entry.number: entry for entry in map(_lookup_number, raw.get("lookup_numbers", []))},
    )

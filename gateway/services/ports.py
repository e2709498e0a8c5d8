"""What the use cases need from the outside, as protocols: the services name these, never Celery,
Redis or Twilio. The classes that fill them live in queue/ and twilio/ and are wired in bootstrap;
tests can pass anything of the same shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

from gateway.domain.message_log import LoggedText
from gateway.domain.outbound import SentMessage

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.store.database import Database


class DispatchFailed(Exception):
    """The broker did not take a task (down, restarting, unreachable)."""


class Dispatcher(Protocol):
    """Hands work to the worker by task name; a task carries ids only, its row holds the rest.
    Raises DispatchFailed when the broker does not take it."""

    def send_messages(self, message_ids: list[str]) -> None:
        """One send task per outbox message id."""

    def send_messages_at(self, timed: list[tuple[str, datetime]]) -> None:
        """One send task per (outbox message id, aware time), each for the worker to run at that time."""

    def send(self, task_name: str, *args: str) -> None:
        """One task of any other kind."""

    def ping(self, timeout: float = 2.0) -> None:
        """Raise unless the broker accepts a connection."""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: float  # seconds until a slot frees up (0 when allowed)


class Limiter(Protocol):
    """Counts hits under `limits`-style rules ("3/day", "1/second"), shared by every process or not."""

    def hit(self, limit: str, *keys: str) -> Verdict:
        """Take one slot under `limit` for `keys` if one is free."""

    def test(self, limit: str, *keys: str) -> bool:
        """Would a hit be allowed now? (Takes nothing.)"""

    def clear(self, limit: str, *keys: str) -> None: ...

    def reset(self) -> None:
        """Forget every counter (tests)."""


class Provider(Protocol):
    """Sends SMS and reports what became of them, in our terms (raising ProviderError when refused)."""

    def send(self, *, to: str, sender: str, body: str, reference: str | None = None) -> SentMessage:
        """Hand one message over; `reference` (our message id) comes back on its status callbacks."""

    def fetch(self, sid: str) -> SentMessage:
        """The provider's current view of one message."""

    def messages_since(self, *, to: str, sender: str, since: datetime, limit: int = 100) -> list[SentMessage]:
        """Messages to `to` from `sender` created since `since`, newest first."""

    def inbound_messages(self, *, to: str | None, since: datetime) -> list[LoggedText]:
        """Inbound texts the provider logged to `to` (None: to any of ours) sent since `since`, newest first."""

    def lookup(self, e164: str, *, fields: tuple[str, ...], last_verified: date | None = None) -> dict:
        """The carrier look-up's answer for `fields` (line_type_intelligence, reassigned_number), as a
        dict in the provider's words; ProviderError when it could not be made."""

    def deactivated_numbers(self, day: date) -> list[str]:
        """The lines of the carriers' deactivation list for `day`; ProviderError when it cannot be read."""


@dataclass
class Gateway:
    """What every adapter shares in one process: settings, the store, the queue, the limiter, the provider."""

    settings: Settings
    db: Database
    dispatcher: Dispatcher
    limiter: Limiter
    make_provider: Callable[[], Provider]
    extras: dict = field(default_factory=dict)

    @cached_property
    def provider(self) -> Provider:
        # Built on first use: the web process never sends.
        return self.make_provider()

    @cached_property
    def keywords(self):
        from gateway.domain.keywords import default_engine

        return default_engine()

    @cached_property
    def quiet_hours(self):
        from gateway.domain.quiet_hours import default_rules

        return default_rules()

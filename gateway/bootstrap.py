"""The one composition root: the web app, the worker and the CLI each build their Gateway here.

The services name only ports (gateway/services/ports.py); this is where Celery, Redis and Twilio
are chosen for them. The adapters are imported in `build`, not above: the services import `Gateway`
for its type, and that must not load Celery or Twilio into a process (or a test) that never uses them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from gateway.config import Settings, load_settings
from gateway.services.ports import Dispatcher, Limiter, Provider
from gateway.store.database import Database


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


def build(settings: Settings) -> Gateway:
    """The Gateway for these settings: the store, Celery's dispatcher, the Redis (or in-process)
    limiter and the Twilio provider."""
    from gateway.queue.app import make_celery
    from gateway.queue.dispatcher import Dispatcher as CeleryDispatcher
    from gateway.queue.ratelimit import Limiter as LimitsLimiter

    def make_provider() -> Provider:
        from gateway.twilio.client import Provider as TwilioProvider

        return TwilioProvider.from_settings(settings)

    return Gateway(settings=settings, db=Database(settings.database_url),
                   dispatcher=CeleryDispatcher(make_celery(settings)),
                   limiter=LimitsLimiter(settings.redis_url), make_provider=make_provider)


def from_environment() -> Gateway:
    """The Gateway for the settings of this process's config files and environment."""
    return build(load_settings())

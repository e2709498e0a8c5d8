"""What every adapter shares in one process: settings, the store, the queue, the provider."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from gateway.config import Settings
from gateway.store.database import Database
from gateway.queue.app import Dispatcher


@dataclass
class Gateway:
    settings: Settings
    db: Database
    dispatcher: Dispatcher
    extras: dict = field(default_factory=dict)

    @cached_property
    def keywords(self):
        from gateway.domain.keywords import default_engine

        return default_engine()

    @cached_property
    def limiter(self):
        from gateway.queue.ratelimit import Limiter

        return Limiter(self.settings.redis_url)

    @cached_property
    def quiet_hours(self):
        from gateway.domain.quiet_hours import default_rules

        return default_rules()

    @cached_property
    def provider(self):
        from gateway.twilio.client import Provider

        return Provider.from_settings(self.settings)


def current() -> Gateway:
    """The Gateway of the running Flask app (web requests and Celery tasks both have one)."""
    from flask import current_app

    return current_app.extensions["gateway"]

"""The one composition root: the web app, the worker and the CLI each build their Gateway here.

The services name only ports (gateway/services/ports.py, where the Gateway that carries them is
defined); this is where Celery, Redis and Twilio are chosen for them. The adapters are imported in
`build`, so that a process that never sends or enqueues (a test, a CLI command) does not load them.
"""

from __future__ import annotations

from gateway.config import Settings, load_settings
from gateway.services.ports import Gateway, Provider
from gateway.store.database import Database


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

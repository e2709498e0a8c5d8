"""The one composition root: the web app, the worker and the CLI each build their Gateway here.

The services name only ports (gateway/services/ports.py, where the Gateway that carries them is
defined); this is where Celery, Redis and Twilio are chosen for them. The adapters are imported in
`build`, so that a process that never sends or enqueues (a test, a CLI command) does not load them.
"""

from __future__ import annotations

import gc

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


def freeze_loaded_heap() -> None:
    """Called by a long-lived process once it has loaded what it serves (a gunicorn worker after
    building the app, the Celery worker when ready). What exists now (modules, SQLAlchemy's
    metadata, phonenumbers' tables, the keyword engine) lives as long as the process: frozen, the
    collector's full collections stop walking it. A web worker under the inbound benchmark held
    ~150,000 such objects; unfrozen, a full collection came every ~10 s of its CPU and took 340-420
    ms (3-4% of its time, and a pause of that length for the request it fell in); frozen, 20-45 ms
    (bench/README.md). A frozen object is never collected, even if it later becomes cyclic garbage:
    hence once, on what the process loaded, and not again."""
    gc.freeze()

"""The Flask app factory: one web app per set of settings, its Gateway built by bootstrap."""

from __future__ import annotations

import hashlib
import hmac

from flask import Flask

from gateway.config import Settings, load_settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the web app over the Gateway bootstrap builds from one set of settings."""
    from gateway import bootstrap, logs, web

    settings = settings or load_settings()
    logs.configure(settings.log_level, settings.default_region, settings.log_format)
    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_content_length,
        # Signs CSRF tokens on the hosted form; derived, so the suppression key itself is never reused.
        SECRET_KEY=hmac.new(settings.suppression_key, b"flask-secret-key", hashlib.sha256).digest(),
        JSON_SORT_KEYS=False,
    )
    if settings.trusted_proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)
    app.extensions["gateway"] = bootstrap.build(settings)
    web.register(app, sandbox=settings.sandbox)
    if settings.inbound_journal_replay_seconds:
        from gateway.services.inbound_journal import Replayer

        app.extensions["inbound_journal_replayer"] = Replayer(
            app.extensions["gateway"], settings.inbound_journal_replay_seconds, context=app.app_context).start()
    return app

"""The web adapter: blueprints over the core. Each route declares its auth (see auth.py)."""

from __future__ import annotations

from flask import Flask, abort, request
from flask.sessions import SecureCookieSessionInterface

from gateway import metrics
from gateway.web import errors, headers
from gateway.web.auth import declared_auth


def register(app: Flask, *, sandbox: bool) -> None:
    from gateway.web import (
        api_consents,
        api_imports,
        api_messages,
        api_privacy,
        api_subscriptions,
        console,
        docs,
        forms,
        openapi,
        ops,
        webhooks,
    )

    errors.register(app)
    headers.register(app)
    app.session_interface = SessionOnlyWithCookie()
    for module in (ops, webhooks, api_consents, api_messages, api_subscriptions, api_privacy, api_imports, forms,
                   openapi, docs, console):
        app.register_blueprint(module.bp)
    if sandbox:
        # Imported only when mounted: production never loads the sandbox's code.
        from gateway.twilio import sandbox as sandbox_module

        app.register_blueprint(sandbox_module.bp, url_prefix="/sandbox")
        app.register_blueprint(docs.landing_bp)  # `/`: the sandbox build's start page (docs.py says why)

    @app.after_request
    def _count_response(response):
        # By route, not path: a path holds ids and numbers. Unmatched paths share one label.
        metrics.HTTP_RESPONSES.labels(endpoint=request.endpoint or "unmatched", status=response.status_code).inc()
        return response

    @app.before_request
    def _refuse_undeclared():
        # Fail closed: a route that forgot to declare its auth answers nothing.
        view = app.view_functions.get(request.endpoint or "")
        if view is not None and declared_auth(view) is None and request.endpoint != "static":
            abort(403)


class SessionOnlyWithCookie(SecureCookieSessionInterface):
    """Flask's signed-cookie session, built only for a request that carries the cookie.

    Only the hosted sign-up form has a session (its CSRF token). Webhooks and the JSON API never send
    the cookie, and building the signing serializer for each of their requests was measurable. The
    console's pages have sessions of their own, kept in the store (gateway/web/console.py).
    """

    def open_session(self, app, request):
        from gateway.web import console

        if console.is_console_path(request.path):
            return console.ConsoleSessionInterface().open_session(app, request)
        if self.get_cookie_name(app) not in request.cookies:
            return self.session_class()
        return super().open_session(app, request)

    def save_session(self, app, session, response):
        from gateway.web import console

        if isinstance(session, console.ConsoleSession):
            console.ConsoleSessionInterface().save_session(app, session, response)
            return
        if session or session.modified or session.accessed:
            super().save_session(app, session, response)

"""The web adapter: blueprints over the core. Each route declares its auth (see auth.py)."""

from __future__ import annotations

from flask import Flask, abort, request

from gateway.web import errors
from gateway.web.auth import declared_auth


def register(app: Flask, *, sandbox: bool) -> None:
    from gateway.web import ops

    errors.register(app)
    app.register_blueprint(ops.bp)
    # Blueprints still being written are skipped until their module exists.
    for module_name in ("gateway.web.webhooks", "gateway.web.api_consents", "gateway.web.api_messages",
                        "gateway.web.api_subscriptions", "gateway.web.api_privacy", "gateway.web.forms",
                        "gateway.web.openapi"):
        _register_optional(app, module_name)
    if sandbox:
        _register_optional(app, "gateway.sandbox", url_prefix="/sandbox")

    @app.before_request
    def _refuse_undeclared():
        # Fail closed: a route that forgot to declare its auth answers nothing.
        view = app.view_functions.get(request.endpoint or "")
        if view is not None and declared_auth(view) is None and request.endpoint != "static":
            abort(403)


def _register_optional(app: Flask, module_name: str, **options) -> None:
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            return
        raise
    app.register_blueprint(module.bp, **options)

"""Where a view finds the Gateway its app was built with (the app factory stores it on the app)."""

from __future__ import annotations

from flask import current_app

from gateway.services.ports import Gateway


def current() -> Gateway:
    """The Gateway of the app handling this request."""
    return current_app.extensions["gateway"]

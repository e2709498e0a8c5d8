"""The Twilio sandbox: a local Twilio REST API, its status callbacks and opt-out rules, and a phone
page to text the gateway from. Mounted at /sandbox only when SANDBOX is on, answering loopback
clients only (see docs/sandbox.md)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from flask import Blueprint, abort, current_app, request
from sqlalchemy.orm import sessionmaker

from gateway.twilio.sandbox.callbacks import Courier
from gateway.twilio.sandbox.config import SandboxConfig, load_sandbox_config

bp = Blueprint("sandbox", __name__, template_folder="templates")


@dataclass
class Sandbox:
    """The sandbox of one app: its settings (replaceable, e.g. by tests), its courier thread, and
    sessions for answering reads (see store.py)."""

    config: SandboxConfig
    courier: Courier
    reads: sessionmaker


def current_sandbox() -> Sandbox:
    return current_app.extensions["sandbox"]


@bp.record_once
def _set_up(state) -> None:
    app = state.app
    gateway = app.extensions["gateway"]
    reads = gateway.db.reads_beside_writers()
    # The courier asks for the settings each time: whoever replaces them (tests) is heard at once.
    courier = Courier(gateway.db, gateway.settings, lambda: app.extensions["sandbox"].config, reads=reads)
    app.extensions["sandbox"] = Sandbox(config=load_sandbox_config(), courier=courier, reads=reads)
    # The API checks Twilio's Basic auth and the phone page checks the Origin; neither carries a
    # form token, so an app-wide CSRF guard (Flask-WTF) must leave them alone.
    csrf = app.extensions.get("csrf")
    if csrf is not None:
        csrf.exempt(bp)


def socket_address(environ: Mapping) -> str:
    """The address of the peer that opened the connection, as the WSGI server saw it.

    ProxyFix (TRUSTED_PROXIES) replaces REMOTE_ADDR with what X-Forwarded-For claims and keeps the
    original aside; that original is the socket's, so it is the one that counts here.
    """
    original = environ.get("werkzeug.proxy_fix.orig") or {}
    return str(original.get("REMOTE_ADDR") or environ.get("REMOTE_ADDR") or "")


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ::ffff:127.x; False for anything else, a Unix socket's "" included."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


@bp.before_request
def _loopback_only() -> None:
    """The sandbox answers only a client on this machine, judged by the socket, never by what a
    request says about itself (Host, Origin, X-Forwarded-For). A request that came through a proxy
    (it carries forwarding headers) is refused too: the socket is then the proxy's, and the client
    could be anyone. Everyone else gets 404, as if the sandbox were not mounted."""
    forwarded = "X-Forwarded-For" in request.headers or "Forwarded" in request.headers
    if forwarded or not is_loopback(socket_address(request.environ)):
        abort(404)


@bp.before_app_request
def _start_courier() -> None:
    # Started by the first request a process serves: web processes only (never the Celery worker
    # or the CLI, which build the same app), and after gunicorn has forked. Cheap once running.
    current_sandbox().courier.start()


from gateway.twilio.sandbox import api, lookups, phone  # noqa: E402,F401  (registers the routes on bp)

"""The Twilio sandbox: a local Twilio REST API, its status callbacks and opt-out rules, and a phone
page to text the gateway from. Mounted at /sandbox only when SANDBOX is on (see docs/sandbox.md)."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Blueprint, current_app
from sqlalchemy.orm import sessionmaker

from gateway.sandbox.callbacks import Courier
from gateway.sandbox.config import SandboxConfig, load_sandbox_config
from gateway.sandbox.store import read_sessions

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
    reads = read_sessions(gateway.db)
    # The courier asks for the settings each time: whoever replaces them (tests) is heard at once.
    courier = Courier(gateway.db, gateway.settings, lambda: app.extensions["sandbox"].config, reads=reads)
    app.extensions["sandbox"] = Sandbox(config=load_sandbox_config(), courier=courier, reads=reads)
    # The API checks Twilio's Basic auth and the phone page checks the Origin; neither carries a
    # form token, so an app-wide CSRF guard (Flask-WTF) must leave them alone.
    csrf = app.extensions.get("csrf")
    if csrf is not None:
        csrf.exempt(bp)


@bp.before_app_request
def _start_courier() -> None:
    # Started by the first request a process serves: web processes only (never the Celery worker
    # or the CLI, which build the same app), and after gunicorn has forked. Cheap once running.
    current_sandbox().courier.start()


from gateway.sandbox import api, phone  # noqa: E402,F401  (registers the routes on bp)

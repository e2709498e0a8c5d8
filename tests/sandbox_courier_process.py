"""A sandbox courier in a process of its own, as another gunicorn worker would run one (used by
tests/integration/twilio/test_sandbox.py). Reads the same environment as the app; runs for argv[1] seconds."""

from __future__ import annotations

import sys
import time
from dataclasses import replace

from gateway.config import load_settings
from gateway.store.database import Database
from gateway.twilio.sandbox.callbacks import Courier
from gateway.twilio.sandbox.config import load_sandbox_config


def main() -> None:
    settings = load_settings()
    config = replace(load_sandbox_config(), poll_interval=0.01)
    courier = Courier(Database(settings.database_url), settings, lambda: config)
    deadline = time.monotonic() + float(sys.argv[1])
    print("ready", flush=True)
    while time.monotonic() < deadline:
        if not courier.run_once():
            time.sleep(0.01)


if __name__ == "__main__":
    main()

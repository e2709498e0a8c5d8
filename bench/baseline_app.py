"""The floor for the inbound-webhook benchmark: a bare Flask endpoint that only validates Twilio's
signature and does one INSERT and one UPDATE in one PostgreSQL transaction.

Served by gunicorn with the same settings as the gateway (bench/inbound_webhook.py starts it):
    BENCH_DATABASE_URL=postgresql+psycopg://… PUBLIC_BASE_URL=… TWILIO_AUTH_TOKEN=… \
    gunicorn -c config/gunicorn.conf.py 'bench.baseline_app:create_app()'
"""

from __future__ import annotations

import os

from flask import Flask, Response, request
from sqlalchemy import create_engine, text
from twilio.request_validator import RequestValidator

SCHEMA = """
CREATE TABLE IF NOT EXISTS baseline_numbers (e164 TEXT PRIMARY KEY, texts INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS baseline_inbound (
    id BIGSERIAL PRIMARY KEY, message_sid TEXT NOT NULL UNIQUE, from_number TEXT NOT NULL, body TEXT,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
"""
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response />'


def create_app() -> Flask:
    app = Flask(__name__)
    # The gateway's pool settings (gateway/store/database.py: no ping on checkout), so only the work differs.
    engine = create_engine(os.environ["BENCH_DATABASE_URL"], pool_size=10, max_overflow=10)
    validator = RequestValidator(os.environ["TWILIO_AUTH_TOKEN"])
    url = os.environ["PUBLIC_BASE_URL"].rstrip("/") + "/webhooks/twilio/sms"

    @app.get("/healthz")
    def healthz():
        return "ok"

    @app.post("/webhooks/twilio/sms")
    def inbound():
        if not validator.validate(url, request.form, request.headers.get("X-Twilio-Signature", "")):
            return "invalid signature", 403
        with engine.begin() as connection:
            connection.execute(
                text("INSERT INTO baseline_inbound (message_sid, from_number, body) VALUES (:sid, :sender, :body)"),
                {"sid": request.form["MessageSid"], "sender": request.form["From"], "body": request.form["Body"]},
            )
            connection.execute(text("UPDATE baseline_numbers SET texts = texts + 1 WHERE e164 = :sender"),
                               {"sender": request.form["From"]})
        return Response(EMPTY_TWIML, mimetype="application/xml")

    return app

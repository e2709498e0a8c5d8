"""Fixtures and helpers shared by the sandbox, provider and sending tests (import them by name)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

import pytest
import requests
from sqlalchemy import select, text
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from gateway.domain.consent import Input, Source
from gateway.domain.gate import Kind
from gateway.domain.numbers import parse
from gateway.services import consents, policy
from gateway.store import consents as store_consents
from gateway.store import outbox
from gateway.store.models import OutboundMessage, utcnow
from gateway.store.programs import by_slug
from gateway.twilio.client import RedirectingHttpClient
from gateway.twilio.sandbox.models import SandboxMessage
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, wait_for


@contextmanager
def sandbox_config(app, **changes) -> Iterator[None]:
    """Run with some sandbox settings changed (delays, test numbers…), then put them back."""
    sandbox = app.extensions["sandbox"]
    before = sandbox.config
    sandbox.config = replace(before, **changes)
    try:
        yield
    finally:
        sandbox.config = before


@pytest.fixture
def instant_sandbox(app):
    """Every status step due at once: queued, sent, delivered follow each other immediately."""
    with sandbox_config(app, sent_delay=0.0, final_delay=0.0, poll_interval=0.05):
        yield app.extensions["sandbox"]


@pytest.fixture
def quick_sandbox(app):
    """Short but real delays: the worker stores the SID before the callbacks that name it arrive,
    as it does against Twilio, whose callbacks take seconds."""
    with sandbox_config(app, sent_delay=0.3, final_delay=0.6, poll_interval=0.05):
        yield app.extensions["sandbox"]


@pytest.fixture
def twilio_client(live_server) -> Client:
    """The real twilio client, pointed at the sandbox over HTTP."""
    return Client(ACCOUNT_SID, AUTH_TOKEN, http_client=RedirectingHttpClient(live_server + "/sandbox", 5.0),
                  environment={"_": "_"})


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    params: dict[str, str]
    signature_valid: bool


class Receiver:
    """A stand-in for a Twilio webhook endpoint: records each POST and checks its signature."""

    def __init__(self):
        self.requests: list[Received] = []
        self.answer: tuple[int, str, str] = (200, "application/xml", "<Response/>")
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                params = dict(parse_qsl(self.rfile.read(length).decode(), keep_blank_values=True))
                url = f"http://127.0.0.1:{receiver.port}{self.path}"
                valid = RequestValidator(AUTH_TOKEN).validate(url, params, self.headers.get("X-Twilio-Signature", ""))
                with receiver._lock:
                    receiver.requests.append(Received(self.path, dict(self.headers), params, valid))
                status, content_type, body = receiver.answer
                payload = body.encode()
                self.send_response(status)
                if content_type:
                    self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str = "/status") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def for_message(self, sid: str) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.params.get("MessageSid") == sid]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


def sandbox_message(db, sid: str) -> SandboxMessage | None:
    with db.sessions() as session:
        return session.get(SandboxMessage, sid)


def wait_for_sandbox_status(db, sid: str, status: str, timeout: float = 20.0) -> SandboxMessage:
    def reached():
        message = sandbox_message(db, sid)
        return message if message is not None and message.status == status else None

    reached.__name__ = f"sandbox message reaches {status}"
    return wait_for(reached, timeout)


def conversation_messages(db, handset: str) -> list[SandboxMessage]:
    with db.sessions() as session:
        return list(session.scalars(select(SandboxMessage).where(SandboxMessage.handset == handset)
                                    .order_by(SandboxMessage.date_created)))


def phone_text(base_url: str, handset: str, to: str, body: str) -> requests.Response:
    """Text from the phone page, as its JavaScript does (JSON, same origin)."""
    return requests.post(f"{base_url}/sandbox/phone/messages", json={"from": handset, "to": to, "body": body},
                         headers={"Origin": base_url}, timeout=10)


def opt_in(db, e164: str, *slugs: str) -> None:
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(e164))
        for slug in slugs:
            consents.apply(session, row, by_slug(session, slug), Input.IMPORT_OPT_IN,
                          consents.Evidence(Source.IMPORT, actor="test", reference="import-1",
                                           details={"collected": "paper form"}))


def confirmed(db, e164: str, *slugs: str) -> None:
    """`e164` asked (over the API) and confirmed with YES, for each program: a double opt-in done."""
    now = utcnow()
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(e164))
        for slug in slugs:
            program = by_slug(session, slug)
            consents.apply(session, row, program, Input.API_REQUEST, consents.Evidence(Source.API), now=now,
                           expires_at=now + timedelta(hours=48))
            consents.apply(session, row, program, Input.CONFIRM_YES, consents.Evidence(Source.SMS), now=now)


def other_people(db, count: int, *slugs: str, texts: int = 0) -> None:
    """A store with `count` other people in it (PostgreSQL): each opted in to `slugs` (every program
    without any), with `texts` delivered messages of each of those programs. Written in bulk, without
    ledger events: for tests of what the store's size does to query plans, not of the people."""
    with db.statements() as connection:
        connection.execute(text("""
            INSERT INTO numbers (e164, kind, reachability, ledger_seq, ledger_head, created_at)
            SELECT '+1415600' || lpad(i::text, 4, '0'), 'mobile', 'ok', 0, repeat('0', 64), now()
            FROM generate_series(1, :count) i"""), {"count": count})
        chosen = "programs.slug = ANY(:slugs)" if slugs else "true"
        connection.execute(text(f"""
            INSERT INTO consents (number_id, program_id, status, restorable, updated_at)
            SELECT numbers.id, programs.id, 'opted_in', false, now()
            FROM numbers CROSS JOIN programs WHERE numbers.e164 LIKE '+1415600%' AND {chosen}"""),
                           {"slugs": list(slugs)})
        connection.execute(text(f"""
            INSERT INTO messages (id, number_id, program_id, kind, sender, body, segments, encoding, status,
                                  attempts, created_at, updated_at)
            SELECT md5(numbers.id || '-' || programs.id || '-' || n), numbers.id, programs.id, 'marketing',
                   programs.sender, 'Hello', 1, 'GSM-7', 'delivered', 1, now(), now()
            FROM numbers CROSS JOIN programs CROSS JOIN generate_series(1, :texts) n
            WHERE numbers.e164 LIKE '+1415600%' AND {chosen}"""), {"texts": texts, "slugs": list(slugs)})


def queue(gateway, e164: str, slug: str, body: str) -> str:
    """Accept a message through the gate and hand it to the worker after the commit."""
    with gateway.db.transaction() as session:
        number = store_consents.find_number(session, e164)
        program = by_slug(session, slug)
        kind = Kind(program.category)
        decision = policy.gate_of(gateway).may_send(session, number, program, kind, utcnow())
        assert decision.allowed, decision
        message_id = outbox.accept(session, number=number, program=program, kind=kind, body=body,
                                   decision=decision).id
    gateway.dispatcher.send_messages([message_id])
    return message_id


def message_row(db, message_id: str) -> OutboundMessage:
    with db.sessions() as session:
        message = session.get(OutboundMessage, message_id)
        message.events  # loaded while the session is open
        return message


def wait_for_status(db, message_id: str, *statuses: str, timeout: float = 30.0) -> OutboundMessage:
    def reached():
        message = message_row(db, message_id)
        return message if message.status in statuses else None

    reached.__name__ = f"message reaches {'/'.join(statuses)}"
    return wait_for(reached, timeout)

"""The sandbox's courier: carries out the steps `messages` planned (a status change and its status
callback, or an inbound text posted to our webhook), each exactly once, from whichever web process
claims it first.

Steps live in `sandbox_events`, so they survive a restart and any gunicorn worker may run them. A
step is claimed with `UPDATE … WHERE state = 'pending'`: of several processes racing for it, only
the one whose UPDATE changed a row posts it. A step whose earlier sibling (same message) is not
done yet waits, so callbacks arrive in order: queued, sent, delivered.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import requests
from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import aliased, sessionmaker
from twilio.request_validator import RequestValidator

from gateway.config import SANDBOX_AUTH_TOKEN, Settings
from gateway.domain.numbers import mask
from gateway.store import dialect
from gateway.store.database import Database
from gateway.store.models import utcnow
from gateway.twilio.sandbox import messages
from gateway.twilio.sandbox.config import SandboxConfig
from gateway.twilio.sandbox.models import SandboxEvent, SandboxMessage

log = logging.getLogger(__name__)

# A claim this old belongs to a process that died mid-post: the step is posted again (at least once
# beats never). Longer than any post can take (connect + read timeouts).
STALE_CLAIM = timedelta(minutes=2)
BATCH = 50
XML_TYPES = {"text/xml", "application/xml", "text/html"}


@dataclass(frozen=True)
class Delivery:
    """A claimed step that still has to be posted."""

    event_id: int
    kind: str
    message_sid: str
    url: str
    params: dict[str, str]


@dataclass(frozen=True)
class Reply:
    body: str
    to: str | None = None
    sender: str | None = None


@dataclass(frozen=True)
class WebhookAnswer:
    """How our inbound webhook answered, read as Twilio reads it."""

    replies: list[Reply]
    error_code: int | None  # Twilio's code for a failed webhook (11200, 12100, 12300…)
    note: str


def read_answer(status: int, content_type: str, body: str) -> WebhookAnswer:
    """The <Message> replies in a TwiML answer, or the error Twilio would log for it."""
    if not 200 <= status < 300:
        return WebhookAnswer([], 11200, f"HTTP {status}: {body.strip()[:200]}")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if not media_type:
        return WebhookAnswer([], 12300, "the answer has no Content-Type")
    if media_type == "text/plain":  # Twilio sends a plain-text answer as the reply itself
        return WebhookAnswer([Reply(body.strip())] if body.strip() else [], None, "plain-text reply")
    if not body.strip():
        return WebhookAnswer([], 11200, "empty answer")
    if media_type not in XML_TYPES:
        return WebhookAnswer([], 12300, f"Content-Type {media_type} is not TwiML")
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as error:
        return WebhookAnswer([], 12100, f"TwiML does not parse: {error}")
    if root.tag != "Response":
        return WebhookAnswer([], 12102, f"TwiML root is <{root.tag}>, not <Response>")
    replies = []
    for verb in root:
        if verb.tag not in ("Message", "Sms"):
            continue
        body_element = verb.find("Body")
        text_ = (body_element.text if body_element is not None else verb.text) or ""
        if text_.strip():
            replies.append(Reply(text_.strip(), verb.get("to"), verb.get("from")))
    return WebhookAnswer(replies, None, f"TwiML with {len(replies)} message(s)")


# One courier runs per process, whichever app it belongs to (a process serves one app; tests build
# more than one, and a courier carrying another app's settings must not post with them).
_running: Courier | None = None
_running_lock = threading.Lock()
# Held while a step runs (its webhook included), by every courier of the process.
_gate = threading.RLock()
PROCESS = f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def paused() -> Iterator[None]:
    """No sandbox step runs in this process inside the block; a step in flight finishes first.
    (Tests empty the store this way without racing a webhook the courier is posting.)"""
    with _gate:
        yield


class Courier:
    """Runs due sandbox steps in a background thread of the web process."""

    def __init__(self, db: Database, settings: Settings, config: Callable[[], SandboxConfig], *,
                 reads: sessionmaker | None = None):
        self.db, self.settings, self.config = db, settings, config
        self.reads = reads or db.reads_beside_writers()
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._http = requests.Session()

    def _running_here(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def start(self) -> None:
        """Run this courier's thread, in place of any other courier of this process (gunicorn forks
        before the first request, so each worker process starts its own)."""
        global _running
        if _running is self and self._running_here():
            return
        with _running_lock:
            if _running is not None and _running is not self:
                _running._halt()
            _running = self
            if not self._running_here():
                # A fresh stop event: a halted thread still finishing its step keeps its own.
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._loop, args=(self._stop,), name="sandbox-courier",
                                                daemon=True)
                self._thread.start()

    def _halt(self) -> None:
        self._stop.set()
        self._wake.set()

    def stop(self) -> None:
        self._halt()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def wake(self) -> None:
        """New steps were committed in this process: look now rather than at the next poll."""
        self._wake.set()

    def paused(self):
        return paused()

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                done = self.run_once()
            except Exception:  # the store may be briefly unavailable; the steps wait in it
                log.exception("sandbox courier: a pass failed; trying again")
                done = 0
            if not done and not stop.is_set():
                self._wake.wait(self.config().poll_interval)
                self._wake.clear()

    def run_once(self, now: datetime | None = None) -> int:
        """Run every step due now that this process wins; return how many it ran."""
        with _gate, self.reads() as session:
            ids = self._due(session, now or utcnow())
        ran = 0
        for event_id in ids:
            with _gate:
                delivery = self._claim(event_id, now or utcnow())
                if delivery is False:
                    continue
                ran += 1
                if delivery is not None:
                    self._deliver(delivery)
        return ran

    @contextmanager
    def _transaction(self):
        with self.db.transaction() as session:
            # Give way quickly to anything taking table locks (TRUNCATE in tests, migrations)
            # instead of risking a deadlock with it; the step stays pending and is retried.
            dialect.give_way_to_locks(session, 300)
            yield session

    @staticmethod
    def _claimable(now: datetime):
        return or_(SandboxEvent.state == "pending",
                   and_(SandboxEvent.state == "claimed", SandboxEvent.claimed_at < now - STALE_CLAIM))

    def _due(self, session, now: datetime) -> list[int]:
        earlier = aliased(SandboxEvent)
        waiting_on_earlier = exists().where(
            earlier.message_sid == SandboxEvent.message_sid, earlier.id < SandboxEvent.id, earlier.state != "done")
        return list(session.scalars(
            select(SandboxEvent.id)
            .where(self._claimable(now), SandboxEvent.due_at <= now, ~waiting_on_earlier)
            .order_by(SandboxEvent.due_at, SandboxEvent.id).limit(BATCH)
        ))

    def _claim(self, event_id: int, now: datetime) -> Delivery | None | bool:
        """Claim one step: False if another process has it, None if nothing is left to post."""
        with self._transaction() as session:
            claimed = session.execute(
                update(SandboxEvent)
                .where(SandboxEvent.id == event_id, self._claimable(now))
                .values(state="claimed", claimed_at=now, claimed_by=PROCESS, attempts=SandboxEvent.attempts + 1)
                .execution_options(synchronize_session=False)
            ).rowcount
            if claimed != 1:
                return False
            event = session.get(SandboxEvent, event_id, populate_existing=True)
            message = session.get(SandboxMessage, event.message_sid)
            if message is None:
                self._finish(event, now, outcome="the message is gone")
                return None
            if event.kind == "status":
                messages.apply_status(message, event.message_status, event.error_code, now)
                if not message.status_callback:
                    self._finish(event, now, outcome="no StatusCallback")
                    return None
                url, params = message.status_callback, messages.status_callback_params(message, now)
            else:
                url = self.config().sms_url or self.settings.public_url("/webhooks/twilio/sms")
                senders = [s for s in (message.to_number, message.messaging_service_sid) if s]
                params = messages.inbound_params(message, messages.filtering_of(session, senders))
            event.url = url
            return Delivery(event.id, event.kind, message.sid, url, params)

    @staticmethod
    def _finish(event: SandboxEvent, now: datetime, *, outcome: str, response_status: int | None = None) -> None:
        event.state, event.done_at, event.outcome, event.response_status = "done", now, outcome, response_status

    def _post(self, delivery: Delivery) -> tuple[requests.Response | None, str]:
        config = self.config()
        # Always the sandbox's own token, never the gateway's: the gateway accepts it only while the
        # sandbox is on, so nothing the sandbox posts can pass for a real Twilio request.
        signature = RequestValidator(SANDBOX_AUTH_TOKEN).compute_signature(delivery.url, delivery.params)
        headers = {
            "X-Twilio-Signature": signature,
            "User-Agent": "TwilioProxy/1.1",
            "I-Twilio-Idempotency-Token": f"{delivery.message_sid}-{delivery.event_id}",
            "Accept": "*/*",
        }
        try:
            response = self._http.post(delivery.url, data=delivery.params, headers=headers, allow_redirects=False,
                                       timeout=(config.connect_timeout or 5.0, config.read_timeout or 15.0))
        except requests.Timeout:
            return None, "timed out"
        except requests.RequestException as error:
            return None, f"could not connect: {type(error).__name__}"
        return response, f"HTTP {response.status_code}"

    def _deliver(self, delivery: Delivery) -> None:
        response, outcome = self._post(delivery)
        now = utcnow()
        with self._transaction() as session:
            event = session.get(SandboxEvent, delivery.event_id)
            if event is None:  # the store was emptied meanwhile (tests do that)
                return
            self._finish(event, now, outcome=outcome,
                         response_status=response.status_code if response is not None else None)
            if delivery.kind == "inbound":
                self._record_answer(session, delivery.message_sid, response, outcome, now)
        if delivery.kind == "inbound":
            self.wake()  # the replies it created are due now
        log.info("sandbox: %s step for %s posted: %s", delivery.kind, delivery.message_sid, outcome)

    def _record_answer(self, session, message_sid: str, response: requests.Response | None, outcome: str,
                       now: datetime) -> None:
        inbound = session.get(SandboxMessage, message_sid)
        if inbound is None:
            return
        if response is None:
            answer = WebhookAnswer([], 11205, f"HTTP connection failure: {outcome}")
        else:
            answer = read_answer(response.status_code, response.headers.get("Content-Type", ""), response.text)
            inbound.webhook_status = response.status_code
        inbound.webhook_error_code, inbound.webhook_note = answer.error_code, answer.note
        for reply in answer.replies:
            request = messages.Outbound(
                to=reply.to or inbound.handset, sender=reply.sender or inbound.to_number,
                messaging_service_sid=inbound.messaging_service_sid or "", body=reply.body,
            )
            try:
                messages.create(session, self.config(), inbound.account_sid, request, now=now, origin="twiml")
            except messages.TwilioError as error:  # recorded as a refusal; the phone page shows it
                log.info("sandbox: TwiML reply to %s refused: %s", mask(inbound.handset), error)

"""The provider: the real twilio client over real HTTP to the sandbox, and every Twilio outcome
mapped onto ours (retryable, opted out, invalid number, not mobile, permanent)."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from zoneinfo import ZoneInfo

import pytest
from twilio.rest import Client

from gateway.domain.outbound import ErrorKind, ProviderError
from gateway.logs import MaskNumbers
from gateway.twilio.client import Provider, RedirectingHttpClient
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, _free_port
from tests.sandbox_support import (  # noqa: F401  (fixtures)
    instant_sandbox,
    phone_text,
    sandbox_message,
    wait_for_sandbox_status,
)

SID = re.compile(r"^SM[0-9a-f]{32}$")
SENDER = "+15005550006"
HANDSET = "+14155552671"
SERVICE = "MG" + "b" * 32


@pytest.fixture
def provider(settings, live_server, instant_sandbox) -> Provider:
    """The provider exactly as the worker builds it: at the sandbox, callbacks to our public URL."""
    return Provider.from_settings(settings)


def provider_at(base_url: str, token: str = AUTH_TOKEN, timeout: float = 5.0) -> Provider:
    return Provider(ACCOUNT_SID, token, api_base_url=base_url, status_callback="http://127.0.0.1:9/status",
                    timeout=timeout)


def refused(call) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        call()
    return caught.value


# --- Sending, fetching, listing -----------------------------------------------------------------

def test_send_from_a_number(provider, settings, db):
    sent = provider.send(to=HANDSET, sender=SENDER, body="Your order shipped")

    assert SID.match(sent.sid)
    assert (sent.status, sent.provider_status, sent.error_code) == ("sent", "queued", None)
    assert (sent.to, sent.sender, sent.body) == (HANDSET, SENDER, "Your order shipped")
    assert sent.date_created is not None and abs(sent.date_created - datetime.now(UTC)) < timedelta(seconds=10)
    stored = sandbox_message(db, sent.sid)
    assert stored.status_callback == settings.public_url("/webhooks/twilio/status")


def test_send_from_a_messaging_service(provider):
    sent = provider.send(to=HANDSET, sender=SERVICE, body="hi")
    assert (sent.status, sent.provider_status, sent.sender) == ("sent", "accepted", SERVICE)


def test_fetch_follows_the_message_to_delivered(provider, db):
    sid = provider.send(to=HANDSET, sender=SENDER, body="hi").sid
    wait_for_sandbox_status(db, sid, "delivered")
    fetched = provider.fetch(sid)
    assert (fetched.sid, fetched.status, fetched.provider_status) == (sid, "delivered", "delivered")


def test_fetch_of_an_unknown_sid_is_permanent_20404(provider):
    error = refused(lambda: provider.fetch("SM" + "0" * 32))
    assert (error.kind, error.code) == (ErrorKind.PERMANENT, 20404)


def test_messages_since_lists_what_went_to_a_number_from_a_sender(provider, db):
    before = datetime.now(UTC) - timedelta(seconds=5)
    mine = [provider.send(to=HANDSET, sender=SENDER, body=f"m{i}").sid for i in range(2)]
    other_sender = provider.send(to=HANDSET, sender="+18885550199", body="x").sid
    for sid in [*mine, other_sender]:
        wait_for_sandbox_status(db, sid, "delivered")

    listed = provider.messages_since(to=HANDSET, sender=SENDER, since=before)
    assert {m.sid for m in listed} == set(mine)
    assert all(m.status == "delivered" for m in listed)
    # A non-UTC `since` means the same moment.
    local = before.astimezone(ZoneInfo("America/Los_Angeles"))
    assert {m.sid for m in provider.messages_since(to=HANDSET, sender=SENDER, since=local)} == set(mine)
    assert provider.messages_since(to=HANDSET, sender=SENDER, since=datetime.now(UTC) + timedelta(minutes=5)) == []


def test_the_redirect_holds_with_a_region_and_edge_set(live_server, instant_sandbox):
    client = Client(ACCOUNT_SID, AUTH_TOKEN, region="au1", edge="sydney", environment={"_": "_"},
                    http_client=RedirectingHttpClient(live_server + "/sandbox", 5.0))
    assert SID.match(client.messages.create(to=HANDSET, from_=SENDER, body="hi").sid)


# --- Every outcome mapped --------------------------------------------------------------------------

@pytest.mark.parametrize(("to", "body", "kind", "code"), [
    ("+15005550001", "hi", ErrorKind.INVALID_NUMBER, 21211),
    ("12", "hi", ErrorKind.INVALID_NUMBER, 21211),
    ("+15005550009", "hi", ErrorKind.NOT_MOBILE, 21614),
    ("+15005550004", "hi", ErrorKind.OPTED_OUT, 21610),
    ("+15005550002", "hi", ErrorKind.PERMANENT, 21612),
    ("+15005550003", "hi", ErrorKind.PERMANENT, 21408),
    (HANDSET, "", ErrorKind.PERMANENT, 21602),
    (HANDSET, "a" * 1601, ErrorKind.PERMANENT, 21617),
    ("+14155550103", "hi", ErrorKind.RETRYABLE, 20429),
    ("+14155550104", "hi", ErrorKind.RETRYABLE, 20500),
], ids=["21211-test-number", "21211-malformed", "21614", "21610", "21612", "21408", "21602", "21617", "20429", "20500"])
def test_twilio_refusals_are_classified_keeping_code_and_message(provider, to, body, kind, code):
    error = refused(lambda: provider.send(to=to, sender=SENDER, body=body))
    assert (error.kind, error.code) == (kind, code)
    assert error.message.startswith("Unable to create record: ") and len(error.message) > 26


def test_a_stop_texted_at_twilio_comes_back_as_opted_out(provider, live_server):
    phone_text(live_server, HANDSET, SENDER, "STOP")
    error = refused(lambda: provider.send(to=HANDSET, sender=SENDER, body="deal"))
    assert (error.kind, error.code) == (ErrorKind.OPTED_OUT, 21610)
    assert "unsubscribed recipient" in error.message


def test_a_wrong_auth_token_is_permanent_20003(settings, live_server, instant_sandbox):
    wrong = provider_at(settings.twilio_api_base_url, token="wrong")
    error = refused(lambda: wrong.send(to=HANDSET, sender=SENDER, body="hi"))
    assert (error.kind, error.code) == (ErrorKind.PERMANENT, 20003)
    # Listing fails through a different path of the client (a page, not a record): same answer.
    error = refused(lambda: wrong.messages_since(to=HANDSET, sender=SENDER, since=datetime.now(UTC)))
    assert (error.kind, error.code) == (ErrorKind.PERMANENT, 20003)


def test_a_refused_connection_is_retryable():
    closed = provider_at(f"http://127.0.0.1:{_free_port()}")
    for call in (lambda: closed.send(to=HANDSET, sender=SENDER, body="hi"), lambda: closed.fetch("SM" + "1" * 32),
                 lambda: closed.messages_since(to=HANDSET, sender=SENDER, since=datetime.now(UTC))):
        error = refused(call)
        assert (error.kind, error.code) == (ErrorKind.RETRYABLE, None)
        assert "unreachable" in error.message


def test_a_provider_that_never_answers_times_out_retryable():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections, never answers
    try:
        silent = provider_at(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.3)
        error = refused(lambda: silent.send(to=HANDSET, sender=SENDER, body="hi"))
    finally:
        listener.close()
    assert (error.kind, error.code) == (ErrorKind.RETRYABLE, None)
    assert "Timeout" in error.message


class Impostor:
    """Something at the API address that is not Twilio: answers every request the same way."""

    def __init__(self, status: int, content_type: str, body: str):
        impostor = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                payload = impostor.body.encode()
                self.send_response(impostor.status)
                self.send_header("Content-Type", impostor.content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.status, self.content_type, self.body = status, content_type, body
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(("status", "content_type", "body", "kind", "code"), [
    (200, "text/html", "<html>a login page</html>", ErrorKind.RETRYABLE, None),
    (502, "text/html", "<html>Bad gateway</html>", ErrorKind.RETRYABLE, None),
    (503, "application/json", json.dumps({"code": 20503, "message": "Service unavailable", "status": 503}),
     ErrorKind.RETRYABLE, 20503),
    (503, "application/problem+json", json.dumps({"type": "https://www.twilio.com/docs/errors/20503",
                                                  "title": "Service unavailable", "status": 503, "code": 20503}),
     ErrorKind.RETRYABLE, 20503),
    (400, "application/problem+json", json.dumps({"type": "https://www.twilio.com/docs/errors/21211",
                                                  "title": "Invalid To", "status": 400, "code": 21211}),
     ErrorKind.INVALID_NUMBER, 21211),
    (404, "text/plain", "no such thing", ErrorKind.PERMANENT, None),
], ids=["2xx-not-json", "502-html", "503-json", "503-rfc9457", "400-rfc9457", "404-text"])
def test_answers_that_are_not_twilios_usual_are_classified(status, content_type, body, kind, code):
    impostor = Impostor(status, content_type, body)
    try:
        error = refused(lambda: provider_at(impostor.url).send(to=HANDSET, sender=SENDER, body="hi"))
    finally:
        impostor.close()
    assert (error.kind, error.code) == (kind, code)


def test_request_urls_the_client_logs_show_no_full_number():
    # The twilio client logs each request URL at INFO, with the numbers URL-encoded in its query.
    record = logging.LogRecord("twilio.http_client", logging.INFO, __file__, 0, "GET Request: %s", (
        "http://127.0.0.1/sandbox/2010-04-01/Accounts/AC1/Messages.json?To=%2B14155552671&From=%2B15005550006",), None)
    MaskNumbers().filter(record)
    assert record.getMessage().endswith("?To=%2B1415***2671&From=%2B1500***0006")


def test_proxy_settings_from_the_environment_still_apply(monkeypatch):
    # Read once per host (not on every call), but read: a proxy set for the process is used.
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "sandbox.example")
    session = Provider("AC" + "0" * 32, "token", api_base_url=None, status_callback="https://x.example/s").client \
        .http_client.session
    url = "https://api.twilio.com/2010-04-01/Accounts/AC/Messages.json"
    assert session.merge_environment_settings(url, {}, None, None, None)["proxies"]["https"] == "http://proxy.example:3128"
    assert session.merge_environment_settings(url, {}, None, None, None)["proxies"]["https"] == "http://proxy.example:3128"
    merged = session.merge_environment_settings("https://sandbox.example/x", {}, None, None, None)
    assert "https" not in merged["proxies"]

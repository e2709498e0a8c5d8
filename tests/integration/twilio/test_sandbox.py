"""The sandbox answers as Twilio does: checked over real HTTP, field by field, against Twilio's
published behaviour (CreateMessage, the Message resource, error codes, status callbacks, STOP)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import pytest
import requests
from sqlalchemy import func, select, update
from twilio.base.exceptions import TwilioRestException

from gateway.config import ROOT
from gateway.store.database import Database
from gateway.store.models import utcnow
from gateway.twilio.sandbox import is_loopback, messages, socket_address
from gateway.twilio.sandbox.callbacks import Courier, read_answer
from gateway.twilio.sandbox.config import load_sandbox_config
from gateway.twilio.sandbox.models import SandboxEvent, SandboxMessage, SandboxOptOut, SandboxRefusal
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, wait_for
from tests.sandbox_support import (  # noqa: F401  (fixtures)
    conversation_messages,
    instant_sandbox,
    phone_text,
    receiver,
    sandbox_config,
    sandbox_message,
    twilio_client,
    wait_for_sandbox_status,
)

SID = re.compile(r"^SM[0-9a-f]{32}$")
RFC2822 = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                     r"\d{4} \d{2}:\d{2}:\d{2} \+0000$")
SENDER = "+15005550006"
OTHER_SENDER = "+18885550199"
HANDSET = "+14155552671"
SERVICE = "MG" + "a" * 32


@pytest.fixture
def api(live_server, instant_sandbox):
    """POST/GET to the sandbox's Messages resource with Basic auth, like the client does."""

    class Api:
        base = f"{live_server}/sandbox/2010-04-01/Accounts/{ACCOUNT_SID}"

        def create(self, auth=(ACCOUNT_SID, AUTH_TOKEN), **form):
            return requests.post(f"{self.base}/Messages.json", data=form, auth=auth, timeout=10)

        def get(self, path, auth=(ACCOUNT_SID, AUTH_TOKEN), **params):
            return requests.get(f"{self.base}{path}", params=params, auth=auth, timeout=10)

    return Api()


def assert_twilio_error(response, status: int, code: int):
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"code", "message", "more_info", "status"}
    assert body["code"] == code and body["status"] == status
    assert body["more_info"] == f"https://www.twilio.com/docs/errors/{code}"
    assert isinstance(body["message"], str) and body["message"]
    return body


def count(db, model) -> int:
    with db.sessions() as session:
        return session.scalar(select(func.count()).select_from(model))


# --- CreateMessage ---------------------------------------------------------------------------------

def test_create_answers_with_twilios_message_resource(api, db):
    response = api.create(To=HANDSET, From=SENDER, Body="Your order shipped")

    assert response.status_code == 201
    assert response.headers["Content-Type"].startswith("application/json")
    message = response.json()
    assert SID.match(message["sid"])
    assert message["account_sid"] == ACCOUNT_SID
    assert message["api_version"] == "2010-04-01"
    assert message["to"] == HANDSET and message["from"] == SENDER
    assert message["body"] == "Your order shipped"
    assert message["status"] == "queued"
    assert message["direction"] == "outbound-api"
    assert message["messaging_service_sid"] is None
    assert message["num_segments"] == "1" and message["num_media"] == "0"
    assert message["error_code"] is None and message["error_message"] is None
    assert message["price"] is None and message["price_unit"] == "USD"
    assert message["date_sent"] is None
    for field in ("date_created", "date_updated"):
        assert RFC2822.match(message[field]), message[field]
        assert abs(parsedate_to_datetime(message[field]) - datetime.now(UTC)) < timedelta(seconds=10)
    assert message["uri"] == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{message['sid']}.json"
    assert message["subresource_uris"]["media"] == message["uri"].removesuffix(".json") + "/Media.json"
    assert sandbox_message(db, message["sid"]) is not None


def test_the_twilio_client_parses_what_the_sandbox_answers(twilio_client, instant_sandbox):
    body = "ą" * 71  # UCS-2 (not in GSM-7): 71 characters take two segments
    message = twilio_client.messages.create(to=HANDSET, from_=SENDER, body=body)

    assert SID.match(message.sid)
    assert message.status == "queued"
    assert message.from_ == SENDER and message.to == HANDSET and message.body == body
    assert message.num_segments == "2"
    assert message.date_created.tzinfo is not None  # parsed from RFC 2822; an ISO date would be None
    assert message.error_code is None
    assert message.direction == "outbound-api"


def test_a_messaging_service_send_is_accepted_then_picks_a_number(twilio_client, instant_sandbox, db):
    message = twilio_client.messages.create(to=HANDSET, messaging_service_sid=SERVICE, body="hello")

    assert message.status == "accepted"
    assert message.from_ is None
    assert message.messaging_service_sid == SERVICE
    wait_for_sandbox_status(db, message.sid, "delivered")
    fetched = twilio_client.messages(message.sid).fetch()
    assert fetched.from_ == instant_sandbox.config.service_number
    assert fetched.status == "delivered"
    assert fetched.date_sent is not None


def test_a_1600_character_body_is_accepted(api):
    response = api.create(To=HANDSET, From=SENDER, Body="a" * 1600)
    assert response.status_code == 201
    assert response.json()["num_segments"] == "11"  # 1600 GSM-7 characters in 153-character parts


@pytest.mark.parametrize(("form", "code"), [
    ({"From": SENDER, "Body": "hi"}, 21604),
    ({"To": HANDSET, "Body": "hi"}, 21603),
    ({"To": HANDSET, "From": SENDER}, 21602),
    ({"To": HANDSET, "From": SENDER, "Body": ""}, 21602),
    ({"To": HANDSET, "From": SENDER, "Body": "a" * 1601}, 21617),
    ({"To": "12", "From": SENDER, "Body": "hi"}, 21211),
    ({"To": "not a number", "From": SENDER, "Body": "hi"}, 21211),
    ({"To": HANDSET, "From": "+1", "Body": "hi"}, 21212),
    ({"To": HANDSET, "MessagingServiceSid": "MG123", "Body": "hi"}, 21701),
], ids=["to-required", "from-required", "body-required", "body-empty", "body-too-long", "to-too-short",
        "to-not-a-number", "from-invalid", "service-sid-invalid"])
def test_invalid_creates_get_twilios_codes_and_create_nothing(api, db, form, code):
    assert_twilio_error(api.create(**form), 400, code)
    assert count(db, SandboxMessage) == 0
    assert count(db, SandboxEvent) == 0


@pytest.mark.parametrize(("number", "status", "code"), [
    ("+15005550001", 400, 21211),
    ("+15005550002", 400, 21612),
    ("+15005550003", 400, 21408),
    ("+15005550004", 400, 21610),
    ("+15005550009", 400, 21614),
])
def test_test_numbers_fail_at_create(api, db, number, status, code):
    body = assert_twilio_error(api.create(To=number, From=SENDER, Body="hi"), status, code)
    if code == 21610:
        assert body["message"] == "Attempt to send to unsubscribed recipient"
    assert count(db, SandboxMessage) == 0
    with db.sessions() as session:  # the phone page shows refused attempts
        refusal = session.scalars(select(SandboxRefusal)).one()
    assert (refusal.handset, refusal.error_code, refusal.sender) == (number, code, SENDER)


@pytest.mark.parametrize(("number", "status", "code"), [("+14155550103", 429, 20429), ("+14155550104", 500, 20500)])
def test_transient_test_numbers_fail_once_then_accept(api, number, status, code):
    assert_twilio_error(api.create(To=number, From=SENDER, Body="hi"), status, code)
    assert api.create(To=number, From=SENDER, Body="hi").status_code == 201


# --- Authentication -------------------------------------------------------------------------------

@pytest.mark.parametrize("auth", [None, (ACCOUNT_SID, "wrong-token"), ("AC" + "2" * 32, AUTH_TOKEN)],
                         ids=["no-credentials", "wrong-token", "wrong-account"])
def test_requests_without_the_accounts_credentials_get_401_20003(api, db, auth):
    response = api.create(auth=auth, To=HANDSET, From=SENDER, Body="hi")
    body = assert_twilio_error(response, 401, 20003)
    assert body["message"] == "Authenticate"
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert_twilio_error(api.get("/Messages.json", auth=auth), 401, 20003)
    assert count(db, SandboxMessage) == 0 and count(db, SandboxRefusal) == 0


def test_the_twilio_client_sees_a_wrong_token_as_20003(live_server, instant_sandbox):
    from twilio.rest import Client

    from gateway.twilio.client import RedirectingHttpClient

    client = Client(ACCOUNT_SID, "wrong", http_client=RedirectingHttpClient(live_server + "/sandbox", 5.0),
                    environment={"_": "_"})
    with pytest.raises(TwilioRestException) as caught:
        client.messages.create(to=HANDSET, from_=SENDER, body="hi")
    assert (caught.value.status, caught.value.code) == (401, 20003)


def test_another_accounts_resources_are_not_found(api, live_server):
    other = f"{live_server}/sandbox/2010-04-01/Accounts/AC{'3' * 32}/Messages.json"
    response = requests.post(other, data={"To": HANDSET, "From": SENDER, "Body": "hi"},
                             auth=(ACCOUNT_SID, AUTH_TOKEN), timeout=10)
    assert_twilio_error(response, 404, 20404)


# --- Fetch and list -------------------------------------------------------------------------------

def test_fetch_returns_the_message_and_404_20404_for_unknown_sids(api, twilio_client, db):
    sid = api.create(To=HANDSET, From=SENDER, Body="hi").json()["sid"]
    wait_for_sandbox_status(db, sid, "delivered")

    fetched = twilio_client.messages(sid).fetch()
    assert (fetched.sid, fetched.status, fetched.to) == (sid, "delivered", HANDSET)
    assert fetched.date_sent is not None and fetched.date_sent <= datetime.now(UTC)

    unknown = "SM" + "0" * 32
    body = assert_twilio_error(api.get(f"/Messages/{unknown}.json"), 404, 20404)
    assert f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{unknown}.json" in body["message"]
    with pytest.raises(TwilioRestException) as caught:
        twilio_client.messages(unknown).fetch()
    assert caught.value.code == 20404


def test_list_filters_on_to_from_and_date_sent_and_pages(api, twilio_client, db):
    other_handset = "+14155552672"
    sids = [api.create(To=HANDSET, From=SENDER, Body=f"m{i}").json()["sid"] for i in range(3)]
    sids += [api.create(To=other_handset, From=OTHER_SENDER, Body="x").json()["sid"] for _ in range(2)]
    for sid in sids:
        wait_for_sandbox_status(db, sid, "delivered")
    hour_ago, in_an_hour = datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1)

    assert {m.sid for m in twilio_client.messages.list(to=HANDSET)} == set(sids[:3])
    assert {m.sid for m in twilio_client.messages.list(from_=OTHER_SENDER)} == set(sids[3:])
    assert {m.sid for m in twilio_client.messages.list(to=HANDSET, date_sent_after=hour_ago)} == set(sids[:3])
    assert twilio_client.messages.list(to=HANDSET, date_sent_after=in_an_hour) == []
    assert twilio_client.messages.list(date_sent_before=hour_ago) == []
    # page_size 2 over five messages: the client follows next_page_uri through three pages.
    listed = twilio_client.messages.list(page_size=2)
    assert sorted(m.sid for m in listed) == sorted(sids)
    assert [m.date_created for m in listed] == sorted((m.date_created for m in listed), reverse=True)

    # The envelope the client pages with, and the parameter name it filters by ("DateSent>").
    page = api.get("/Messages.json", To=HANDSET, PageSize=2, **{"DateSent>": hour_ago.strftime("%Y-%m-%dT%H:%M:%SZ")})
    envelope = page.json()
    assert envelope["page"] == 0 and envelope["page_size"] == 2 and envelope["start"] == 0 and envelope["end"] == 1
    assert len(envelope["messages"]) == 2 and envelope["previous_page_uri"] is None
    assert envelope["next_page_uri"].startswith(f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json?")
    assert "DateSent%3E=" in envelope["next_page_uri"] and "Page=1" in envelope["next_page_uri"]
    today = datetime.now(UTC).date().isoformat()
    assert len(api.get("/Messages.json", DateSent=today).json()["messages"]) == 5
    assert_twilio_error(api.get("/Messages.json", DateSent="yesterday"), 400, 20001)


def test_unemulated_resources_answer_404_in_twilios_shape(api):
    assert_twilio_error(api.get("/Calls.json"), 404, 20404)


# --- Status callbacks -----------------------------------------------------------------------------

def test_status_callbacks_arrive_in_order_signed_as_twilio_signs(api, receiver, db):
    sid = api.create(To=HANDSET, From=SENDER, Body="hi", StatusCallback=receiver.url("/status?x=1")).json()["sid"]

    wait_for(lambda: len(receiver.for_message(sid)) == 3)
    callbacks = receiver.for_message(sid)
    assert [c.params["MessageStatus"] for c in callbacks] == ["queued", "sent", "delivered"]
    for callback in callbacks:
        assert callback.signature_valid, callback
        assert callback.path == "/status?x=1"
        assert callback.headers["Content-Type"] == "application/x-www-form-urlencoded"
        assert callback.headers["User-Agent"].startswith("TwilioProxy/")
        params = callback.params
        assert params["MessageSid"] == params["SmsSid"] == sid
        assert params["SmsStatus"] == params["MessageStatus"]
        assert (params["AccountSid"], params["From"], params["To"]) == (ACCOUNT_SID, SENDER, HANDSET)
        assert params["ApiVersion"] == "2010-04-01"
        assert "ErrorCode" not in params and "MessagingServiceSid" not in params
    assert "RawDlrDoneDate" in callbacks[-1].params
    assert len({c.headers["I-Twilio-Idempotency-Token"] for c in callbacks}) == 3
    message = wait_for_sandbox_status(db, sid, "delivered")
    assert message.date_sent is not None


def test_a_tampered_callback_fails_validation(api, receiver):
    from twilio.request_validator import RequestValidator

    sid = api.create(To=HANDSET, From=SENDER, Body="hi", StatusCallback=receiver.url()).json()["sid"]
    wait_for(lambda: len(receiver.for_message(sid)) == 3)
    callback = receiver.for_message(sid)[-1]
    tampered = {**callback.params, "MessageStatus": "failed"}
    assert not RequestValidator(AUTH_TOKEN).validate(receiver.url(), tampered, callback.headers["X-Twilio-Signature"])


def test_callbacks_name_the_messaging_service(twilio_client, receiver, instant_sandbox):
    message = twilio_client.messages.create(to=HANDSET, messaging_service_sid=SERVICE, body="hi",
                                            status_callback=receiver.url())
    wait_for(lambda: len(receiver.for_message(message.sid)) == 3)
    for callback in receiver.for_message(message.sid):
        assert callback.signature_valid
        assert callback.params["MessagingServiceSid"] == SERVICE
        assert callback.params["From"] == instant_sandbox.config.service_number


@pytest.mark.parametrize(("number", "statuses", "code"), [
    ("+14155550100", ["queued", "sent", "undelivered"], 30006),
    ("+14155550101", ["queued", "sent", "undelivered"], 30005),
    ("+14155550102", ["queued", "sent", "undelivered"], 30003),
    ("+14155550105", ["queued", "failed"], 30007),
], ids=["landline", "unknown", "unreachable", "filtered"])
def test_failing_test_numbers_end_with_twilios_delivery_codes(api, receiver, db, number, statuses, code):
    sid = api.create(To=number, From=SENDER, Body="hi", StatusCallback=receiver.url()).json()["sid"]

    wait_for(lambda: len(receiver.for_message(sid)) == len(statuses))
    callbacks = receiver.for_message(sid)
    assert [c.params["MessageStatus"] for c in callbacks] == statuses
    assert callbacks[-1].params["ErrorCode"] == str(code)
    assert all(c.signature_valid for c in callbacks)
    assert all("ErrorCode" not in c.params for c in callbacks[:-1])
    message = sandbox_message(db, sid)
    assert (message.status, message.error_code) == (statuses[-1], code)


def test_each_callback_is_posted_once_by_competing_processes(app, api, receiver, db, test_env):
    # Three more processes run couriers on the same store, as other gunicorn workers do; the steps
    # fall due together a moment after the creates and all four race for them.
    rivals = [subprocess.Popen([sys.executable, "-m", "tests.sandbox_courier_process", "60"], cwd=ROOT,
                               env={**os.environ, **test_env}, stdout=subprocess.PIPE, text=True)
              for _ in range(3)]
    try:
        for rival in rivals:
            assert rival.stdout.readline().strip() == "ready"
        with sandbox_config(app, sent_delay=0.5, final_delay=0.6, poll_interval=0.02):
            sids = [api.create(To=HANDSET, From=SENDER, Body=f"m{i}", StatusCallback=receiver.url()).json()["sid"]
                    for i in range(15)]
            wait_for(lambda: all(len(receiver.for_message(s)) >= 3 for s in sids))
            time.sleep(0.3)  # a duplicate, were there one, would have arrived by now
    finally:
        for rival in rivals:
            rival.kill()
            rival.wait()
    for sid in sids:
        assert [c.params["MessageStatus"] for c in receiver.for_message(sid)] == ["queued", "sent", "delivered"]
        assert all(c.signature_valid for c in receiver.for_message(sid))
    with db.sessions() as session:
        events = session.execute(select(SandboxEvent.state, SandboxEvent.attempts, SandboxEvent.claimed_by)).all()
    assert {(state, attempts) for state, attempts, _ in events} == {("done", 1)}
    assert len({claimer for _, _, claimer in events}) >= 2  # the race was real: several processes won steps


def test_steps_survive_a_restart_and_a_dead_claim_is_taken_over(app, db, settings, receiver):
    # A message created by a process that then stopped: its steps wait in the store...
    config = load_sandbox_config()
    with db.transaction() as session:
        message = messages.create(session, config, ACCOUNT_SID, messages.Outbound(
            to=HANDSET, sender=SENDER, body="hi", status_callback=receiver.url()), now=utcnow() - timedelta(minutes=5))
        sid = message.sid
        # ...one of them claimed by a process that died mid-post, long ago.
        session.flush()
        session.execute(update(SandboxEvent)
                        .where(SandboxEvent.message_sid == sid, SandboxEvent.message_status == "queued")
                        .values(state="claimed", claimed_at=utcnow() - timedelta(minutes=10)))
    courier = Courier(Database(db.url), settings, lambda: config)  # a fresh process
    try:
        wait_for(lambda: courier.run_once() == 0 and len(receiver.for_message(sid)) == 3)
    finally:
        courier.db.dispose()
    assert [c.params["MessageStatus"] for c in receiver.for_message(sid)] == ["queued", "sent", "delivered"]


# --- Twilio's own opt-out ------------------------------------------------------------------------

@pytest.mark.parametrize("word", ["STOP", "stop", " Stop ", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT",
                                  "REVOKE", "OPTOUT"])
def test_a_stop_word_blocks_that_sender_with_21610_until_start(api, live_server, db, word):
    assert phone_text(live_server, HANDSET, SENDER, word).status_code == 201

    body = assert_twilio_error(api.create(To=HANDSET, From=SENDER, Body="deal"), 400, 21610)
    assert body["message"] == "Attempt to send to unsubscribed recipient"
    assert api.create(To=HANDSET, From=OTHER_SENDER, Body="order").status_code == 201  # per sender
    assert api.create(To="+14155552672", From=SENDER, Body="deal").status_code == 201  # per number

    assert phone_text(live_server, HANDSET, SENDER, "start").status_code == 201
    assert api.create(To=HANDSET, From=SENDER, Body="deal").status_code == 201


@pytest.mark.parametrize("word", ["START", "UNSTOP", "yes"])
def test_each_opt_in_word_unblocks(api, live_server, word):
    phone_text(live_server, HANDSET, SENDER, "STOP")
    phone_text(live_server, HANDSET, SENDER, word)
    assert api.create(To=HANDSET, From=SENDER, Body="deal").status_code == 201


@pytest.mark.parametrize("text", ["STOP please", "please stop", "STOP.", "OPT OUT", "HELP"])
def test_only_a_single_listed_word_blocks(api, live_server, text):
    phone_text(live_server, HANDSET, SENDER, text)
    assert api.create(To=HANDSET, From=SENDER, Body="deal").status_code == 201


def test_twilio_answers_stop_and_start_itself(api, live_server, db):
    phone_text(live_server, HANDSET, SENDER, "STOP")
    phone_text(live_server, HANDSET, SENDER, "START")
    own = [m for m in conversation_messages(db, HANDSET) if m.origin == "twilio"]
    assert [m.body.split(".")[0] for m in own] == [
        "You have successfully been unsubscribed",
        "You have successfully been re-subscribed to messages from this number",
    ]
    assert all(m.from_number == SENDER and m.to_number == HANDSET for m in own)


def test_stop_to_a_service_number_blocks_the_whole_service(app, api, live_server, twilio_client):
    numbers = ("+15005550011", "+15005550012")
    with sandbox_config(app, messaging_services={SERVICE: numbers}):
        phone_text(live_server, HANDSET, numbers[1], "STOP")
        with pytest.raises(TwilioRestException) as caught:
            twilio_client.messages.create(to=HANDSET, messaging_service_sid=SERVICE, body="hi")
        assert caught.value.code == 21610
        assert_twilio_error(api.create(To=HANDSET, From=numbers[0], Body="hi"), 400, 21610)
        assert api.create(To=HANDSET, From=SENDER, Body="hi").status_code == 201


def test_stop_survives_in_the_store(api, live_server, db):
    phone_text(live_server, HANDSET, SENDER, "QUIT")
    with db.sessions() as session:
        row = session.get(SandboxOptOut, (HANDSET, SENDER))
    assert row is not None and row.keyword == "QUIT"


# --- Inbound texts to our webhook ----------------------------------------------------------------

def test_a_text_from_the_phone_is_posted_signed_with_twilios_parameters(app, live_server, receiver, db):
    receiver.answer = (200, "text/xml", '<?xml version="1.0" encoding="UTF-8"?><Response>'
                                        "<Message>Thanks!</Message><Message><Body>Two</Body></Message></Response>")
    with sandbox_config(app, sms_url=receiver.url("/sms"), sent_delay=0.0, final_delay=0.0, poll_interval=0.05):
        response = phone_text(live_server, HANDSET, SENDER, "Hello there")
        assert response.status_code == 201
        sid = response.json()["sid"]
        wait_for(lambda: receiver.for_message(sid))
        wait_for(lambda: len([m for m in conversation_messages(db, HANDSET) if m.status == "delivered"]) == 2)

    posted = receiver.for_message(sid)[0]
    assert posted.signature_valid
    params = posted.params
    assert SID.match(params["MessageSid"]) and params["MessageSid"] == params["SmsSid"] == params["SmsMessageSid"]
    assert (params["From"], params["To"], params["Body"]) == (HANDSET, SENDER, "Hello there")
    assert (params["AccountSid"], params["ApiVersion"]) == (ACCOUNT_SID, "2010-04-01")
    assert (params["NumMedia"], params["NumSegments"], params["SmsStatus"]) == ("0", "1", "received")
    assert params["FromCountry"] == params["ToCountry"] == "US"
    assert "MessagingServiceSid" not in params
    inbound = sandbox_message(db, sid)
    assert (inbound.direction, inbound.status, inbound.webhook_status, inbound.webhook_error_code) == (
        "inbound", "received", 200, None)
    replies = [m for m in conversation_messages(db, HANDSET) if m.origin == "twiml"]
    assert [r.body for r in replies] == ["Thanks!", "Two"]
    assert all((r.from_number, r.to_number, r.direction) == (SENDER, HANDSET, "outbound-reply") for r in replies)


def test_a_text_to_a_service_number_names_the_service(app, live_server, receiver):
    with sandbox_config(app, sms_url=receiver.url("/sms"), messaging_services={SERVICE: ("+15005550011",)}):
        sid = phone_text(live_server, HANDSET, "+15005550011", "hi").json()["sid"]
        wait_for(lambda: receiver.for_message(sid))
    assert receiver.for_message(sid)[0].params["MessagingServiceSid"] == SERVICE


def test_a_twiml_reply_to_an_opted_out_pair_is_refused_21610(app, live_server, receiver, db):
    receiver.answer = (200, "application/xml", "<Response><Message>You are unsubscribed.</Message></Response>")
    with sandbox_config(app, sms_url=receiver.url("/sms"), auto_replies=False):
        sid = phone_text(live_server, HANDSET, SENDER, "STOP").json()["sid"]
        wait_for(lambda: sandbox_message(db, sid).webhook_status == 200)
    with db.sessions() as session:
        refusal = session.scalars(select(SandboxRefusal)).one()
    assert (refusal.error_code, refusal.origin, refusal.body) == (21610, "twiml", "You are unsubscribed.")


def _program_on(db, sender_key: str, **definition) -> None:
    from gateway.domain.programs import DEFAULT_TEMPLATES, ProgramSpec
    from gateway.store import programs

    where = {"messaging_service": sender_key} if sender_key.startswith("MG") else {"sender": sender_key}
    spec = ProgramSpec(slug="filtered", name="Filtered", category="informational", frequency="Weekly",
                       help="Filtered: help.", templates=dict(DEFAULT_TEMPLATES), **where, **definition)
    with db.transaction() as session:
        programs.store(session, [spec])


def _blocked_on(db) -> list[str]:
    with db.sessions() as session:
        return messages.opted_out_senders(session, HANDSET)


def test_advanced_opt_out_posts_its_opt_out_type_and_blocks_on_its_own_words(app, live_server, receiver, db):
    _program_on(db, SERVICE, opt_out_handling="twilio_advanced", twilio_opt_out_keywords=["ALTO"],
                twilio_opt_in_keywords=["VUELVO"])
    with sandbox_config(app, sms_url=receiver.url("/sms"), messaging_services={SERVICE: ("+15005550011",)}):
        posted = {}
        for body in ("alto", "CANCEL", "HELP", "vuelvo"):
            sid = phone_text(live_server, HANDSET, "+15005550011", body).json()["sid"]
            wait_for(lambda sid=sid: receiver.for_message(sid))
            posted[body] = receiver.for_message(sid)[0].params.get("OptOutType")
            if body == "alto":
                assert _blocked_on(db) == ["+15005550011", SERVICE]
    assert posted == {"alto": "STOP", "CANCEL": None, "HELP": "HELP", "vuelvo": "START"}
    assert _blocked_on(db) == []


def test_with_no_filtering_the_sandbox_blocks_nothing_and_answers_nothing(app, live_server, receiver, db):
    _program_on(db, "+15005550007", opt_out_handling="none")
    with sandbox_config(app, sms_url=receiver.url("/sms")):
        sid = phone_text(live_server, HANDSET, "+15005550007", "STOP").json()["sid"]
        wait_for(lambda: sandbox_message(db, sid).webhook_status == 200)
    assert "OptOutType" not in receiver.for_message(sid)[0].params
    assert [m.origin for m in conversation_messages(db, HANDSET)] == ["phone"]  # no Twilio auto-reply
    with db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(SandboxOptOut)) == 0


@pytest.mark.parametrize(("answer", "status", "code"), [
    ((404, "text/html", "<h1>Not Found</h1>"), 404, 11200),
    ((500, "text/plain", "boom"), 500, 11200),
    ((200, "application/xml", "<Reply/>"), 200, 12102),
    ((200, "application/xml", "not xml <"), 200, 12100),
])
def test_a_failing_webhook_is_shown_with_twilios_error(app, live_server, receiver, db, answer, status, code):
    receiver.answer = answer
    with sandbox_config(app, sms_url=receiver.url("/sms")):
        sid = phone_text(live_server, HANDSET, SENDER, "hi").json()["sid"]
        wait_for(lambda: sandbox_message(db, sid).webhook_error_code is not None)
    inbound = sandbox_message(db, sid)
    assert (inbound.webhook_status, inbound.webhook_error_code) == (status, code)


def test_an_unreachable_webhook_is_11205(app, live_server, db):
    with sandbox_config(app, sms_url="http://127.0.0.1:9/sms"):
        sid = phone_text(live_server, HANDSET, SENDER, "hi").json()["sid"]
        wait_for(lambda: sandbox_message(db, sid).webhook_error_code is not None)
    inbound = sandbox_message(db, sid)
    assert (inbound.webhook_status, inbound.webhook_error_code) == (None, 11205)


@pytest.mark.parametrize(("status", "content_type", "body", "replies", "code"), [
    (200, "application/xml", '<?xml version="1.0"?><Response/>', [], None),
    (200, "text/xml; charset=utf-8", "<Response><Message>a &amp; b</Message></Response>", ["a & b"], None),
    (200, "application/xml",
     "<Response><Message><Body>x</Body><Media>u</Media></Message><Redirect>/r</Redirect></Response>", ["x"], None),
    (200, "text/plain", "plain words", ["plain words"], None),
    (200, "application/xml", "", [], 11200),
    (200, "", "<Response/>", [], 12300),
    (200, "application/json", "{}", [], 12300),
    (200, "application/xml", ' <?xml version="1.0"?><Response/>', [], 12100),
    (403, "text/plain", "invalid signature", [], 11200),
])
def test_read_answer_reads_twiml_as_twilio_does(status, content_type, body, replies, code):
    answer = read_answer(status, content_type, body)
    assert [r.body for r in answer.replies] == replies
    assert answer.error_code == code


# --- Phone page --------------------------------------------------------------------------------------

def test_the_phone_page_and_its_assets_are_served_locally(client):
    page = client.get("/sandbox/phone?number=%2B14155552671")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "/sandbox/phone/assets/phone.js" in html and "/sandbox/phone/assets/phone.css" in html
    for asset in ("phone.js", "phone.css"):
        served = client.get(f"/sandbox/phone/assets/{asset}")
        assert served.status_code == 200
        text = served.get_data(as_text=True)
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
    assert not re.search(r'(src|href)="(https?:)?//', html)  # no CDN, no external assets
    assert client.get("/sandbox/phone/assets/..%2Fconfig.py").status_code == 404


def test_the_phone_state_lists_our_senders_and_the_conversation(api, client, live_server, db):
    sid = api.create(To=HANDSET, From=OTHER_SENDER, Body="Order 12 shipped").json()["sid"]
    api.create(To=HANDSET, From=SENDER, Body="hi")
    phone_text(live_server, HANDSET, SENDER, "STOP")
    api.create(To=HANDSET, From=SENDER, Body="refused")
    wait_for_sandbox_status(db, sid, "delivered")

    state = client.get("/sandbox/phone/state?number=(415) 555-2671").get_json()
    assert state["number"] == HANDSET
    senders = {s["number"]: s for s in state["senders"]}
    assert "Acme Deals" in senders[SENDER]["label"] and "Acme Orders" in senders[OTHER_SENDER]["label"]
    assert senders[SENDER]["opted_out"] and not senders[OTHER_SENDER]["opted_out"]
    bodies = [(m["direction"], m["body"], m["status"]) for m in state["messages"] if m["origin"] != "twilio"]
    assert bodies[0] == ("out", "Order 12 shipped", "delivered")
    assert ("in", "STOP", "received") in bodies
    refused = next(m for m in state["messages"] if m["body"] == "refused")
    assert (refused["direction"], refused["status"], refused["error_code"]) == ("out", "refused", 21610)
    assert HANDSET in state["handsets"]
    assert any(t["number"] == "+14155550100" for t in state["test_numbers"])
    assert client.get("/sandbox/phone/state?number=12").status_code == 400


def test_the_phone_refuses_cross_site_posts(live_server, db):
    url = f"{live_server}/sandbox/phone/messages"
    payload = {"from": HANDSET, "to": SENDER, "body": "STOP"}
    assert requests.post(url, json=payload, timeout=10).status_code == 403  # no Origin
    assert requests.post(url, json=payload, headers={"Origin": "http://evil.example"}, timeout=10).status_code == 403
    assert requests.post(url, data=payload, headers={"Origin": live_server}, timeout=10).status_code == 403  # a form
    assert count(db, SandboxMessage) == 0 and count(db, SandboxOptOut) == 0


@pytest.mark.parametrize(("payload", "fragment"), [
    ({"from": "12", "to": SENDER, "body": "hi"}, "phone's number"),
    ({"from": HANDSET, "to": "nope", "body": "hi"}, "number texted"),
    ({"from": HANDSET, "to": SENDER, "body": "  "}, "type a message"),
    ({"from": HANDSET, "to": SENDER, "body": "a" * 1601}, "1600"),
])
def test_the_phone_rejects_bad_texts_with_a_clear_400(live_server, db, payload, fragment):
    response = requests.post(f"{live_server}/sandbox/phone/messages", json=payload,
                             headers={"Origin": live_server}, timeout=10)
    assert response.status_code == 400
    assert fragment in response.json()["error"]["message"]
    assert count(db, SandboxMessage) == 0


def test_sandbox_config_file_is_valid():
    config = load_sandbox_config(env={})
    assert config.test_numbers["+14155550100"].error_code == 30006
    assert config.test_numbers["+15005550009"].create_error == 21614
    overridden = load_sandbox_config(env={"SANDBOX_SENT_DELAY": "0", "SANDBOX_FINAL_DELAY": "0.1"})
    assert (overridden.sent_delay, overridden.final_delay) == (0.0, 0.1)


# --- loopback clients only ---------------------------------------------------------------------------

STRANGER = "203.0.113.9"
FORGED_LOCAL = {"Host": "127.0.0.1:5000", "Origin": "http://127.0.0.1:5000", "X-Forwarded-For": "127.0.0.1",
                "X-Real-IP": "127.0.0.1", "Forwarded": "for=127.0.0.1"}
ROUTE_ARGUMENTS = {"account_sid": ACCOUNT_SID, "sid": "SM" + "0" * 32, "name": "phone.js", "rest": "Calls.json",
                   "raw": "+14155550110", "day": "2026-01-01"}


def sandbox_requests(app):
    """(method, path) for every route of the sandbox, with its URL arguments filled in."""
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("sandbox."):
            path = rule.rule
            for argument in rule.arguments:
                path = re.sub(rf"<(?:\w+:)?{argument}>", ROUTE_ARGUMENTS[argument], path)
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                yield method, path


def test_every_sandbox_route_is_tried(app):
    endpoints = {path for _, path in sandbox_requests(app)}
    assert {"/sandbox/phone", "/sandbox/phone/state", "/sandbox/phone/messages",
            f"/sandbox/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"} <= endpoints


@pytest.mark.parametrize("headers", [{}, FORGED_LOCAL], ids=["plain", "forged-local-headers"])
def test_the_sandbox_does_not_exist_for_a_remote_client(app, client, db, headers):
    """A stranger cannot text the gateway as a handset, read the handsets and conversations, or use
    the REST API, whatever Host, Origin or X-Forwarded-For they claim: only the socket counts."""
    remote = {"REMOTE_ADDR": STRANGER}
    for method, path in sandbox_requests(app):
        response = client.open(path, method=method, environ_base=remote, headers=headers,
                               auth=(ACCOUNT_SID, AUTH_TOKEN),
                               json={"from": HANDSET, "to": SENDER, "body": "START"} if method == "POST" else None)
        assert response.status_code == 404, (method, path, response.status_code)
        assert HANDSET not in response.get_data(as_text=True)
    assert count(db, SandboxMessage) == 0 and count(db, SandboxEvent) == 0 and count(db, SandboxRefusal) == 0


def test_the_phone_still_answers_this_machine(client, db):
    # The test client's socket address is 127.0.0.1, as a browser's on this machine is.
    assert client.get("/sandbox/phone").status_code == 200
    assert client.get("/sandbox/phone", environ_base={"REMOTE_ADDR": "::1"}).status_code == 200
    response = client.post("/sandbox/phone/messages", json={"from": HANDSET, "to": SENDER, "body": "hi"},
                           headers={"Origin": "http://localhost"}, environ_base={"REMOTE_ADDR": "::ffff:127.0.0.1"})
    assert response.status_code == 201


@pytest.mark.parametrize(("socket_address", "forwarded_for"), [
    (STRANGER, "127.0.0.1"),  # a stranger claiming to be local, through a trusted proxy setting
    ("127.0.0.1", STRANGER),  # a proxy on this machine forwarding a stranger
])
def test_behind_a_proxy_the_sandbox_answers_nobody(app, db, socket_address, forwarded_for):
    """With TRUSTED_PROXIES, ProxyFix rewrites REMOTE_ADDR from X-Forwarded-For: the sandbox looks at
    the socket's address it keeps aside, and refuses anything that came through a proxy at all."""
    from werkzeug.middleware.proxy_fix import ProxyFix
    from werkzeug.test import Client

    behind_proxy = Client(ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1))
    text = {"from": HANDSET, "to": SENDER, "body": "START"}
    for method, path in [("GET", "/sandbox/phone/state"), ("GET", "/sandbox/phone"),
                         ("POST", "/sandbox/phone/messages")]:
        response = behind_proxy.open(path, method=method, environ_base={"REMOTE_ADDR": socket_address},
                                     headers={"X-Forwarded-For": forwarded_for, "X-Forwarded-Host": "127.0.0.1:5000",
                                              "Origin": "http://127.0.0.1:5000"},
                                     json=text if method == "POST" else None)
        assert response.status_code == 404, (method, path)
    assert count(db, SandboxMessage) == 0


@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("203.0.113.9", False), ("10.0.0.1", False), ("::ffff:203.0.113.9", False), ("", False), ("localhost", False),
])
def test_is_loopback(address, loopback):
    assert is_loopback(address) is loopback


def test_the_socket_address_is_the_one_proxyfix_kept_aside():
    forwarded = {"REMOTE_ADDR": "127.0.0.1", "werkzeug.proxy_fix.orig": {"REMOTE_ADDR": STRANGER}}
    assert socket_address(forwarded) == STRANGER
    assert socket_address({"REMOTE_ADDR": "::1"}) == "::1"

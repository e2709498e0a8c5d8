"""The sandbox's message log as Twilio's Messages list shows it: every inbound text kept (its webhook
delivered or lost), filtered on To, From and DateSent, paged with page tokens the official client
follows; and the Provider's `inbound_messages` on top of it."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import requests
from sqlalchemy import func, select

from gateway.config import SANDBOX_ACCOUNT_SID
from gateway.domain.message_log import LoggedText
from gateway.store.models import utcnow
from gateway.twilio.client import Provider
from gateway.twilio.sandbox import messages
from gateway.twilio.sandbox.models import SandboxEvent
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN
from tests.sandbox_support import (  # noqa: F401  (fixtures)
    instant_sandbox,
    receiver,
    sandbox_config,
    sandbox_message,
    twilio_client,
)

SENDER = "+15005550006"
OTHER_SENDER = "+18885550199"
HANDSET, OTHER_HANDSET = "+14155552671", "+14155552672"
SERVICE = "MG" + "a" * 32


def logged(app, db, handset: str, to: str, body: str, *, at: datetime | None = None, webhook: bool = False) -> str:
    with db.transaction() as session:
        return messages.receive(session, app.extensions["sandbox"].config, SANDBOX_ACCOUNT_SID, handset=handset,
                                to=to, body=body, now=at or utcnow(), webhook=webhook).sid


def list_page(live_server, **params) -> dict:
    response = requests.get(f"{live_server}/sandbox/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
                            params=params, auth=(ACCOUNT_SID, AUTH_TOKEN), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_text_whose_webhook_is_lost_is_kept_in_the_log_and_never_posted(app, live_server, receiver, db):
    with sandbox_config(app, sms_url=receiver.url("/sms"), poll_interval=0.05):
        response = requests.post(f"{live_server}/sandbox/phone/messages", timeout=10, headers={"Origin": live_server},
                                 json={"from": HANDSET, "to": SENDER, "body": "STOP", "webhook": False})
        assert response.status_code == 201
        sid = response.json()["sid"]
        delivered = requests.post(f"{live_server}/sandbox/phone/messages", timeout=10, headers={"Origin": live_server},
                                  json={"from": OTHER_HANDSET, "to": SENDER, "body": "hi"}).json()["sid"]
        deadline = time.monotonic() + 10
        while not receiver.for_message(delivered) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert receiver.for_message(delivered)  # the courier ran, and posted only the other one
    assert receiver.for_message(sid) == []
    lost = sandbox_message(db, sid)
    assert (lost.direction, lost.status, lost.webhook_status) == ("inbound", "received", None)
    assert "lost" in lost.webhook_note
    with db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(SandboxEvent).where(
            SandboxEvent.message_sid == sid, SandboxEvent.kind == "inbound")) == 0


def test_inbound_texts_are_listed_with_twilios_filters(app, live_server, instant_sandbox, twilio_client, db):
    now = utcnow().replace(microsecond=0)
    old = logged(app, db, HANDSET, SENDER, "STOP", at=now - timedelta(hours=2))
    recent = logged(app, db, HANDSET, SENDER, "START", at=now - timedelta(minutes=5))
    other = logged(app, db, OTHER_HANDSET, OTHER_SENDER, "HELP", at=now - timedelta(minutes=4))

    listed = twilio_client.messages.list(to=SENDER)
    assert [m.sid for m in listed] == [recent, old]  # newest first
    assert all(m.direction == "inbound" and m.status == "received" for m in listed)
    assert listed[0].date_sent == now - timedelta(minutes=5) and listed[0].from_ == HANDSET
    assert [m.sid for m in twilio_client.messages.list(from_=OTHER_HANDSET)] == [other]
    assert [m.sid for m in twilio_client.messages.list(to=SENDER, date_sent_after=now - timedelta(hours=1))] == [recent]
    # Scoped to this test's numbers: the session's other tests log texts of their own in these minutes.
    assert [m.sid for m in twilio_client.messages.list(to=SENDER, date_sent_before=now - timedelta(hours=1))] == [old]
    # The DateSent> bound is inclusive, to the second, as the client sends it.
    assert [m.sid for m in twilio_client.messages.list(from_=OTHER_HANDSET, to=OTHER_SENDER,
                                                       date_sent_after=now - timedelta(minutes=4))] == [other]
    assert [m.sid for m in twilio_client.messages.list(from_=OTHER_HANDSET, to=OTHER_SENDER,
                                                       date_sent_after=now - timedelta(minutes=3))] == []
    on_the_day = list_page(live_server, DateSent=(now - timedelta(minutes=4)).date().isoformat())["messages"]
    assert other in {m["sid"] for m in on_the_day}


def test_the_official_client_pages_through_with_page_tokens(app, live_server, twilio_client, db):
    now = utcnow()
    sids = [logged(app, db, HANDSET, SENDER, f"text {n}", at=now - timedelta(seconds=50 - n)) for n in range(5)]

    assert [m.sid for m in twilio_client.messages.stream(to=SENDER, page_size=2)] == sids[::-1]

    first = list_page(live_server, To=SENDER, PageSize=2)
    assert [m["sid"] for m in first["messages"]] == [sids[4], sids[3]]
    next_query = parse_qs(urlsplit(first["next_page_uri"]).query)
    assert next_query["PageToken"] == ["PA" + sids[3]] and next_query["Page"] == ["1"]
    assert next_query["To"] == [SENDER] and next_query["PageSize"] == ["2"]
    assert first["first_page_uri"].endswith("Page=0") and first["previous_page_uri"] is None
    # A text logged while a caller pages does not shift the pages it has not read yet.
    logged(app, db, HANDSET, SENDER, "newest", at=now)
    page = twilio_client.messages.page(to=SENDER, page_size=2, page_token="PA" + sids[3], page_number=1)
    assert [m.sid for m in page] == [sids[2], sids[1]]
    last = list_page(live_server, To=SENDER, PageSize=2, Page=2, PageToken="PA" + sids[1])
    assert [m["sid"] for m in last["messages"]] == [sids[0]] and last["next_page_uri"] is None

    refused = requests.get(f"{live_server}/sandbox/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
                           params={"PageToken": "nonsense"}, auth=(ACCOUNT_SID, AUTH_TOKEN), timeout=10)
    assert refused.status_code == 400 and refused.json()["code"] == 20001


def test_the_provider_lists_inbound_texts_only_as_domain_values(app, settings, live_server, instant_sandbox, db):
    provider = Provider.from_settings(settings)
    now = utcnow().replace(microsecond=0)
    inbound = logged(app, db, HANDSET, SENDER, "STOP", at=now - timedelta(minutes=2))
    with sandbox_config(app, messaging_services={SERVICE: ("+15005550011",)}):
        to_service = logged(app, db, OTHER_HANDSET, "+15005550011", "STOP", at=now - timedelta(minutes=1))
    provider.send(to=OTHER_HANDSET, sender=SENDER, body="an outbound text")  # listed by Twilio, not inbound

    assert provider.inbound_messages(to=SENDER, since=now - timedelta(hours=1)) == [LoggedText(
        sid=inbound, from_=HANDSET, to=SENDER, body="STOP", date_sent=now - timedelta(minutes=2),
        messaging_service_sid=None, account_sid=SANDBOX_ACCOUNT_SID)]
    everything = provider.inbound_messages(to=None, since=now - timedelta(hours=1), page_size=1)
    assert [text.sid for text in everything] == [to_service, inbound]
    assert everything[0].messaging_service_sid == SERVICE
    assert provider.inbound_messages(to=SENDER, since=now - timedelta(seconds=30)) == []
    # Any time zone: the client sends UTC.
    local = (now - timedelta(minutes=3)).astimezone(timezone(timedelta(hours=-5)))
    assert [t.sid for t in provider.inbound_messages(to=SENDER, since=local)] == [inbound]
    assert all(text.date_sent.tzinfo == UTC for text in everything)

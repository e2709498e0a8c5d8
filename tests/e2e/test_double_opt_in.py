"""Double opt-in end to end: a real worker, the app over real HTTP, the Twilio sandbox, and a browser.

request → confirmation text in the sandbox → YES through the signed webhook → opted in → a send
is accepted and delivered; and what is refused on the way.
"""

import uuid
from datetime import timedelta
from xml.etree import ElementTree

import pytest
from sqlalchemy import func, select

from gateway.domain.consent import Input, Source
from gateway.domain.numbers import parse
from gateway.domain.programs import spec_of
from gateway.queue.app import TaskNames
from gateway.services import consents, subscriptions
from gateway.store import consents as store_consents
from gateway.store import ledger, programs
from gateway.store.models import Consent, InboundMessage, LedgerEvent, OutboundMessage, PhoneNumber, utcnow
from gateway.twilio.sandbox.models import SandboxEvent
from tests.conftest import ACCOUNT_SID, wait_for

pytestmark = pytest.mark.e2e

PHONE = "+14155550142"
SENDER = "+15005550006"  # deals and alerts
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(autouse=True)
def _fresh_limits(gateway):
    gateway.limiter.reset()


@pytest.fixture(autouse=True)
def _settle(db):
    """Leave nothing in flight for the next test: every message final, every sandbox step posted."""
    yield

    def settled():
        with db.sessions() as session:
            return not session.scalar(select(func.count()).select_from(OutboundMessage).where(
                OutboundMessage.status.in_(("queued", "deferred", "sending", "sent")))) \
                and not session.scalar(select(func.count()).select_from(SandboxEvent).where(
                    SandboxEvent.state != "done"))

    wait_for(settled)


@pytest.fixture
def keys(make_key):
    return {"subscribe": {"Authorization": f"Bearer {make_key('subscribe')}"},
            "send": {"Authorization": f"Bearer {make_key('send', 'read')}"}}


def texts_to(gateway, phone=PHONE) -> list[str]:
    """What the sandbox holds for `phone`, asked through its Twilio API with the real twilio client."""
    return [m.body for m in gateway.provider.client.messages.list(to=phone, limit=100)]


def template(db, slug: str, name: str) -> str:
    with db.sessions() as session:
        return spec_of(programs.by_slug(session, slug)).text(name)


def consent(db, slug: str, phone=PHONE) -> str | None:
    with db.sessions() as session:
        return session.scalar(select(Consent.status).join(PhoneNumber).join(programs.Program)
                              .where(PhoneNumber.e164 == phone, programs.Program.slug == slug))


def outbox(db, kind: str | None = None) -> list[tuple[str, str, str | None]]:
    with db.sessions() as session:
        query = select(OutboundMessage.kind, OutboundMessage.status, OutboundMessage.reason).order_by(
            OutboundMessage.created_at)
        if kind:
            query = query.where(OutboundMessage.kind == kind)
        return [tuple(row) for row in session.execute(query)]


def reply(twilio_post, body: str, phone=PHONE, to=SENDER):
    """The handset texts `body` to our number: Twilio's signed inbound webhook."""
    return twilio_post("/webhooks/twilio/sms", {
        "MessageSid": "SM" + uuid.uuid4().hex, "AccountSid": ACCOUNT_SID, "From": phone, "To": to, "Body": body,
        "NumMedia": "0", "NumSegments": "1", "SmsStatus": "received", "ApiVersion": "2010-04-01",
    })


def replies(response) -> list[str]:
    """The texts a TwiML answer sends back."""
    return [m.text for m in ElementTree.fromstring(response.get_data(as_text=True)).iter("Message")]


MAINTENANCE = "Acme Alerts: scheduled maintenance tonight 1-2am. Reply STOP to cancel."


def send(client, keys, program="alerts", body=MAINTENANCE):
    return client.post("/v1/messages", json={"to": PHONE, "program": program, "body": body}, headers=keys["send"])


def test_request_text_yes_then_a_send_is_delivered(worker_process, live_server, client, twilio_post, keys, db,
                                                    gateway):
    # Before anything, nobody may text this number.
    refused = send(client, keys)
    assert (refused.status_code, refused.json["error"]["code"]) == (409, "no_consent")

    requested = client.post("/v1/subscriptions", headers=keys["subscribe"], json={
        "phone": PHONE, "program": "alerts",
        "evidence": {"disclosure_text": "Get Acme service alerts by text", "ip": "203.0.113.7"}})
    assert requested.status_code == 202 and requested.json["status"] == "pending"
    assert send(client, keys).json["error"]["code"] == "pending_confirmation"

    # The worker sends the confirmation text through the provider; it arrives in the sandbox.
    confirmation = template(db, "alerts", "confirmation")
    wait_for(lambda: confirmation in texts_to(gateway))
    wait_for(lambda: outbox(db, "confirmation") == [("confirmation", "delivered", None)])

    answered = reply(twilio_post, "Yes")
    assert answered.status_code == 200
    assert replies(answered) == [template(db, "alerts", "welcome")]
    assert consent(db, "alerts") == "opted_in"
    with db.sessions() as session:
        event = session.scalars(select(LedgerEvent).order_by(LedgerEvent.seq.desc())).first()
        assert (event.type, event.source) == ("confirmation", "sms")
        assert event.reference.startswith("SM")
        assert list(ledger.verify(session)) == []

    accepted = send(client, keys)
    assert accepted.status_code == 202, accepted.json
    message_id = accepted.json["id"]

    def delivered():
        return client.get(f"/v1/messages/{message_id}", headers=keys["send"]).json["status"] == "delivered"

    wait_for(delivered)
    assert "Acme Alerts: scheduled maintenance tonight 1-2am. Reply STOP to cancel." in texts_to(gateway)


def test_yes_does_not_confirm_another_program_or_a_stale_request(worker_process, live_server, client, twilio_post,
                                                                  keys, db, gateway, settings):
    # YES with nothing pending is plain text: no reply, no consent.
    assert replies(reply(twilio_post, "YES")) == []
    assert consent(db, "alerts") is None

    # A request made 49 hours ago has passed its deadline: YES confirms nothing, and beat expires it.
    past = utcnow() - timedelta(hours=49)
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(PHONE))
        started = subscriptions.start(
            session, number=row, program=programs.by_slug(session, "deals"), input=Input.API_REQUEST,
            evidence=consents.Evidence(Source.API, "crm"), now=past, ttl=timedelta(hours=settings.pending_ttl_hours),
            suppression_key=settings.suppression_key, rules=gateway.quiet_hours)
    assert replies(reply(twilio_post, "YES")) == []
    assert consent(db, "deals") == "pending"
    # Its confirmation text, reaching the worker only now, is held back by the gate there.
    gateway.dispatcher.send_messages([started.confirmation.id])
    wait_for(lambda: outbox(db) == [("confirmation", "blocked", "no_pending_request")])
    assert texts_to(gateway) == []
    gateway.dispatcher.send(TaskNames.EXPIRE_PENDING)
    wait_for(lambda: consent(db, "deals") == "expired")


def from_phone(client, settings, body: str, phone=PHONE, to=SENDER) -> None:
    """Text from the sandbox phone: Twilio's STOP/START handling applies, then the signed webhook."""
    response = client.post("/sandbox/phone/messages", json={"from": phone, "to": to, "body": body},
                           headers={"Origin": settings.public_base_url})
    assert response.status_code == 201, response.json


def inbound_count(db) -> int:
    with db.sessions() as session:
        return session.scalar(select(func.count()).select_from(InboundMessage))


def test_an_opted_out_number_is_not_asked_again_but_can_come_back_by_text(worker_process, live_server, client,
                                                                          keys, db, gateway, settings):
    assert client.post("/v1/subscriptions", headers=keys["subscribe"],
                       json={"phone": PHONE, "program": "alerts"}).status_code == 202
    confirmation = template(db, "alerts", "confirmation")
    wait_for(lambda: confirmation in texts_to(gateway))
    from_phone(client, settings, "STOP")  # before confirming: Twilio blocks the sender, we record it
    wait_for(lambda: consent(db, "alerts") == "opted_out")

    refused = client.post("/v1/subscriptions", headers=keys["subscribe"], json={"phone": PHONE, "program": "alerts"})
    assert (refused.status_code, refused.json["error"]["code"]) == (409, "opted_out")
    assert "text START to +15005550006" in refused.json["error"]["message"]
    assert send(client, keys).json["error"]["code"] == "opted_out"

    # What the refusal tells the person to do works: START lifts Twilio's block (nothing was confirmed
    # to restore), the join keyword asks again, and YES confirms.
    from_phone(client, settings, "START")
    wait_for(lambda: inbound_count(db) == 2)
    assert consent(db, "alerts") == "opted_out"
    from_phone(client, settings, "ALERTS")
    wait_for(lambda: consent(db, "alerts") == "pending")
    wait_for(lambda: texts_to(gateway).count(confirmation) == 2)
    wait_for(lambda: outbox(db, "confirmation")[-1][1] == "delivered")
    from_phone(client, settings, "YES")
    wait_for(lambda: consent(db, "alerts") == "opted_in")
    assert send(client, keys).status_code == 202
    wait_for(lambda: outbox(db)[-1][1] == "delivered")


def test_a_number_gets_at_most_three_confirmation_texts_a_day(worker_process, live_server, client, keys, db,
                                                              gateway):
    for program in ("deals", "alerts", "deals"):
        assert client.post("/v1/subscriptions", headers=keys["subscribe"],
                           json={"phone": PHONE, "program": program}).status_code == 202
    limited = client.post("/v1/subscriptions", headers=keys["subscribe"], json={"phone": PHONE, "program": "alerts"})
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    wait_for(lambda: len(texts_to(gateway)) == 3)
    wait_for(lambda: [status for _, status, _ in outbox(db)] == ["delivered"] * 3)
    with db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(LedgerEvent)) == 3


@pytest.mark.browser
def test_a_person_fills_the_form_and_confirms_from_the_phone_page(worker_process, live_server, db, gateway):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        # Nothing either page needs may be blocked by our Content-Security-Policy (gateway/web/headers.py).
        blocked = []

        def note_blocked(message):
            if "Content Security Policy" in message.text:
                blocked.append(message.text)

        try:
            page = browser.new_page()
            page.on("console", note_blocked)
            page.goto(f"{live_server}/subscribe/alerts")
            page.get_by_label("Mobile phone number").fill("(415) 555-0142")
            submit = page.get_by_role("button", name="Send me the confirmation text")
            submit.click()
            # The box is not ticked for anyone: the form says so and nothing is asked.
            expect(page.get_by_role("alert")).to_contain_text("Tick the box")
            assert consent(db, "alerts") is None
            page.get_by_label("Yes, I agree to receive text messages from Acme Service Alerts").check()
            page.get_by_role("button", name="Send me the confirmation text").click()
            expect(page.get_by_role("heading", level=1)).to_have_text("Check your phone: reply YES to confirm")
            assert consent(db, "alerts") == "pending"

            phone = browser.new_page()
            phone.on("console", note_blocked)
            phone.goto(f"{live_server}/sandbox/phone?number=%2B14155550142")
            conversation = phone.locator("#messages")
            expect(conversation).to_contain_text(template(db, "alerts", "confirmation"), timeout=20_000)
            phone.locator("#to").select_option(SENDER)
            phone.locator("#body").fill("YES")
            phone.locator("#send").click()
            expect(conversation).to_contain_text(template(db, "alerts", "welcome"), timeout=20_000)
        finally:
            browser.close()
    assert blocked == []
    assert consent(db, "alerts") == "opted_in"
    with db.sessions() as session:
        request, confirmation = session.scalars(select(LedgerEvent).order_by(LedgerEvent.seq)).all()
    assert (request.source, request.evidence["ip"]) == ("web", "127.0.0.1")
    assert "Chrome" in request.evidence["user_agent"]
    assert (confirmation.type, confirmation.source) == ("confirmation", "sms")

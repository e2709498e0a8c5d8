"""The phone page in a real browser (Debian's chromium through Playwright): text the gateway, see
its TwiML reply, and see a message the real worker sent arrive with its delivery status."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect
from twilio.base.exceptions import TwilioRestException

from tests.browser_support import browser  # noqa: F401  (a fixture)
from tests.sandbox_support import opt_in, queue, quick_sandbox  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.e2e]
HANDSET = "+14155552671"
ORDERS_NUMBER = "+18885550199"


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context()
    page = context.new_page()
    # Everything the page loads must come from the app itself: no CDN, no external assets.
    foreign = []
    page.on("request", lambda request: request.url.startswith(live_server) or foreign.append(request.url))
    # Nothing the page needs may be blocked by our Content-Security-Policy (gateway/web/headers.py).
    blocked = []
    page.on("console", lambda message: "Content Security Policy" in message.text and blocked.append(message.text))
    yield page
    context.close()
    assert foreign == []
    assert blocked == []


def test_the_phone_texts_the_gateway_and_shows_what_the_worker_sends(page, live_server, worker_process, gateway,
                                                                      db, quick_sandbox):
    opt_in(db, HANDSET, "orders")
    page.goto(f"{live_server}/sandbox/phone?number=%2B14155552671")

    # Text HELP to the orders number: the sandbox posts it, signed, to our webhook, and shows the
    # TwiML reply as Twilio would deliver it.
    expect(page.locator("#send-form")).to_be_visible()
    page.select_option("#to", ORDERS_NUMBER)
    page.fill("#body", "HELP")
    page.click("#send")
    inbound = page.locator("li.msg.in", has_text="HELP")
    expect(inbound).to_be_visible()
    expect(inbound.locator(".webhook")).to_contain_text("HTTP 200")
    reply = page.locator("li.msg.out[data-origin='twiml']")
    expect(reply).to_contain_text("Acme Orders: order updates", timeout=15_000)
    expect(reply).to_have_attribute("data-status", "delivered", timeout=15_000)

    # A message queued in the outbox: the worker sends it through the provider to the sandbox, and
    # the page shows it arriving, then its delivery status.
    queue(gateway, HANDSET, "orders", "Acme Orders: order 1234 has shipped.")
    sent = page.locator("li.msg.out[data-origin='api']", has_text="order 1234 has shipped")
    expect(sent).to_be_visible(timeout=20_000)
    expect(sent).to_have_attribute("data-status", "delivered", timeout=20_000)
    expect(sent.locator(".status")).to_have_text("delivered")
    expect(sent).to_contain_text(f"from {ORDERS_NUMBER}")


def test_the_phone_shows_twilio_blocking_after_stop(page, live_server, gateway, db, quick_sandbox):
    page.goto(f"{live_server}/sandbox/phone")
    page.fill("#number", HANDSET)
    page.click("#number-form button")
    expect(page).to_have_url(f"{live_server}/sandbox/phone?number=%2B14155552671")
    page.select_option("#to", "+15005550006")
    page.fill("#body", "STOP")
    page.keyboard.press("Enter")

    expect(page.locator("li.msg.in", has_text="STOP")).to_be_visible()
    expect(page.locator("li.msg.out[data-origin='twilio']")).to_contain_text("successfully been unsubscribed")
    expect(page.locator("#to option[value='+15005550006']")).to_contain_text("you opted out at Twilio")

    # Twilio blocks the sender now: the gateway's own confirmation was not sent (it would be refused),
    # the page says how to come back, and HELP is answered by Twilio alone.
    expect(page.locator("#blocked-note")).to_be_visible()
    expect(page.locator("#blocked-note")).to_contain_text("Text START, UNSTOP or YES to rejoin")
    page.fill("#body", "HELP")
    page.keyboard.press("Enter")
    expect(page.locator("li.msg.out[data-origin='twilio']")).to_have_count(2)
    expect(page.locator("li.msg.out[data-origin='twilio']").last).to_contain_text("Reply STOP to unsubscribe")
    expect(page.locator("li.msg.in", has_text="HELP").locator(".webhook")).to_contain_text("HTTP 200")
    assert page.locator("li.msg.out[data-origin='twiml']").count() == 0
    assert page.locator("li.msg.status-refused").count() == 0

    # A send Twilio refuses because of that STOP is shown as the expected refusal it is, not as an error.
    with pytest.raises(TwilioRestException) as refused:
        gateway.provider.client.messages.create(to=HANDSET, from_="+15005550006", body="Acme Deals: 20% off")
    assert refused.value.code == 21610
    refusal = page.locator("li.msg.status-refused.expected")
    expect(refusal).to_contain_text("refused by Twilio as expected: this number texted STOP to this sender")

    # START lifts the block: the note goes.
    page.fill("#body", "START")
    page.keyboard.press("Enter")
    expect(page.locator("#blocked-note")).to_be_hidden(timeout=15_000)

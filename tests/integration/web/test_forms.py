"""The hosted opt-in form: what it shows, what it records, what it refuses."""

import dataclasses
import hashlib
import html
import re

import pytest
from sqlalchemy import func, select

from gateway.domain.consent import Input, Source
from gateway.domain.numbers import parse
from gateway.services import consents
from gateway.store import consents as store_consents
from gateway.store.models import Consent, LedgerEvent, OutboundMessage, PhoneNumber
from gateway.store.programs import by_slug
from gateway.web.app import create_app

PHONE = "+14155550123"


@pytest.fixture(autouse=True)
def _fresh_limits(gateway):
    gateway.limiter.reset()


def hidden(page: str, name: str) -> str:
    return re.search(rf'name="{name}" type="hidden" value="([^"]*)"', page).group(1)


def shown_disclosure(page: str) -> str:
    """The disclosure paragraph as a reader sees it: tags dropped, entities decoded."""
    paragraph = re.search(r'<p class="disclosure" id="disclosure">(.*?)</p>', page, re.S).group(1)
    return html.unescape(re.sub(r"<[^>]+>", "", paragraph))


def shown_label(page: str) -> str:
    return html.unescape(re.search(r'<label for="consent">(.*?)</label>', page, re.S).group(1))


@pytest.fixture
def form(client):
    """fill(phone, consent=True, **overrides) → the POST response, after loading the form like a browser."""

    def fill(phone=PHONE, consent=True, slug="deals", headers=None, **overrides):
        page = client.get(f"/subscribe/{slug}").get_data(as_text=True)
        data = {"csrf_token": hidden(page, "csrf_token"), "disclosure_version": hidden(page, "disclosure_version"),
                "phone": phone, **({"consent": "y"} if consent else {}), **overrides}
        return client.post(f"/subscribe/{slug}", data={k: v for k, v in data.items() if v is not None},
                           headers=headers or {})

    return fill


def counts(db):
    with db.sessions() as session:
        return tuple(session.scalar(select(func.count()).select_from(t))
                     for t in (PhoneNumber, Consent, LedgerEvent, OutboundMessage))


def events(db):
    with db.sessions() as session:
        return session.scalars(select(LedgerEvent).order_by(LedgerEvent.id)).all()


def test_the_form_shows_the_disclosure_and_an_unticked_box(client):
    response = client.get("/subscribe/deals")
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and response.content_type.startswith("text/html")
    assert '<html lang="en">' in page
    text = shown_disclosure(page)
    for must in ("Acme Deals", "Up to 4 msgs/month", "Msg & data rates may apply", "Reply STOP to cancel",
                 "HELP for help", "Consent is not a condition of purchase", "https://acme.example/terms",
                 "https://acme.example/privacy"):
        assert must in text
    checkbox = re.search(r'<input type="checkbox"[^>]*>', page, re.S).group(0)
    assert "checked" not in checkbox and 'id="consent"' in checkbox
    assert '<label for="phone">' in page and '<label for="consent">' in page
    # Nothing loaded from elsewhere: no scripts, stylesheets, images or fonts; links are only the terms.
    assert not re.search(r"<(script|link|img|iframe)\b", page)
    assert set(re.findall(r'(?:src|href)="(https?://[^"]+)"', page)) == {
        "https://acme.example/terms", "https://acme.example/privacy"}


def test_an_unknown_program_is_a_404_page(client):
    response = client.get("/subscribe/nope")
    assert response.status_code == 404 and "Page not found" in response.get_data(as_text=True)
    assert client.post("/subscribe/nope", data={"phone": PHONE}).status_code == 404


def test_a_request_records_exactly_the_text_shown_and_asks_for_yes(client, form, db, settings):
    page = client.get("/subscribe/deals").get_data(as_text=True)
    response = form(headers={"User-Agent": "Mozilla/5.0 (X11; Linux) Firefox/140.0"})
    assert response.status_code == 303 and response.headers["Location"].endswith("/subscribe/deals/sent")
    sent = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Reply YES to that text to confirm" in sent and "+1415***0123" in sent
    assert "You are not subscribed until you reply YES" in sent
    [event] = events(db)
    evidence = event.evidence
    assert (event.type, event.input, event.source, event.status_after) == ("request", "web_request", "web", "pending")
    assert event.reference.startswith("req_")
    assert evidence["disclosure_text"] == shown_disclosure(page)
    assert evidence["consent_label"] == shown_label(page)
    version = hashlib.sha256(f"{evidence['disclosure_text']}\n{evidence['consent_label']}".encode()).hexdigest()
    assert evidence["disclosure_version"] == version == hidden(page, "disclosure_version")
    with db.sessions() as session:
        program = by_slug(session, "deals")
        message = session.scalars(select(OutboundMessage)).one()
    assert evidence["program_version"] == program.version
    assert evidence["page_url"] == settings.public_url("/subscribe/deals")
    assert (evidence["ip"], evidence["user_agent"]) == ("127.0.0.1", "Mozilla/5.0 (X11; Linux) Firefox/140.0")
    assert evidence["consent_checkbox"] == "ticked" and evidence["submitted_at"]
    assert (message.kind, message.status, message.body) == ("confirmation", "queued", evidence["confirmation_text"])


def test_the_box_must_be_ticked(form, db):
    response = form(consent=False)
    page = response.get_data(as_text=True)
    assert response.status_code == 422
    assert "Tick the box to agree to receive texts from Acme Deals" in page and 'role="alert"' in page
    assert 'value="+14155550123"' in page  # the form keeps what was typed
    assert counts(db) == (0, 0, 0, 0)


@pytest.mark.parametrize("token", [None, "forged", ""])
def test_a_post_without_a_valid_csrf_token_is_refused(form, db, token):
    response = form(csrf_token=token)
    assert response.status_code == 400
    assert "This page expired or was not sent from our form" in response.get_data(as_text=True)
    assert counts(db) == (0, 0, 0, 0)


def test_a_token_from_another_browser_session_is_refused(client, app, db):
    """A cross-site post can carry a token it saw elsewhere, but not the session it belongs to."""
    page = client.get("/subscribe/deals").get_data(as_text=True)
    stranger = app.test_client()
    response = stranger.post("/subscribe/deals", data={
        "csrf_token": hidden(page, "csrf_token"), "disclosure_version": hidden(page, "disclosure_version"),
        "phone": PHONE, "consent": "y"})
    assert response.status_code == 400
    assert counts(db) == (0, 0, 0, 0)


@pytest.mark.parametrize("phone, message", [
    ("", "a phone number is required"), ("12", "not a valid phone number"), ("+442079460000", "cannot receive text"),
    ("+16045550123", "only texts numbers in US"),
])
def test_bad_numbers_re_render_the_form_with_the_reason(form, db, phone, message):
    response = form(phone=phone)
    assert response.status_code == 422
    assert message in response.get_data(as_text=True)
    assert counts(db) == (0, 0, 0, 0)


def test_a_changed_disclosure_must_be_read_again(form, db):
    response = form(disclosure_version="0" * 64)
    assert response.status_code == 422
    assert "changed while the page was open" in response.get_data(as_text=True)
    assert counts(db) == (0, 0, 0, 0)


def test_the_sent_page_needs_a_request_first(client):
    response = client.get("/subscribe/deals/sent")
    assert response.status_code == 303 and response.headers["Location"].endswith("/subscribe/deals")


def confirmed(db, phone=PHONE):
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(phone))
        program = by_slug(session, "deals")
        consents.apply(session, row, program, Input.IMPORT_OPT_IN, consents.Evidence(Source.IMPORT))


def test_a_confirmed_number_is_not_texted_again_nor_downgraded(form, db):
    confirmed(db)
    before = counts(db)
    response = form()
    assert response.status_code == 303
    assert counts(db) == before
    with db.sessions() as session:
        assert session.scalars(select(Consent.status)).all() == ["opted_in"]


def test_an_opted_out_number_gets_the_same_page_and_no_text(client, form, db):
    """The form must not tell a stranger whether a number opted out; the page says how to rejoin."""
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(PHONE))
        consents.apply(session, row, by_slug(session, "deals"), Input.KEYWORD_STOP, consents.Evidence(Source.SMS))
    before = counts(db)
    response = form()
    assert response.status_code == 303
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Reply YES to that text to confirm" in page
    assert "text <strong>START</strong> to +15005550006, then\n    <strong>DEALS</strong>" in page
    assert counts(db) == before


def test_a_number_over_its_limit_gets_the_same_page_and_no_text(client, form, db):
    """A 429 for the number would tell a stranger that someone asked for it before."""
    for _ in range(3):
        assert form().status_code == 303
    before = counts(db)
    response = form()
    assert response.status_code == 303 and response.headers["Location"].endswith("/subscribe/deals/sent")
    assert "Reply YES to that text to confirm" in client.get(response.headers["Location"]).get_data(as_text=True)
    assert counts(db) == before


def test_the_per_client_limit_counts_every_submission_whatever_the_numbers_state(form, db, gateway, monkeypatch):
    """When 429 starts depends on how often this browser submits, not on the numbers it asks about."""
    monkeypatch.setattr(gateway, "settings",
                        dataclasses.replace(gateway.settings, confirmation_limit_per_client="3 per hour"))
    confirmed(db, "+14155550301")
    with db.transaction() as session:
        row = store_consents.number_row(session, parse("+14155550302"))
        consents.apply(session, row, by_slug(session, "deals"), Input.KEYWORD_STOP, consents.Evidence(Source.SMS))
    for phone in ("+14155550301", "+14155550302", "+14155550303"):  # subscribed, opted out, new
        assert form(phone=phone).status_code == 303
    before = counts(db)
    response = form(phone="+14155550304")
    assert response.status_code == 429 and "Too many requests" in response.get_data(as_text=True)
    assert int(response.headers["Retry-After"]) > 0
    assert counts(db) == before


def test_a_suppressed_number_gets_the_same_page_and_our_own_numbers_are_refused(client, form, db, settings):
    with db.transaction() as session:
        consents.suppress(session, settings.suppression_key, PHONE, "opted_out_then_erased")
    response = form()
    assert response.status_code == 303
    assert "Reply YES to that text to confirm" in client.get(response.headers["Location"]).get_data(as_text=True)
    assert counts(db) == (0, 0, 0, 0)
    own = form(phone="+1 500-555-0006")
    assert own.status_code == 422 and "one of our own sender numbers" in own.get_data(as_text=True)
    assert counts(db) == (0, 0, 0, 0)


def test_proxy_headers_are_not_trusted_by_default(form, db):
    """X-Forwarded-For is the client's to invent: it neither goes into the evidence nor dodges the limit."""
    for n in range(10):
        response = form(phone=f"+1415555{n + 400:04d}", headers={"X-Forwarded-For": f"203.0.113.{n}"})
        assert response.status_code == 303
    assert {e.evidence["ip"] for e in events(db)} == {"127.0.0.1"}
    response = form(phone="+14155550499", headers={"X-Forwarded-For": "203.0.113.99"})
    assert response.status_code == 429


def test_with_a_trusted_proxy_its_forwarded_address_is_recorded(settings, db):
    # Without the sandbox: its courier thread would outlive this test, polling the store.
    app = create_app(dataclasses.replace(settings, trusted_proxies=1, sandbox=False))
    try:
        client = app.test_client()
        page = client.get("/subscribe/deals").get_data(as_text=True)
        response = client.post("/subscribe/deals", headers={"X-Forwarded-For": "203.0.113.50"}, data={
            "csrf_token": hidden(page, "csrf_token"), "disclosure_version": hidden(page, "disclosure_version"),
            "phone": PHONE, "consent": "y"})
        assert response.status_code == 303
        assert [e.evidence["ip"] for e in events(db)] == ["203.0.113.50"]
    finally:
        app.extensions["gateway"].limiter.reset()
        app.extensions["gateway"].db.dispose()

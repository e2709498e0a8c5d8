"""The console's "Replies to review" in a real browser (Debian's chromium through Playwright) against the
live server: a compliance user opens it from the menu, reads the reply, resolves it with a note, and the
page says so; each page passes axe-core's accessibility rules."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from gateway.services import inbound
from gateway.store.models import Consent, LedgerEvent, Program
from tests.browser_support import browser  # noqa: F401  (a fixture)
from tests.console_support import PERSON, SENDER, make_user
from tests.e2e.test_console_browser import accessible, pages, sign_in  # noqa: F401  (a fixture)
from tests.sandbox_support import confirmed

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def test_compliance_resolves_a_reply_in_the_browser(pages, live_server, gateway, db):
    gateway.limiter.reset()
    make_user(db, "cora", "compliance")
    confirmed(db, PERSON, "alerts")
    inbound.handle(gateway, inbound.InboundText(message_sid="SM" + "e" * 32, from_=PERSON, to=SENDER,
                                                body="not interested"))
    with db.sessions() as session:
        event_id = session.scalars(select(LedgerEvent.id).where(LedgerEvent.type == "review")).one()

    page = pages()
    sign_in(page, live_server, "cora")
    page.get_by_role("link", name="Replies to review").click()
    row = page.locator(f"#review-{event_id}")
    expect(row).to_contain_text("not interested")
    expect(row).to_contain_text("+1415***0147")
    accessible(page)
    row.get_by_label("Note (optional)").fill("asked about delivery times, not about texts")
    row.get_by_role("button", name="Not a revocation").click()
    expect(page.locator("#resolved")).to_contain_text(f"Review event {event_id} was resolved as not a revocation")
    expect(page.locator("#review")).to_contain_text("No replies await review.")
    accessible(page)
    with db.sessions() as session:
        alerts = session.scalars(select(Program.id).where(Program.slug == "alerts")).one()
        assert session.scalars(select(Consent.status).where(Consent.program_id == alerts)).one() == "opted_in"
        decision = session.scalars(select(LedgerEvent).order_by(LedgerEvent.id.desc())).first()
        assert decision.evidence["note"] == "asked about delivery times, not about texts"

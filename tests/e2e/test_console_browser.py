"""The compliance console in a real browser (Debian's chromium through Playwright), against the live
server and a real worker: sign in, find a number by its national form, read the disclosure it was
shown, its YES and its STOP with their times, download the certificate (page and PDF) and the proof
bundle, which tools/verify_proof.py accepts; see why the confirmation text went out (each send
decision in plain words); a viewer sees no downloads and is refused them; every
look is in the access log. Each page passes axe-core's accessibility rules (shipped inside the
axe-playwright-python package: no network)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect
from sqlalchemy import select

from gateway.config import ROOT
from gateway.services.certificates import local_time
from gateway.store import checkpoints
from gateway.store.models import ConsoleAccess, LedgerEvent, OutboundMessage
from gateway.store.programs import by_slug
from tests.browser_support import browser  # noqa: F401  (a fixture)
from tests.conftest import wait_for
from tests.console_support import PASSWORD, PERSON, make_user, text_in, web_request
from tests.sandbox_support import quick_sandbox  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.browser, pytest.mark.e2e]
ZONE = "America/New_York"


@pytest.fixture
def pages(browser, live_server):
    """New browser contexts (one per person signing in); each must load nothing from elsewhere and
    break no rule of our Content-Security-Policy."""
    foreign, blocked, contexts = [], [], []

    def open_page():
        context = browser.new_context(accept_downloads=True)
        contexts.append(context)
        page = context.new_page()
        page.on("request", lambda request: request.url.startswith(live_server) or foreign.append(request.url))
        page.on("console", lambda message: "Content Security Policy" in message.text and blocked.append(message.text))
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert foreign == []
    assert blocked == []


AXE = Axe()


def accessible(page) -> None:
    results = AXE.run(page)
    assert results.violations_count == 0, results.generate_report()


def sign_in(page, live_server: str, name: str) -> None:
    page.goto(f"{live_server}/console")
    expect(page).to_have_url(f"{live_server}/console/login?next=/console")
    page.fill("#name", name)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    expect(page.get_by_text(f"Signed in as {name}")).to_be_visible()


def test_compliance_answers_a_complaint_in_the_browser(pages, live_server, gateway, db, twilio_post, worker_process,
                                                       quick_sandbox, tmp_path):
    gateway.limiter.reset()
    make_user(db, "ada", "admin")
    make_user(db, "vera", "viewer")
    web_request(gateway)
    # The worker sends the confirmation text through the sandbox before the person answers it.
    wait_for(lambda: _statuses(db) == ["delivered"], what="the confirmation text delivered")
    text_in(twilio_post, "YES", "SM" + "c" * 32)
    text_in(twilio_post, "STOP", "SM" + "d" * 32)
    checkpoint_log, signer = checkpoints.from_settings(gateway.settings)
    with db.snapshot() as session:
        checkpoints.take(session, checkpoint_log, signer)
    with db.transaction() as session:
        deals = by_slug(session, "deals")
        events = {row.input: row
                  for row in session.scalars(select(LedgerEvent).where(LedgerEvent.program_id == deals.id))}

    page = pages()
    page.goto(f"{live_server}/console/login")
    accessible(page)
    # A wrong password: a clear error, still signed out.
    page.fill("#name", "ada")
    page.fill("#password", "not the password")
    page.click("button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("Wrong name or password.")
    accessible(page)
    sign_in(page, live_server, "ada")
    accessible(page)

    # A malformed number: a clear error on the search page.
    page.fill("#number", "415-55")
    page.get_by_role("button", name="Find").click()
    expect(page.locator("#search-error")).to_contain_text("not a phone number we can look up")
    accessible(page)

    page.fill("#number", "(415) 555-0147")
    page.select_option("#tz", ZONE)
    page.get_by_role("button", name="Find").click()
    expect(page.locator("h1")).to_have_text(PERSON)
    timeline = page.locator("#timeline")
    request, yes, stop = events["web_request"], events["confirm_yes"], events["keyword_stop"]
    expect(timeline.locator(f"#event-{request.seq}")).to_contain_text(request.evidence["disclosure_text"])
    expect(timeline.locator(f"#event-{yes.seq}")).to_contain_text("YES")
    expect(timeline.locator(f"#event-{yes.seq}")).to_contain_text(local_time(yes.occurred_at, ZONE))
    expect(timeline.locator(f"#event-{stop.seq}")).to_contain_text("STOP")
    expect(timeline.locator(f"#event-{stop.seq}")).to_contain_text(local_time(stop.occurred_at, ZONE))
    expect(page.locator("#outbound")).to_contain_text("delivered")
    # Why the confirmation text went out: the decision that queued it and the worker's, in plain words.
    with db.transaction() as session:
        confirmation = session.scalars(select(OutboundMessage.id)).one()
    sent = page.locator(f"#message-{confirmation}")
    expect(sent.locator(".decision").first).to_contain_text("Allowed when the opt-in request queued it")
    expect(sent).to_contain_text("Allowed by the worker right before sending")
    expect(sent).to_contain_text("Consent read: pending (the request expires ")
    expect(sent).to_contain_text(f"made so by ledger event #{request.seq} (id {request.id}, hash {request.hash})")
    expect(sent).to_contain_text("Not on the suppression list.")
    accessible(page)

    # The certificate: a printable page, its PDF, and the proof bundle that anyone can check.
    page.click("#downloads >> text=Consent certificate (printable page)")
    statements = page.locator("#statements")
    expect(statements).to_contain_text("asked to receive texts from Acme Deals")
    expect(statements).to_contain_text(request.evidence["disclosure_text"])
    expect(statements).to_contain_text(local_time(yes.occurred_at, ZONE))
    expect(statements).to_contain_text("asked to stop: Acme Deals ended")
    expect(page.locator("main")).to_contain_text("tools/verify_proof.py")
    accessible(page)
    with page.expect_download() as pdf_download:
        page.click("#pdf-link")
    pdf = pdf_download.value.path().read_bytes()
    assert pdf.startswith(b"%PDF") and len(pdf) > 1000
    with page.expect_download() as bundle_download:
        page.get_by_role("link", name="Download the proof bundle").click()
    bundle_path = tmp_path / "proof.json"
    bundle_download.value.save_as(bundle_path)
    bundle = json.loads(bundle_path.read_text())
    assert bundle["number"] == PERSON and bundle["checkpoint"] is not None
    verified = subprocess.run([sys.executable, str(ROOT / "tools" / "verify_proof.py"), str(bundle_path),
                               "--public-key", signer.public_key], capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # A viewer: no downloads, no erasure; asking anyway is refused.
    viewer = pages()
    sign_in(viewer, live_server, "vera")
    viewer.fill("#number", "4155550147")
    viewer.get_by_role("button", name="Find").click()
    expect(viewer.locator("h1")).to_have_text(PERSON)
    expect(viewer.locator("#downloads")).to_have_count(0)
    expect(viewer.locator("#erase-form")).to_have_count(0)
    number_id = bundle["number_id"]
    refused = viewer.goto(f"{live_server}/console/numbers/{number_id}/export.json")
    assert refused.status == 403
    expect(viewer.locator("[role=alert]")).to_contain_text("needs the compliance role")
    accessible(viewer)

    # Every look, by whom and at which number, in the access log.
    page.get_by_role("link", name="Access log").click()
    log = page.locator("#access-log")
    expect(log).to_contain_text("vera")
    accessible(page)
    with db.transaction() as session:
        looked = [(row.user_name, row.action)
                  for row in session.scalars(select(ConsoleAccess).order_by(ConsoleAccess.id))]
    assert looked == [("ada", "view"), ("ada", "certificate"), ("ada", "certificate_pdf"), ("ada", "proof_bundle"),
                      ("vera", "view"), ("ada", "access_log")]


def _statuses(db) -> list[str]:
    with db.transaction() as session:
        return list(session.scalars(select(OutboundMessage.status)))

"""The compliance console over real HTTP through the Flask app, on the real store: sign-in, sessions,
CSRF, roles, search, a number's record, consent as of a moment, certificates, downloads, erasure and
the access log. The browser test (tests/e2e/test_console_browser.py) walks the main flow in chromium."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from gateway.services import console
from gateway.store.models import ConsoleAccess, ConsoleSession, ConsoleUser, PhoneNumber, Suppression, utcnow
from tests.console_support import PASSWORD, PERSON, USER_AGENT, csrf_of, make_user, text_in, web_request


@pytest.fixture(autouse=True)
def _fresh_limits(gateway):
    gateway.limiter.reset()


def sign_in(client, name: str, password: str = PASSWORD):
    page = client.get("/console/login")
    return client.post("/console/login", data={"name": name, "password": password,
                                               "csrf_token": csrf_of(page.get_data(as_text=True))})


@pytest.fixture
def history(gateway, twilio_post) -> int:
    """PERSON asked on the web form, confirmed with YES, stopped with STOP; returns its row id."""
    web_request(gateway)
    text_in(twilio_post, "YES", "SM" + "a" * 32)
    text_in(twilio_post, "STOP", "SM" + "b" * 32)
    with gateway.db.transaction() as session:
        return session.scalars(select(PhoneNumber.id).where(PhoneNumber.e164 == PERSON)).one()


def find(client, number: str, **fields):
    csrf = csrf_of(client.get("/console").get_data(as_text=True))
    return client.post("/console/search", data={"number": number, "csrf_token": csrf, **fields})


def log_entries(db) -> list[tuple[str, str, int | None]]:
    with db.transaction() as session:
        return [(row.user_name, row.action, row.number_id)
                for row in session.scalars(select(ConsoleAccess).order_by(ConsoleAccess.id))]


def test_console_requires_sign_in(client):
    response = client.get("/console/numbers/1")
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/console/login")


def test_sign_in_sets_a_server_side_session_cookie_and_sign_out_ends_it(client, db):
    make_user(db, "vera", "viewer")
    response = sign_in(client, "vera")
    assert response.status_code == 303
    cookie = response.headers.getlist("Set-Cookie")[-1]
    assert cookie.startswith("smsgate_console=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # the test's PUBLIC_BASE_URL is http
    token = cookie.split(";")[0].split("=", 1)[1]
    with db.transaction() as session:
        rows = session.scalars(select(ConsoleSession)).all()
        assert [row.user_id is not None for row in rows] == [True]
        assert token not in {row.id for row in rows}  # only its digest is kept
    page = client.get("/console")
    assert page.status_code == 200 and "Signed in as vera (viewer)" in page.get_data(as_text=True)
    assert page.headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    logout = client.post("/console/logout", data={"csrf_token": csrf_of(page.get_data(as_text=True))})
    assert logout.status_code == 303
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(ConsoleSession)) == 0
    assert client.get("/console").status_code == 303


def test_sign_in_gives_a_new_token(client, db):
    make_user(db, "vera", "viewer")
    before = client.get("/console/login").headers.getlist("Set-Cookie")[-1].split(";")[0]
    after = sign_in(client, "vera").headers.getlist("Set-Cookie")[-1].split(";")[0]
    assert before != after


def test_wrong_password_is_refused_and_counted_then_the_account_locks(client, db, gateway):
    make_user(db, "vera", "viewer")
    for _ in range(gateway.settings.console_max_failed_logins - 1):
        response = sign_in(client, "vera", "wrong password!")
        assert response.status_code == 401
        assert "Wrong name or password." in response.get_data(as_text=True)
    locking = sign_in(client, "vera", "wrong password!")
    assert locking.status_code == 401
    locked = sign_in(client, "vera")  # the right password, but locked now
    assert locked.status_code == 429 and "locked" in locked.get_data(as_text=True)
    assert int(locked.headers["Retry-After"]) > 0
    assert client.get("/console").status_code == 303  # not signed in
    with db.transaction() as session:
        session.execute(ConsoleUser.__table__.update().values(locked_until=utcnow() - timedelta(seconds=1)))
    assert sign_in(client, "vera").status_code == 303


def test_unknown_name_reads_as_a_wrong_password(client, db):
    response = sign_in(client, "nobody")
    assert response.status_code == 401
    assert "Wrong name or password." in response.get_data(as_text=True)


def test_sign_in_attempts_are_limited_per_address(client, db, gateway, monkeypatch):
    monkeypatch.setattr(gateway, "settings",
                        replace(gateway.settings, console_login_limit_per_client="3 per 10 minutes"))
    make_user(db, "vera", "viewer")
    assert [sign_in(client, "nobody").status_code for _ in range(3)] == [401, 401, 401]
    limited = sign_in(client, "vera")  # even the right password
    assert limited.status_code == 429 and "Too many sign-in attempts" in limited.get_data(as_text=True)
    assert client.get("/console").status_code == 303


def test_sign_in_without_csrf_is_refused(client, db):
    make_user(db, "vera", "viewer")
    client.get("/console/login")
    response = client.post("/console/login", data={"name": "vera", "password": PASSWORD})
    assert response.status_code == 400
    assert "expired" in response.get_data(as_text=True)
    assert client.get("/console").status_code == 303
    with db.transaction() as session:
        assert session.scalar(select(ConsoleUser.last_login_at)) is None


def test_search_finds_a_number_in_any_form(client, db, history):
    make_user(db, "vera", "viewer")
    sign_in(client, "vera")
    for form in ("(415) 555-0147", "+1 415 555 0147", "4155550147"):
        response = find(client, form)
        assert response.status_code == 303
        assert response.headers["Location"] == f"/console/numbers/{history}?tz=UTC"


def test_search_refuses_malformed_and_unknown_numbers_clearly(client, db, history):
    make_user(db, "vera", "viewer")
    sign_in(client, "vera")
    malformed = find(client, "12ab")
    assert malformed.status_code == 422
    assert "not a phone number we can look up" in malformed.get_data(as_text=True)
    unknown = find(client, "(415) 555-0199")
    assert unknown.status_code == 404 and "Nothing is held about that number" in unknown.get_data(as_text=True)
    no_csrf = client.post("/console/search", data={"number": "4155550147"})
    assert no_csrf.status_code == 400 and "Nothing was changed" in no_csrf.get_data(as_text=True)
    bad_zone = client.get(f"/console/numbers/{history}", query_string={"tz": "Mars/Olympus"})
    assert bad_zone.status_code == 400 and "is not one of the time zones offered" in bad_zone.get_data(as_text=True)
    assert log_entries(db) == []  # nothing personal was shown


def test_number_page_shows_texts_times_sources_and_messages(client, db, history):
    make_user(db, "vera", "viewer")
    sign_in(client, "vera")
    page = client.get(f"/console/numbers/{history}", query_string={"tz": "America/Los_Angeles"})
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert PERSON in html
    assert "To receive texts from Acme Deals" in html or "Acme Deals" in html
    assert "disclosure_text" in html and "confirmation_text" in html
    assert ">YES<" in html and ">STOP<" in html  # the person's replies, exactly
    assert "203.0.113.7" in html and USER_AGENT in html
    assert "hosted_form" in html
    assert "PST" in html or "PDT" in html  # times in the chosen zone
    assert 'id="outbound"' in html and "confirmation" in html  # the confirmation text and its status
    assert "Downloads" not in html  # a viewer downloads nothing
    assert "Erase this number" not in html
    assert log_entries(db) == [("vera", "view", history)]


def test_consent_as_of_a_moment_replays_the_events_up_to_then(client, db, history):
    make_user(db, "vera", "viewer")
    sign_in(client, "vera")
    with db.transaction() as session:
        from gateway.store.models import LedgerEvent

        times = {row.input: row.occurred_at for row in session.scalars(select(LedgerEvent))}
    between = (times["confirm_yes"] + (times["keyword_stop"] - times["confirm_yes"]) / 2)
    page = client.get(f"/console/numbers/{history}",
                      query_string={"as_of": between.replace(tzinfo=None).isoformat(), "tz": "UTC"})
    html = page.get_data(as_text=True)
    section = html[html.index('id="as-of"'):html.index("Consent now")]
    assert "Acme Deals (deals): agreed (opted in)" in section
    assert "confirm_yes" in section and "keyword_stop" not in section
    before_anything = client.get(f"/console/numbers/{history}", query_string={"as_of": "2001-01-01T00:00"})
    assert "No consent event had happened yet" in before_anything.get_data(as_text=True)
    unreadable = client.get(f"/console/numbers/{history}", query_string={"as_of": "yesterday"})
    assert unreadable.status_code == 400 and "is not a date and time" in unreadable.get_data(as_text=True)


def test_a_viewer_cannot_export_download_or_erase(client, db, history):
    make_user(db, "vera", "viewer")
    sign_in(client, "vera")
    csrf = csrf_of(client.get("/console").get_data(as_text=True))
    for path in ("certificate", "certificate.pdf", "proof.json", "export.json"):
        response = client.get(f"/console/numbers/{history}/{path}")
        assert response.status_code == 403, path
        assert "needs the compliance role" in response.get_data(as_text=True)
    erase = client.post(f"/console/numbers/{history}/erase", data={"csrf_token": csrf, "confirm": "yes"})
    assert erase.status_code == 403
    assert client.get("/console/access-log").status_code == 403
    with db.transaction() as session:
        assert session.scalar(select(PhoneNumber.e164).where(PhoneNumber.id == history)) == PERSON
    assert log_entries(db) == []


def test_compliance_downloads_certificate_pdf_bundle_and_export(client, db, history):
    make_user(db, "cora", "compliance")
    sign_in(client, "cora")
    page = client.get(f"/console/numbers/{history}/certificate", query_string={"tz": "UTC"})
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "Someone using this number on our web form asked to receive texts from Acme Deals" in html
    assert "replied to confirm: consent to Acme Deals was given" in html
    assert "asked to stop: Acme Deals ended" in html
    assert "tools/verify_proof.py" in html and "hash chain ends at event" in html
    one = client.get(f"/console/numbers/{history}/certificate", query_string={"program": "deals"})
    assert one.status_code == 200 and "Consent certificate: Acme Deals" in one.get_data(as_text=True)
    assert client.get(f"/console/numbers/{history}/certificate", query_string={"program": "nope"}).status_code == 404
    pdf = client.get(f"/console/numbers/{history}/certificate.pdf")
    assert pdf.status_code == 200 and pdf.mimetype == "application/pdf" and pdf.data.startswith(b"%PDF")
    assert PERSON.encode() not in pdf.headers["Content-Disposition"].encode()
    bundle = client.get(f"/console/numbers/{history}/proof.json")
    assert bundle.status_code == 200 and bundle.get_json()["format"] == "smsgate-proof/1"
    assert [event["input"] for event in bundle.get_json()["events"]] == [
        "web_request", "confirm_yes", "keyword_stop", "keyword_stop"]  # STOP ends both programs on the sender
    export = client.get(f"/console/numbers/{history}/export.json")
    assert export.status_code == 200 and export.get_json()["phone"] == PERSON
    assert [action for _, action, _ in log_entries(db)] == [
        "certificate", "certificate", "certificate", "certificate_pdf", "proof_bundle", "export"]
    assert client.post(f"/console/numbers/{history}/erase", data={}).status_code == 403


def test_admin_erases_with_csrf_and_confirmation_then_search_finds_the_suppression(client, db, history):
    make_user(db, "ada", "admin")
    sign_in(client, "ada")
    page = client.get(f"/console/numbers/{history}").get_data(as_text=True)
    csrf = csrf_of(page)
    missing_csrf = client.post(f"/console/numbers/{history}/erase", data={"confirm": "yes"})
    assert missing_csrf.status_code == 400 and "Nothing was changed" in missing_csrf.get_data(as_text=True)
    unconfirmed = client.post(f"/console/numbers/{history}/erase", data={"csrf_token": csrf})
    assert unconfirmed.status_code == 422
    with db.transaction() as session:
        assert session.scalar(select(PhoneNumber.e164).where(PhoneNumber.id == history)) == PERSON
    erased = client.post(f"/console/numbers/{history}/erase", data={"csrf_token": csrf, "confirm": "yes"})
    assert erased.status_code == 303
    after = client.get(f"/console/numbers/{history}").get_data(as_text=True)
    assert "Erased" in after and "is suppressed" in after and PERSON not in after
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Suppression)) == 1
        from gateway.store.models import LedgerEvent

        assert set(session.scalars(select(LedgerEvent.actor).where(LedgerEvent.type == "erasure"))) == {"console:ada"}
    found = find(client, "(415) 555-0147")
    html = found.get_data(as_text=True)
    assert found.status_code == 200 and "erased and suppressed" in html
    again = client.post(f"/console/numbers/{history}/erase", data={"csrf_token": csrf, "confirm": "yes"})
    assert again.status_code == 409
    log = client.get("/console/access-log").get_data(as_text=True)
    assert [action for _, action, _ in log_entries(db)] == [
        "view", "erase", "view", "search_suppressed", "access_log"]
    assert "ada" in log and f"erased number {history}" in log


def test_access_log_lists_every_view_with_who_and_which_number(client, db, history):
    make_user(db, "vera", "viewer")
    make_user(db, "ada", "admin")
    sign_in(client, "vera")
    client.get(f"/console/numbers/{history}")
    client.get(f"/console/numbers/{history}", query_string={"tz": "Europe/Paris"})
    client.post("/console/logout", data={"csrf_token": csrf_of(client.get("/console").get_data(as_text=True))})
    sign_in(client, "ada")
    html = client.get("/console/access-log").get_data(as_text=True)
    assert html.count(PERSON) == 2 and html.count(">vera<") == 2
    assert log_entries(db) == [("vera", "view", history), ("vera", "view", history), ("ada", "access_log", None)]


def test_unknown_number_id_is_404(client, db):
    make_user(db, "vera", "viewer")
    sign_in(client, "vera")
    assert client.get("/console/numbers/999999").status_code == 404
    assert log_entries(db) == []


def test_an_expired_session_is_refused_and_deleted(client, db, gateway):
    make_user(db, "vera", "viewer")
    sign_in(client, "vera")
    with db.transaction() as session:
        session.execute(ConsoleSession.__table__.update().values(
            last_seen_at=utcnow() - timedelta(seconds=gateway.settings.console_session_idle_seconds + 1)))
    assert client.get("/console").status_code == 303
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(ConsoleSession).where(
            ConsoleSession.user_id.is_not(None))) == 0


def test_the_timeline_shows_how_a_text_was_read_an_ambiguous_reply_too(client, gateway, twilio_post, db):
    web_request(gateway)
    text_in(twilio_post, "YES", "SM" + "c" * 32)
    text_in(twilio_post, "No thanks", "SM" + "d" * 32)  # deals: ambiguous replies opt out (the default)
    with gateway.db.transaction() as session:
        number_id = session.scalars(select(PhoneNumber.id).where(PhoneNumber.e164 == PERSON)).one()
    make_user(db, "vera", "viewer")
    sign_in(client, "vera")
    page = client.get(f"/console/numbers/{number_id}").get_data(as_text=True)
    assert "ambiguous_reply" in page and "read as: ambiguous" in page
    assert "read as: confirm" in page  # the YES before it


def test_a_disabled_accounts_live_session_stops_working(client, db):
    make_user(db, "vera", "viewer")
    sign_in(client, "vera")
    assert client.get("/console").status_code == 200
    # Even with its session rows left in place (disable_user deletes them too), the account's state is
    # read with every request.
    with db.transaction() as session:
        session.execute(ConsoleUser.__table__.update().values(disabled_at=utcnow()))
    assert client.get("/console").status_code == 303
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(ConsoleSession).where(
            ConsoleSession.user_id.is_not(None))) == 0
        session.execute(ConsoleUser.__table__.update().values(disabled_at=None))
    sign_in(client, "vera")
    with db.transaction() as session:
        assert console.disable_user(session, "vera") == 1
    assert client.get("/console").status_code == 303
    refused = sign_in(client, "vera")
    assert refused.status_code == 401 and "This account is disabled" in refused.get_data(as_text=True)


def test_sign_in_limits_are_settings(client, db, gateway, monkeypatch):
    monkeypatch.setattr(gateway, "settings", replace(gateway.settings, console_max_failed_logins=2,
                                                     console_lockout_seconds=60))
    make_user(db, "vera", "viewer")
    assert [sign_in(client, "vera", "wrong password!").status_code for _ in range(2)] == [401, 401]
    locked = sign_in(client, "vera")
    assert locked.status_code == 429 and "locked after 2 failed sign-ins" in locked.get_data(as_text=True)
    assert int(locked.headers["Retry-After"]) <= 61

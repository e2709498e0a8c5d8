"""The console's "Replies to review" over HTTP through the Flask app: every signed-in role reads the
list, compliance and admin resolve with CSRF, a viewer is refused, each reply shown and each decision is
in the access log, refusals change nothing, and the number's timeline marks the reply and its decision."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from gateway.services import inbound
from gateway.store.models import Consent, ConsoleAccess, LedgerEvent, PhoneNumber, Program
from tests.console_support import PERSON, SENDER, csrf_of, make_user
from tests.integration.web.test_console import log_entries, sign_in
from tests.sandbox_support import confirmed

MASKED = "+1415***0147"


@pytest.fixture(autouse=True)
def _fresh_limits(gateway):
    gateway.limiter.reset()


@pytest.fixture
def said_no(gateway, db) -> int:
    """PERSON, opted in to alerts (which keeps ambiguous replies for review), replied "No thanks"."""
    confirmed(db, PERSON, "alerts")
    inbound.handle(gateway, inbound.InboundText(message_sid="SM" + "c" * 32, from_=PERSON, to=SENDER,
                                                body="No thanks"))
    with db.sessions() as session:
        return session.scalars(select(LedgerEvent.id).where(LedgerEvent.type == "review")).one()


def number_id(db) -> int:
    with db.sessions() as session:
        return session.scalars(select(PhoneNumber.id).where(PhoneNumber.e164 == PERSON)).one()


def alerts_status(db) -> str:
    with db.sessions() as session:
        return session.scalars(select(Consent.status).join(Program).where(Program.slug == "alerts")).one()


def events(db) -> int:
    with db.sessions() as session:
        return session.scalar(select(func.count()).select_from(LedgerEvent))


def resolve(client, event_id: int, decision: str, **fields):
    csrf = csrf_of(client.get("/console").get_data(as_text=True))
    return client.post(f"/console/review/{event_id}", data={"as": decision, "csrf_token": csrf, **fields})


def test_a_viewer_reads_the_list_masked_and_each_reply_shown_is_logged(client, db, said_no):
    make_user(db, "vera", "viewer")
    sign_in(client, "vera")
    page = client.get("/console/review")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    row = re.search(rf'<tr id="review-{said_no}">(.*?)</tr>', html, re.S).group(1)
    for shown in (MASKED, "No thanks", "Acme Service Alerts (alerts)", ">en<", "agreed (opted in)"):
        assert shown in row, shown
    assert PERSON not in html
    assert f'href="/console/numbers/{number_id(db)}' in row
    assert "Not a revocation" not in html and "csrf_token" not in row  # no buttons for a viewer
    assert log_entries(db) == [("vera", "review_list", number_id(db))]
    with db.sessions() as session:
        assert session.scalars(select(ConsoleAccess.detail)).one() == f"review event {said_no}"
    assert 'href="/console/review"' in client.get("/console").get_data(as_text=True)  # in the menu


def test_a_viewer_may_not_resolve(client, db, said_no):
    make_user(db, "vera", "viewer")
    sign_in(client, "vera")
    before = events(db)
    response = resolve(client, said_no, "opt-out")
    assert response.status_code == 403 and "needs the compliance role" in response.get_data(as_text=True)
    assert events(db) == before and alerts_status(db) == "opted_in" and log_entries(db) == []


def test_an_empty_list_shows_no_one_and_is_not_logged(client, db):
    make_user(db, "vera", "viewer")
    sign_in(client, "vera")
    assert "No replies await review." in client.get("/console/review").get_data(as_text=True)
    assert log_entries(db) == []


def test_compliance_resolves_as_an_opt_out_logged_with_the_decision(client, db, said_no):
    make_user(db, "cora", "compliance")
    sign_in(client, "cora")
    html = client.get("/console/review").get_data(as_text=True)
    assert 'value="opt-out"' in html and 'value="not-revocation"' in html and f'id="note-{said_no}"' in html
    response = resolve(client, said_no, "opt-out", note="answered a sales text")
    assert response.status_code == 303
    assert response.headers["Location"] == f"/console/review?tz=UTC&resolved={said_no}&as=opt-out"
    after = client.get(response.headers["Location"]).get_data(as_text=True)
    assert f"Review event {said_no} was resolved as\nan opt-out." in after and "No replies await review." in after
    assert alerts_status(db) == "opted_out"
    person = number_id(db)
    with db.sessions() as session:
        event = session.scalars(select(LedgerEvent).order_by(LedgerEvent.id.desc())).first()
        assert (event.input, event.actor, event.reference) == ("review_opt_out", "console:cora", f"review:{said_no}")
        assert event.evidence["note"] == "answered a sales text" and event.evidence["via"] == "console"
        logged = session.scalars(select(ConsoleAccess).where(ConsoleAccess.action == "review_resolve")).one()
        assert (logged.user_name, logged.number_id, logged.detail) == (
            "cora", person, f"review event {said_no} as opt-out")


def test_refusals_say_why_and_change_nothing(client, db, said_no):
    make_user(db, "ada", "admin")
    sign_in(client, "ada")
    with db.sessions() as session:
        not_a_review = session.scalars(select(LedgerEvent.id).where(LedgerEvent.type == "confirmation")).first()
    before = events(db)
    no_csrf = client.post(f"/console/review/{said_no}", data={"as": "opt-out"})
    assert no_csrf.status_code == 400 and "Nothing was changed" in no_csrf.get_data(as_text=True)
    for event_id, decision, status, words in [
        (999_999, "opt-out", 404, "There is no ledger event 999999. Nothing was changed."),
        (not_a_review, "opt-out", 404, f"Event {not_a_review} is a &#39;confirmation&#39; event"),
        (said_no, "maybe", 422, "not &#39;maybe&#39;. Nothing was changed."),
        (said_no, "", 422, "A reply is resolved as"),
    ]:
        response = resolve(client, event_id, decision)
        assert response.status_code == status and words in response.get_data(as_text=True), (event_id, decision)
    assert events(db) == before and alerts_status(db) == "opted_in"
    assert resolve(client, said_no, "not-revocation").status_code == 303
    settled = resolve(client, said_no, "opt-out")
    assert settled.status_code == 409
    assert "was resolved already, as not a revocation, by console:ada" in settled.get_data(as_text=True)
    assert alerts_status(db) == "opted_in"
    assert [action for _, action, _ in log_entries(db)] == ["review_resolve"]  # the refusals left no entry
    assert client.get("/console/review?program=nope").status_code == 404
    assert client.get("/console/review?before=abc").status_code == 400


def test_the_timeline_marks_a_reply_awaiting_review_and_its_decision(client, db, said_no):
    make_user(db, "cora", "compliance")
    sign_in(client, "cora")
    page = f"/console/numbers/{number_id(db)}"
    html = client.get(page).get_data(as_text=True)
    assert f"awaiting review (event {said_no})" in html and "read as: ambiguous" in html
    with db.sessions() as session:
        seq = session.get(LedgerEvent, said_no).seq
    assert resolve(client, said_no, "not-revocation").status_code == 303
    html = client.get(page).get_data(as_text=True)
    assert "awaiting review" not in html
    decision = re.search(rf'<tr id="event-{seq + 1}">(.*?)</tr>', html, re.S).group(1)
    assert "review_not_revocation" in decision and f"resolves the reply of #{seq}" in decision
    assert "by console:cora" in decision

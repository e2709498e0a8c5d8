"""The review list on the real store: "no thanks" to alerts (ambiguous_replies = "review") is listed until
staff resolve it (as an opt-out through the one consent write path, or as not a revocation) or the person's
later STOP, YES or an erasure settles it. Refusals change nothing."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from gateway.domain.consent import Input, Source
from gateway.domain.gate import ALLOW, Decision, Kind, Reason
from gateway.domain.numbers import parse
from gateway.services import consents, inbound, privacy, review
from gateway.store import consents as store_consents
from gateway.store import ledger, outbox, programs
from gateway.store.models import Consent, LedgerEvent, OutboundMessage, PhoneNumber, Program, utcnow
from tests.sandbox_support import confirmed

PERSON = "+14155550190"
OTHER = "+14155550191"
SENDER = "+15005550006"  # deals (ambiguous replies opt out) and alerts (kept for review)
_sids = itertools.count(1)


def text(gateway, body: str, sender: str = PERSON, now=None):
    return inbound.handle(gateway, inbound.InboundText(message_sid=f"SM{next(_sids):032x}", from_=sender, to=SENDER,
                                                       body=body), now=now)


def listed(db, **options) -> review.Page:
    with db.transaction() as session:
        return review.pending(session, **options)


def review_ids(db, phone: str = PERSON) -> list[int]:
    with db.sessions() as session:
        return list(session.scalars(select(LedgerEvent.id).join(PhoneNumber).where(
            PhoneNumber.e164 == phone, LedgerEvent.type == "review").order_by(LedgerEvent.id)))


def alerts_status(db, phone: str = PERSON) -> str | None:
    with db.sessions() as session:
        return session.scalar(select(Consent.status).join(PhoneNumber).join(Program)
                              .where(PhoneNumber.e164 == phone, Program.slug == "alerts"))


def event_count(db) -> int:
    with db.sessions() as session:
        return session.scalar(select(func.count()).select_from(LedgerEvent))


def chains_verify(db) -> None:
    with db.snapshot() as session:
        assert list(ledger.verify(session)) == []


@pytest.fixture
def said_no(gateway, db) -> int:
    """PERSON, opted in to alerts, replied "No thanks": the review event's id."""
    confirmed(db, PERSON, "alerts")
    text(gateway, "No thanks")
    [event_id] = review_ids(db)
    return event_id


def test_a_reply_kept_for_review_is_listed_with_what_staff_need(db, said_no):
    page = listed(db)
    [item] = page.items
    assert (item.event_id, item.number, item.program, item.program_name) == (said_no, "+1415***0190", "alerts",
                                                                           "Acme Service Alerts")
    assert (item.text, item.language, item.consent) == ("No thanks", "en", "opted_in")
    assert PERSON not in repr(item)  # the list shows the number masked only
    assert page.older is None


def test_newest_first_paged_and_by_program(gateway, db, said_no):
    confirmed(db, OTHER, "alerts")
    text(gateway, "not interested", sender=OTHER)
    [newer] = review_ids(db, OTHER)
    first = listed(db, limit=1)
    assert [item.event_id for item in first.items] == [newer] and first.older == newer
    second = listed(db, limit=1, before=first.older)
    assert [item.event_id for item in second.items] == [said_no] and second.older is None
    assert [item.event_id for item in listed(db, program="alerts").items] == [newer, said_no]
    assert listed(db, program="deals").items == []  # deals opts out on "no thanks": nothing to review


def test_resolving_as_an_opt_out_ends_the_consent_through_the_one_write_path(gateway, db, said_no):
    # Waiting for PERSON: an alerts text queued, another deferred; both must be blocked by the opt-out.
    now = utcnow()
    with db.transaction() as session:
        number = store_consents.find_number(session, PERSON)
        alerts = programs.by_slug(session, "alerts")
        waiting = [outbox.accept(session, number=number, program=alerts, kind=Kind.INFORMATIONAL,
                                 body=f"alert {n}", decision=decision, now=now).id
                   for n, decision in enumerate([ALLOW, Decision(False, Reason.QUIET_HOURS, now + timedelta(hours=9))])]
    done = review.resolve(gateway, said_no, "opt-out", by="alice", via="cli", note="reply to a sales text")
    assert (done.decision, done.program, done.number, done.status_after) == (
        review.Resolution.OPT_OUT, "alerts", "+1415***0190", "opted_out")
    assert alerts_status(db) == "opted_out"
    with db.sessions() as session:
        event = session.scalars(select(LedgerEvent).order_by(LedgerEvent.id.desc()).limit(1)).one()
        assert (event.type, event.input, event.seq, event.source, event.actor, event.reference) == (
            "opt_out", "review_opt_out", done.seq, "system", "cli:alice", f"review:{said_no}")
        review_event = session.get(LedgerEvent, said_no)
        assert event.evidence == {"review_event": said_no, "review_seq": review_event.seq, "decision": "opt-out",
                                  "via": "cli", "body": "No thanks", "language": "en", "to": SENDER,
                                  "note": "reply to a sales text"}
        assert {session.get(OutboundMessage, message_id).status for message_id in waiting} == {"blocked"}
        assert {session.get(OutboundMessage, message_id).reason for message_id in waiting} == {"opted_out"}
    assert listed(db).items == []
    chains_verify(db)  # the opt-out replays through the state machine like any other
    text(gateway, "START")  # and START restores it, as after STOP
    assert alerts_status(db) == "opted_in"


def test_resolving_as_not_a_revocation_keeps_the_consent_and_records_who_decided(gateway, db, said_no):
    done = review.resolve(gateway, said_no, review.Resolution.NOT_REVOCATION, by="bob", via="console")
    assert done.status_after is None and alerts_status(db) == "opted_in"
    with db.sessions() as session:
        event = session.scalars(select(LedgerEvent).order_by(LedgerEvent.id.desc()).limit(1)).one()
        assert (event.type, event.input, event.status_before, event.status_after, event.actor, event.reference) == (
            "review_not_revocation", "review_not_revocation", None, None, "console:bob", f"review:{said_no}")
        assert event.evidence["decision"] == "not-revocation" and "note" not in event.evidence
    assert listed(db).items == []
    chains_verify(db)


@pytest.mark.parametrize("first", ["opt-out", "not-revocation"])
def test_resolving_twice_is_refused_and_changes_nothing(gateway, db, said_no, first):
    review.resolve(gateway, said_no, first, by="alice", via="cli")
    before, status = event_count(db), alerts_status(db)
    for again in ("opt-out", "not-revocation"):
        with pytest.raises(review.ReviewError) as refused:
            review.resolve(gateway, said_no, again, by="bob", via="cli")
        assert refused.value.code == "settled"
        read = "an opt-out" if first == "opt-out" else "not a revocation"
        assert refused.value.message.startswith(f"review event {said_no} was resolved already, as {read}, by cli:alice")
    assert (event_count(db), alerts_status(db)) == (before, status)


def test_a_later_stop_settles_the_reply_and_resolving_it_is_refused(gateway, db, said_no):
    text(gateway, "STOP")
    assert listed(db).items == []
    before = event_count(db)
    with pytest.raises(review.ReviewError) as refused:
        review.resolve(gateway, said_no, "not-revocation", by="alice", via="cli")
    assert refused.value.code == "settled" and "the consent ended (keyword_stop)" in refused.value.message
    assert event_count(db) == before and alerts_status(db) == "opted_out"


def test_a_later_yes_settles_a_no_said_while_asked(gateway, db):
    now = utcnow()
    with db.transaction() as session:  # asked, not confirmed yet
        row = store_consents.number_row(session, parse(PERSON))
        consents.apply(session, row, programs.by_slug(session, "alerts"), Input.API_REQUEST,
                       consents.Evidence(Source.API), now=now, expires_at=now + timedelta(hours=48))
    text(gateway, "no")
    [event_id] = review_ids(db)
    assert [item.consent for item in listed(db).items] == ["pending"]
    text(gateway, "YES")  # they changed their mind: the newer word wins
    assert listed(db).items == [] and alerts_status(db) == "opted_in"
    with pytest.raises(review.ReviewError) as refused:
        review.resolve(gateway, event_id, "opt-out", by="alice", via="cli")
    assert "the person opted in again (confirm_yes)" in refused.value.message
    assert alerts_status(db) == "opted_in"


def test_each_no_is_listed_and_an_opt_out_on_the_newer_settles_the_older(gateway, db, said_no):
    text(gateway, "nope")
    older, newer = review_ids(db)
    assert older == said_no and [item.event_id for item in listed(db).items] == [newer, older]
    review.resolve(gateway, newer, "not-revocation", by="alice", via="cli")
    assert [item.event_id for item in listed(db).items] == [older]  # read for itself, not settled by the other
    text(gateway, "no thanks")
    newest = review_ids(db)[-1]
    review.resolve(gateway, newest, "opt-out", by="alice", via="cli")
    assert listed(db).items == []  # the consent ended: nothing is left to revoke
    with pytest.raises(review.ReviewError, match=r"the consent ended \(review_opt_out\)"):
        review.resolve(gateway, older, "opt-out", by="alice", via="cli")


def test_an_erasure_settles_every_reply_of_the_number(gateway, db, said_no):
    with db.transaction() as session:
        privacy.erase(session, store_consents.find_number(session, PERSON), gateway.settings.suppression_key,
                      consents.Evidence(Source.API, actor="dpo"))
    assert listed(db).items == []
    with pytest.raises(review.ReviewError, match="the number was erased"):
        review.resolve(gateway, said_no, "opt-out", by="alice", via="cli")


def test_bad_input_is_a_clear_error_and_changes_nothing(gateway, db, said_no):
    with db.sessions() as session:
        not_a_review = session.scalars(select(LedgerEvent.id).where(LedgerEvent.type == "confirmation")).first()
    before = event_count(db)
    cases = [
        ((999_999, "opt-out"), {}, "unknown_event", "there is no ledger event 999999"),
        ((not_a_review, "opt-out"), {}, "not_a_review", f"event {not_a_review} is a 'confirmation' event"),
        ((said_no, "maybe"), {}, "bad_decision", "a reply is resolved as 'opt-out' or 'not-revocation', not 'maybe'"),
        ((said_no, "opt-out"), {"by": "  "}, "bad_name", "say who decided"),
        ((said_no, "opt-out"), {"by": "a\x00b"}, "bad_name", "say who decided"),
        ((said_no, "opt-out"), {"by": "x" * 101}, "bad_name", "say who decided"),
        ((said_no, "opt-out"), {"note": "a\x00b"}, "bad_note", "a note is at most 500 characters"),
        ((said_no, "opt-out"), {"note": "n" * 501}, "bad_note", "a note is at most 500 characters"),
    ]
    for args, options, code, words in cases:
        with pytest.raises(review.ReviewError) as refused:
            review.resolve(gateway, *args, **{"by": "alice", "via": "cli", **options})
        assert refused.value.code == code and refused.value.message.startswith(words), (args, options)
    assert event_count(db) == before and alerts_status(db) == "opted_in"
    assert [item.event_id for item in listed(db).items] == [said_no]
    for options, code in (({"program": "nope"}, "unknown_program"), ({"limit": 0}, "bad_limit"),
                          ({"limit": review.MAX_PAGE + 1}, "bad_limit")):
        with pytest.raises(review.ReviewError) as refused:
            listed(db, **options)
        assert refused.value.code == code

"""Through the signed SMS webhook: an ambiguous reply ("no thanks") does what each program says,
ambiguous_replies = "opt_out" (deals, the default) or "review" (alerts), and its evidence names the class."""

import itertools
from xml.sax.saxutils import unescape

from sqlalchemy import select

from gateway.store.models import Consent, InboundMessage, LedgerEvent, Program
from tests.sandbox_support import confirmed

SMS = "/webhooks/twilio/sms"
SHARED_SENDER = "+15005550006"  # deals (ambiguous_replies: the default, opt_out) and alerts ("review")
ORDERS_SENDER = "+18885550199"  # orders: the default
PERSON = "+14155552671"
_sids = itertools.count(1)


def form(body, to=SHARED_SENDER):
    return {"MessageSid": f"SM{next(_sids):032x}", "AccountSid": "AC" + "1" * 32, "From": PERSON,
            "To": to, "Body": body, "NumMedia": "0"}


def consents_of(db):
    with db.sessions() as session:
        rows = session.execute(select(Program.slug, Consent.status).join(Consent, Consent.program_id == Program.id))
        return dict(rows.all())


def events_of(db):
    """The ledger events our webhook wrote (not the opt-in that `confirmed` set up), in chain order."""
    with db.sessions() as session:
        rows = session.execute(select(LedgerEvent, Program.slug)
                               .outerjoin(Program, Program.id == LedgerEvent.program_id)
                               .where(LedgerEvent.reference.like("SM%")).order_by(LedgerEvent.seq))
        return [(event.type, event.input, slug, event.evidence) for event, slug in rows]


def reply_of(response) -> str:
    assert response.status_code == 200
    return unescape(response.data.decode().partition("<Message>")[2].partition("</Message>")[0])


def test_no_thanks_opts_out_where_the_program_says_so_and_is_kept_for_review_where_it_says_review(twilio_post, db):
    confirmed(db, PERSON, "deals", "alerts")
    params = form("No thanks")
    response = twilio_post(SMS, params)
    # deals ended (and START may restore it, as after STOP); alerts kept; the reply names only what ended.
    assert reply_of(response) == ("Acme Deals: you're unsubscribed and will get no more messages. "
                                  "Reply START to resubscribe.")
    assert consents_of(db) == {"deals": "opted_out", "alerts": "opted_in"}
    recorded = events_of(db)
    assert [(kind, input_, slug) for kind, input_, slug, _ in recorded] == [
        ("opt_out", "ambiguous_reply", "deals"), ("review", "review", "alerts")]
    assert {evidence["class"] for *_, evidence in recorded} == {"ambiguous"}
    assert {evidence["body"] for *_, evidence in recorded} == {"No thanks"}
    with db.sessions() as session:
        assert session.scalars(select(InboundMessage.intent)).one() == "ambiguous"

    again = twilio_post(SMS, params)  # Twilio's retry: the first answer, nothing recorded twice
    assert again.data == response.data
    assert len(events_of(db)) == 2

    start = twilio_post(SMS, form("START"))
    assert "Acme Deals" in reply_of(start)
    assert consents_of(db) == {"deals": "opted_in", "alerts": "opted_in"}


def test_on_a_sender_whose_programs_all_review_nothing_ends_and_nothing_is_said(twilio_post, db):
    confirmed(db, PERSON, "alerts")
    with db.sessions() as session:  # alerts alone on its sender for this test: deals moves elsewhere
        deals = session.scalars(select(Program).where(Program.slug == "deals")).one()
        deals.sender = "+15005550009"
        session.commit()
    response = twilio_post(SMS, form("not interested"))
    assert reply_of(response) == ""
    assert consents_of(db) == {"alerts": "opted_in"}
    assert [(kind, slug) for kind, _, slug, _ in events_of(db)] == [("review", "alerts")]


def test_the_default_opts_out_and_a_clear_request_beside_no_is_never_ambiguous(twilio_post, db):
    confirmed(db, PERSON, "orders", "alerts")
    assert "unsubscribed" in reply_of(twilio_post(SMS, form("nope", to=ORDERS_SENDER)))
    assert consents_of(db)["orders"] == "opted_out"
    # alerts reviews an ambiguous reply, but "No thanks, stop texting me" is a revocation: it binds.
    twilio_post(SMS, form("No thanks, stop texting me"))
    assert consents_of(db)["alerts"] == "opted_out"
    assert [evidence["class"] for kind, _, slug, evidence in events_of(db) if slug == "alerts"] == ["opt_out"]


def test_an_ordinary_no_inside_a_sentence_changes_nothing(twilio_post, db):
    confirmed(db, PERSON, "deals")
    twilio_post(SMS, form("No, I'll be there at 8"))
    assert consents_of(db) == {"deals": "opted_in"}

"""Through the SMS webhook: a wrong-number reply ends every consent of the number, and replies go out in
the language the person wrote in where the program has the text in it."""

import itertools
from xml.sax.saxutils import unescape

import pytest
from sqlalchemy import select

from gateway.store.models import Consent, InboundMessage, LedgerEvent, PhoneNumber, Program
from tests.sandbox_support import confirmed

SMS = "/webhooks/twilio/sms"
SHARED_SENDER = "+15005550006"  # deals (which has German and Chinese texts) and alerts
ORDERS_SENDER = "+18885550199"  # orders: English only
PERSON = "+14155552671"
_sids = itertools.count(1)


def form(body, to=SHARED_SENDER, sid=None):
    return {"MessageSid": sid or f"SM{next(_sids):032x}", "AccountSid": "AC" + "1" * 32, "From": PERSON,
            "To": to, "Body": body, "NumMedia": "0"}


def consents_of(db):
    with db.sessions() as session:
        rows = session.execute(select(Program.slug, Consent.status, Consent.restorable)
                               .join(Consent, Consent.program_id == Program.id))
        return {slug: (status, restorable) for slug, status, restorable in rows}


def events(db, input_value):
    with db.sessions() as session:
        return session.scalars(select(LedgerEvent).where(LedgerEvent.input == input_value)).all()


def reply_of(response) -> str:
    assert response.status_code == 200
    body = response.data.decode()
    assert body.count("<Message>") <= 1
    return unescape(body.partition("<Message>")[2].partition("</Message>")[0])


def test_a_wrong_number_ends_every_consent_on_every_sender_and_is_answered_once(twilio_post, db):
    confirmed(db, PERSON, "deals", "alerts", "orders")
    params = form("Wrong number, sorry")
    response = twilio_post(SMS, params)
    assert reply_of(response) == ("Acme Deals & Acme Service Alerts: thanks for telling us. This number is off "
                                  "our lists and will get no more messages.")
    # Orders is on another sender: ended too, and none can be restored (the consent was someone else's).
    assert consents_of(db) == {slug: ("opted_out", False) for slug in ("deals", "alerts", "orders")}
    ended = events(db, "wrong_number")
    assert len(ended) == 3
    assert {(e.type, e.source, e.reference, e.evidence["body"]) for e in ended} == {
        ("opt_out", "sms", params["MessageSid"], "Wrong number, sorry")}
    assert {e.evidence["language"] for e in ended} == {"en"}
    with db.sessions() as session:
        number = session.scalars(select(PhoneNumber)).one()
        assert number.possibly_reassigned_at is not None
        assert session.scalars(select(InboundMessage.intent)).one() == "wrong_number"

    again = twilio_post(SMS, params)  # Twilio's retry of the same text: the first answer, nothing new
    assert again.data == response.data
    assert len(events(db, "wrong_number")) == 3

    start = twilio_post(SMS, form("START"))  # the number's new holder restores nothing of the old one's
    assert reply_of(start) == ""
    assert consents_of(db) == {slug: ("opted_out", False) for slug in ("deals", "alerts", "orders")}


def test_a_wrong_number_in_chinese_is_answered_in_the_programs_chinese(twilio_post, db):
    confirmed(db, PERSON, "deals", "orders")
    response = twilio_post(SMS, form("你好，你发错人了"))
    assert reply_of(response) == "Acme Deals：谢谢告知。此号码不会再收到我们的短信。"
    assert {status for status, _ in consents_of(db).values()} == {"opted_out"}
    assert {e.evidence["language"] for e in events(db, "wrong_number")} == {"zh-Hans"}


@pytest.mark.parametrize(("body", "reply"), [
    ("Abmelden", "Acme Deals: Sie sind abgemeldet und erhalten keine Nachrichten mehr. Antworten Sie START zum "
                 "Anmelden."),
    ("Bitte keine SMS mehr", "Acme Deals: Sie sind abgemeldet und erhalten keine Nachrichten mehr. Antworten Sie "
                             "START zum Anmelden."),
    ("退订", "Acme Deals：您已退订，不会再收到我们的短信。回复 START 重新订阅。"),
    # zh-Hant, served by the program's "zh" texts
    ("請不要再傳簡訊給我", "Acme Deals：您已退订，不会再收到我们的短信。回复 START 重新订阅。"),
])
def test_a_revocation_is_confirmed_in_the_persons_language_where_the_program_has_it(twilio_post, db, body, reply):
    confirmed(db, PERSON, "deals", "alerts")
    assert reply_of(twilio_post(SMS, form(body))) == reply
    assert consents_of(db) == {"deals": ("opted_out", True), "alerts": ("opted_out", True)}


def test_a_revocation_in_a_language_the_program_lacks_is_confirmed_in_the_programs_language(twilio_post, db):
    confirmed(db, PERSON, "orders")
    response = twilio_post(SMS, form("Bitte keine SMS mehr", to=ORDERS_SENDER))
    assert reply_of(response) == ("Acme Orders: you're unsubscribed and will get no more messages. "
                                  "Reply START to resubscribe.")
    polish = twilio_post(SMS, form("Nie wysyłajcie mi więcej SMS"))  # deals has no Polish either
    assert "you're unsubscribed" in reply_of(polish)


def test_help_in_german_gets_the_programs_german_help(twilio_post, db):
    response = twilio_post(SMS, form("Hilfe"))
    assert reply_of(response) == ("Acme Deals: Hilfe unter acme.example/help oder 1-800-555-0100. Antworten Sie "
                                  "STOP zum Abmelden.")
    assert len(events(db, "help")) == 1


def test_an_emoji_stop_opts_out(twilio_post, db):
    confirmed(db, PERSON, "deals")
    response = twilio_post(SMS, form("✋🏽"))
    assert "you're unsubscribed" in reply_of(response)
    assert consents_of(db)["deals"] == ("opted_out", True)

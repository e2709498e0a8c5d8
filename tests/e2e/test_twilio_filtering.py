"""In step with Twilio's own opt-out filtering, end to end: the phone texts through the sandbox (which
filters as the sender's `opt_out_handling` says), the sandbox posts to our webhook over real HTTP,
our TwiML replies go back through the sandbox, and the real worker sends what is queued.

What the person sees is checked in the sandbox's log: no text of ours is ever refused by Twilio
(no SandboxRefusal), and they are never told "re-subscribed" while the gateway keeps them out.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from gateway.domain.consent import Input, Source
from gateway.domain.numbers import parse
from gateway.domain.programs import DEFAULT_TEMPLATES, ProgramSpec
from gateway.domain.twilio_filter import TWILIO_REPLIES, Reaction
from gateway.services import consents
from gateway.store import consents as store_consents
from gateway.store import programs
from gateway.store.models import Consent, LedgerEvent, OutboundMessage, PhoneNumber, Program
from gateway.twilio.sandbox.models import SandboxEvent, SandboxMessage, SandboxOptOut, SandboxRefusal
from tests.conftest import wait_for
from tests.sandbox_support import instant_sandbox, opt_in, phone_text, queue, sandbox_config  # noqa: F401

pytestmark = pytest.mark.e2e

PHONE = "+14155550177"
SENDER = "+15005550006"  # deals and alerts, Twilio's default filtering
UNFILTERED = "+15005550007"  # a sender whose opt-out handling is off at Twilio (a test program below)
SERVICE = "MG" + "ab" * 16  # a Messaging Service with Advanced Opt-Out (a test program below)
SERVICE_NUMBER = "+15005550010"


@pytest.fixture(autouse=True)
def _settle(db):
    """Leave nothing in flight for the next test."""
    yield

    def settled():
        with db.sessions() as session:
            return not session.scalar(select(func.count()).select_from(OutboundMessage).where(
                OutboundMessage.status.in_(("queued", "sending", "sent")))) \
                and not session.scalar(select(func.count()).select_from(SandboxEvent).where(
                    SandboxEvent.state != "done"))

    wait_for(settled)


def text(live_server, db, body: str, to: str = SENDER, phone: str = PHONE) -> str:
    """Text `body` from the phone page and wait until the gateway answered and every reply arrived."""
    response = phone_text(live_server, phone, to, body)
    assert response.status_code == 201, response.text
    sid = response.json()["sid"]

    def answered():
        with db.sessions() as session:
            message = session.get(SandboxMessage, sid)
            pending = session.scalar(select(func.count()).select_from(SandboxEvent).where(SandboxEvent.state != "done"))
            return message.webhook_status is not None and not pending

    wait_for(answered, what=f"the gateway answered {body!r} and its replies arrived")
    assert _webhook_status(db, sid) == 200
    return sid


def _webhook_status(db, sid: str) -> int | None:
    with db.sessions() as session:
        return session.get(SandboxMessage, sid).webhook_status


def received(db, phone: str = PHONE) -> list[tuple[str, str, str]]:
    """(origin, body, status) of each text the phone got, oldest first: ours (twiml, api) and Twilio's."""
    with db.sessions() as session:
        return [(m.origin, m.body, m.status) for m in session.scalars(
            select(SandboxMessage).where(SandboxMessage.handset == phone, SandboxMessage.direction != "inbound")
            .order_by(SandboxMessage.date_created))]


def refused(db, phone: str = PHONE) -> list[tuple[int, str]]:
    with db.sessions() as session:
        return [(r.error_code, r.body) for r in session.scalars(
            select(SandboxRefusal).where(SandboxRefusal.handset == phone))]


def statuses(db, phone: str = PHONE) -> dict[str, str]:
    with db.sessions() as session:
        return dict(session.execute(
            select(Program.slug, Consent.status).join(Consent, Consent.program_id == Program.id)
            .join(PhoneNumber, PhoneNumber.id == Consent.number_id).where(PhoneNumber.e164 == phone)).all())


def blocks(db, phone: str = PHONE) -> str:
    with db.sessions() as session:
        return session.scalar(select(PhoneNumber.twilio_blocks).where(PhoneNumber.e164 == phone))


def ledger(db, phone: str = PHONE) -> list[tuple[str, str | None, str | None]]:
    """(type, program, reference) of the number's ledger events, in order."""
    with db.sessions() as session:
        return [tuple(row) for row in session.execute(
            select(LedgerEvent.type, Program.slug, LedgerEvent.reference)
            .outerjoin(Program, Program.id == LedgerEvent.program_id)
            .join(PhoneNumber, PhoneNumber.id == LedgerEvent.number_id)
            .where(PhoneNumber.e164 == phone).order_by(LedgerEvent.seq))]


def ours(db, phone: str = PHONE) -> list[str]:
    return [body for origin, body, _ in received(db, phone) if origin in ("twiml", "api")]


def twilios(db, phone: str = PHONE) -> list[str]:
    return [body for origin, body, _ in received(db, phone) if origin == "twilio"]


def add_program(db, slug: str, **definition) -> None:
    spec = ProgramSpec(slug=slug, name=definition.pop("name"), category="informational", frequency="Weekly",
                       help=f"{slug}: help at acme.example/help. Reply STOP to cancel.",
                       templates=dict(DEFAULT_TEMPLATES), **definition)
    with db.transaction() as session:
        programs.store(session, [spec])


def test_stop_then_deals_then_yes_ends_subscribed_with_nothing_refused(live_server, db, gateway, instant_sandbox):
    opt_in(db, PHONE, "alerts")
    text(live_server, db, "STOP")
    # Twilio confirmed the STOP itself and blocks the sender: our own confirmation would have been refused.
    assert twilios(db) == [TWILIO_REPLIES[Reaction.BLOCK]] and ours(db) == []
    assert statuses(db) == {"deals": "opted_out", "alerts": "opted_out"}
    assert blocks(db) == SENDER

    # DEALS while blocked: the request is recorded, but no confirmation text is sent (Twilio would refuse it).
    text(live_server, db, "DEALS")
    assert statuses(db)["deals"] == "pending"
    with db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(OutboundMessage)) == 0
        request = session.scalars(select(LedgerEvent).where(LedgerEvent.type == "request")).one()
        assert "YES, START or UNSTOP" in request.evidence["confirmation_not_sent"]

    # YES lifts Twilio's block ("re-subscribed"): the gateway makes it true, with this text as evidence.
    yes = text(live_server, db, "YES")
    assert statuses(db) == {"deals": "opted_in", "alerts": "opted_in"}
    assert blocks(db) == ""
    assert twilios(db) == [TWILIO_REPLIES[Reaction.BLOCK], TWILIO_REPLIES[Reaction.UNBLOCK]]
    [welcome] = ours(db)
    assert "Acme Deals" in welcome and "Acme Service Alerts" in welcome  # our reply names what they have now
    assert ("confirmation", "deals", yes) in ledger(db) and ("opt_in", "alerts", yes) in ledger(db)
    assert refused(db) == []
    assert all(status == "delivered" for _, _, status in received(db))


def test_start_restores_exactly_what_was_confirmed_before_both_programs(live_server, db, gateway, instant_sandbox):
    opt_in(db, PHONE, "deals", "alerts")
    text(live_server, db, "STOP")
    text(live_server, db, "DEALS")  # the bug: this used to lose deals' "confirmed before" mark
    start = text(live_server, db, "START")
    assert statuses(db) == {"deals": "opted_in", "alerts": "opted_in"}
    assert [event for event in ledger(db) if event[2] == start] == [("opt_in", "alerts", start),
                                                                     ("confirmation", "deals", start)]
    # The orders program (another sender) was never asked, and START on this sender does not touch it.
    assert "orders" not in statuses(db)
    assert refused(db) == []


def test_twilio_default_no_stop_confirmation_and_no_help_reply_while_blocked(live_server, db, gateway,
                                                                              instant_sandbox):
    opt_in(db, PHONE, "alerts")
    text(live_server, db, "HELP")  # not blocked: Twilio's own answer, and ours with the program's HELP text
    help_text = "Acme Alerts: outages and service notices."
    assert any(body.startswith(help_text) for body in ours(db))
    text(live_server, db, "STOP")
    text(live_server, db, "HELP")  # blocked: Twilio answers HELP itself; ours would be refused
    assert len([body for body in ours(db) if body.startswith(help_text)]) == 1
    assert twilios(db) == [TWILIO_REPLIES[Reaction.HELP], TWILIO_REPLIES[Reaction.BLOCK], TWILIO_REPLIES[Reaction.HELP]]
    assert not any("unsubscribed and will get no more" in body for body in ours(db))
    assert [event[0] for event in ledger(db)].count("help") == 2  # both HELPs are recorded all the same
    assert refused(db) == []


def test_with_no_filtering_at_twilio_our_replies_are_the_ones_sent(live_server, db, gateway, instant_sandbox):
    add_program(db, "news", name="Acme News", sender=UNFILTERED, opt_out_handling="none")
    opt_in(db, PHONE, "news")
    text(live_server, db, "STOP", to=UNFILTERED)
    assert statuses(db) == {"news": "opted_out"}
    assert twilios(db) == [] and blocks(db) == ""  # Twilio filters nothing here: the gateway keeps the list
    assert ours(db) == ["Acme News: you're unsubscribed and will get no more messages. Reply START to resubscribe."]
    text(live_server, db, "HELP", to=UNFILTERED)
    assert ours(db)[-1] == "news: help at acme.example/help. Reply STOP to cancel."
    text(live_server, db, "START", to=UNFILTERED)
    assert statuses(db) == {"news": "opted_in"}
    assert ours(db)[-1].startswith("Acme News: you're resubscribed")
    assert twilios(db) == [] and refused(db) == []


def test_with_advanced_opt_out_its_configured_keywords_drive_the_block(app, live_server, db, gateway,
                                                                        instant_sandbox):
    add_program(db, "club", name="Acme Club", messaging_service=SERVICE, join_keywords=("CLUB",),
                opt_out_handling="twilio_advanced", twilio_opt_out_keywords=("STOP", "ALTO"),
                twilio_opt_in_keywords=("START", "CLUB"), service_numbers=(SERVICE_NUMBER,))
    with sandbox_config(app, messaging_services={SERVICE: (SERVICE_NUMBER,)}):
        opt_in(db, PHONE, "club")
        text(live_server, db, "CANCEL", to=SERVICE_NUMBER)  # removed from this service's opt-out words at Twilio
        assert twilios(db) == [] and blocks(db) == ""
        # (our keyword packs still read CANCEL as an opt-out, and say so: nothing blocks the reply)
        assert statuses(db) == {"club": "opted_out"} and len(ours(db)) == 1
        text(live_server, db, "START", to=SERVICE_NUMBER)  # not blocked at Twilio: the gateway restores it
        assert statuses(db) == {"club": "opted_in"}

        text(live_server, db, "ALTO", to=SERVICE_NUMBER)  # configured there: Twilio blocks the whole service
        assert statuses(db) == {"club": "opted_out"}
        assert blocks(db) == f"{SERVICE_NUMBER} {SERVICE}"
        replies_so_far = len(ours(db))
        # The join keyword is an opt-in word there: Twilio lifts the block, and the gateway restores it.
        text(live_server, db, "CLUB", to=SERVICE_NUMBER)
        assert statuses(db) == {"club": "opted_in"} and blocks(db) == ""
        assert len(ours(db)) == replies_so_far  # Advanced Opt-Out answered (OptOutType): no second reply
        assert twilios(db)[-2:] == [TWILIO_REPLIES[Reaction.BLOCK], TWILIO_REPLIES[Reaction.UNBLOCK]]
        assert refused(db) == []


def _known_block_with_consent(db, phone: str) -> None:
    """A number the gateway knows Twilio blocks on SENDER while it still holds an opted-in consent there
    (say a program moved onto this sender after the STOP): the sandbox refuses it with 21610."""
    opt_in(db, phone, "alerts")
    with db.transaction() as session:
        number = store_consents.find_number(session, phone)
        number.twilio_blocks = SENDER
        session.add(SandboxOptOut(handset=phone, sender=SENDER, keyword="STOP"))


def test_a_21610_for_a_known_block_is_that_block_not_a_new_carrier_opt_out(live_server, worker_process, db,
                                                                           gateway, instant_sandbox):
    phone = "+14155550178"
    _known_block_with_consent(db, phone)
    with db.transaction() as session:  # and a program on another sender, confirmed: none of Twilio's business here
        consents.apply(session, store_consents.number_row(session, parse(phone)), programs.by_slug(session, "orders"),
                       Input.IMPORT_OPT_IN, consents.Evidence(Source.IMPORT, actor="test", reference="import-2"))
    message_id = queue(gateway, phone, "alerts", "Acme Alerts: maintenance tonight. Reply STOP to cancel.")

    def finished():
        with db.sessions() as session:
            message = session.get(OutboundMessage, message_id)
            return message if message.status == "blocked" else None

    message = wait_for(finished, what="the refused message is recorded")
    assert (message.reason, message.error_code) == ("twilio_blocked", 21610)
    assert statuses(db, phone) == {"alerts": "opted_in", "orders": "opted_in"}
    assert [event[0] for event in ledger(db, phone)] == ["import", "import"]  # no carrier_opt_out


def test_a_21610_nobody_told_us_of_is_a_carrier_opt_out_and_the_block_is_kept(live_server, worker_process, db,
                                                                               gateway, instant_sandbox):
    phone = "+14155550179"
    opt_in(db, phone, "alerts")
    with db.transaction() as session:
        session.add(SandboxOptOut(handset=phone, sender=SENDER, keyword="STOP"))  # a STOP whose webhook we never got
    message_id = queue(gateway, phone, "alerts", "Acme Alerts: maintenance tonight. Reply STOP to cancel.")

    def finished():
        with db.sessions() as session:
            message = session.get(OutboundMessage, message_id)
            return message if message.status == "blocked" else None

    assert wait_for(finished).reason == "opted_out"
    assert statuses(db, phone) == {"alerts": "opted_out", "deals": "opted_out"}
    assert blocks(db, phone) == SENDER  # the next refusal on this sender is an expected one
    assert [event[0] for event in ledger(db, phone)].count("carrier_opt_out") == 2

"""The inbound core: each text is deduplicated, classified and applied once, in one transaction."""

import itertools
import logging
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from gateway.domain.consent import Input, Source
from gateway.domain.numbers import parse
from gateway.domain.programs import DEFAULT_TEMPLATES, ProgramSpec, load_file
from gateway.services import consents, inbound
from gateway.store import consents as store_consents
from gateway.store import ledger, programs
from gateway.store.models import Consent, InboundMessage, LedgerEvent, OutboundMessage, PhoneNumber, Program, utcnow

PERSON = "+14155552671"
SHARED_SENDER = "+15005550006"  # deals (marketing, double opt-in) and alerts (informational, double opt-in)
ORDERS_SENDER = "+18885550199"  # orders (transactional, single opt-in)
_sids = itertools.count(1)


def text(body, *, to=SHARED_SENDER, sender=PERSON, sid=None, **extra):
    return inbound.InboundText(message_sid=sid or f"SM{next(_sids):032x}", from_=sender, to=to, body=body, **extra)


def statuses(db, number=PERSON):
    with db.sessions() as session:
        rows = session.execute(
            select(Program.slug, Consent.status).join(Consent, Consent.program_id == Program.id)
            .join(PhoneNumber, PhoneNumber.id == Consent.number_id).where(PhoneNumber.e164 == number)
        )
        return dict(rows.all())


def count(db, model):
    with db.sessions() as session:
        return session.scalar(select(func.count()).select_from(model))


def give_consent(db, *slugs, number=PERSON, pending=()):
    """Opt `number` in to `slugs` (request + YES) and leave `pending` ones asked but unconfirmed."""
    now = utcnow()
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(number))
        for slug in (*slugs, *pending):
            consents.apply(session, row, programs.by_slug(session, slug), Input.API_REQUEST,
                          consents.Evidence(Source.API), now=now, expires_at=now + timedelta(hours=48))
        for slug in slugs:
            consents.apply(session, row, programs.by_slug(session, slug), Input.CONFIRM_YES,
                          consents.Evidence(Source.SMS), now=now)


def test_stop_ends_every_program_on_the_sender_with_the_text_as_evidence(gateway, db):
    give_consent(db, "deals", "alerts", "orders")
    handled = inbound.handle(gateway, text("Stop!!", sid="SM" + "5" * 32))
    assert handled.intent == "opt_out"
    assert statuses(db) == {"deals": "opted_out", "alerts": "opted_out", "orders": "opted_in"}
    with db.sessions() as session:
        events = session.scalars(select(LedgerEvent).where(LedgerEvent.type == "opt_out")).all()
    assert len(events) == 2
    assert {e.reference for e in events} == {"SM" + "5" * 32}
    assert all(e.source == "sms" and e.evidence["body"] == "Stop!!" for e in events)


def test_one_combined_opt_out_confirmation_without_marketing(gateway, db):
    # A revocation Twilio's filtering does not catch: our reply is the person's only confirmation.
    handled = inbound.handle(gateway, text("please unsubscribe me"))
    assert handled.reply == (
        "Acme Deals & Acme Service Alerts: you're unsubscribed and will get no more messages. "
        "Reply START to resubscribe."
    )
    assert count(db, OutboundMessage) == 0  # the TwiML answer is the one and only text


def test_a_stop_word_twilio_answers_itself_gets_no_reply_of_ours(gateway, db):
    # Twilio's default filtering blocks the sender and sends its own confirmation: ours would be refused.
    handled = inbound.handle(gateway, text("unsubscribe"))
    assert (handled.intent, handled.reply) == ("opt_out", None)
    assert statuses(db) == {"deals": "opted_out", "alerts": "opted_out"}
    assert count(db, OutboundMessage) == 0


def test_stop_from_a_stranger_still_blocks_later_requests(gateway, db):
    inbound.handle(gateway, text("STOP"))
    assert statuses(db) == {"deals": "opted_out", "alerts": "opted_out"}


def test_stopall_ends_every_program_on_every_sender(gateway, db):
    give_consent(db, "deals", "orders")
    handled = inbound.handle(gateway, text("stop all"))
    assert handled.intent == "opt_out_all"
    assert statuses(db) == {"deals": "opted_out", "alerts": "opted_out", "orders": "opted_out"}
    assert "Acme Orders" in handled.reply


def test_free_text_revocation_opts_out(gateway, db):
    give_consent(db, "deals")
    assert inbound.handle(gateway, text("please stop texting me")).intent == "opt_out"
    assert statuses(db)["deals"] == "opted_out"


def test_start_restores_exactly_what_was_confirmed_before_the_opt_out(gateway, db):
    give_consent(db, "deals", pending=("alerts",))
    inbound.handle(gateway, text("STOP"))
    handled = inbound.handle(gateway, text("START"))
    assert statuses(db) == {"deals": "opted_in", "alerts": "opted_out"}
    assert handled.reply.startswith("Acme Deals: you're resubscribed.")


def test_repeated_stop_does_not_forget_what_start_restores(gateway, db):
    give_consent(db, "alerts")
    inbound.handle(gateway, text("STOP"))
    inbound.handle(gateway, text("quit"))
    inbound.handle(gateway, text("unstop"))
    assert statuses(db) == {"deals": "opted_out", "alerts": "opted_in"}


def test_start_with_nothing_to_restore_is_stored_without_a_reply_or_event(gateway, db):
    inbound.handle(gateway, text("STOP"))
    before = count(db, LedgerEvent)
    handled = inbound.handle(gateway, text("START"))
    assert handled.reply is None
    assert count(db, LedgerEvent) == before
    assert count(db, InboundMessage) == 2


def test_start_restores_only_on_the_sender_it_was_sent_to(gateway, db):
    give_consent(db, "deals", "orders")
    inbound.handle(gateway, text("STOPALL"))
    inbound.handle(gateway, text("START", to=ORDERS_SENDER))
    assert statuses(db) == {"deals": "opted_out", "alerts": "opted_out", "orders": "opted_in"}


def test_yes_confirms_pending_requests_on_that_sender(gateway, db):
    give_consent(db, pending=("deals", "alerts"))
    handled = inbound.handle(gateway, text("Yes"))
    assert statuses(db) == {"deals": "opted_in", "alerts": "opted_in"}
    assert handled.reply.startswith("Acme Deals & Acme Service Alerts: you're subscribed.")


def test_yes_with_nothing_pending_is_plain_text(gateway, db):
    handled = inbound.handle(gateway, text("YES"))
    assert handled.reply is None
    assert statuses(db) == {}
    assert count(db, LedgerEvent) == 0
    assert count(db, InboundMessage) == 1


def test_yes_does_not_confirm_an_expired_request(gateway, db):
    past = utcnow() - timedelta(hours=50)
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(PERSON))
        consents.apply(session, row, programs.by_slug(session, "deals"), Input.API_REQUEST,
                      consents.Evidence(Source.API), now=past, expires_at=past + timedelta(hours=48))
    assert inbound.handle(gateway, text("yes")).reply is None
    assert statuses(db) == {"deals": "pending"}


def test_join_keyword_of_a_double_opt_in_program_queues_the_confirmation(gateway, db):
    handled = inbound.handle(gateway, text("deals"))
    assert handled.intent == "join" and handled.reply is None
    assert statuses(db) == {"deals": "pending"}
    with db.sessions() as session:
        message = session.scalars(select(OutboundMessage)).one()
    assert handled.queued == (message.id,)
    assert message.kind == "confirmation" and message.status == "queued"
    assert "YES" in message.body and "Acme Deals" in message.body


def test_join_keyword_of_a_single_opt_in_program_opts_in_and_welcomes(gateway, db):
    handled = inbound.handle(gateway, text("Orders!", to=ORDERS_SENDER))
    assert statuses(db) == {"orders": "opted_in"}
    assert handled.reply.startswith("Acme Orders: you're subscribed.")
    assert handled.queued == ()


def test_join_keyword_when_already_subscribed_changes_nothing(gateway, db):
    give_consent(db, "orders")
    before = count(db, LedgerEvent)
    handled = inbound.handle(gateway, text("ORDERS", to=ORDERS_SENDER))
    assert handled.reply.startswith("Acme Orders: you're subscribed.")
    assert count(db, LedgerEvent) == before


def test_join_keyword_of_another_sender_is_plain_text(gateway, db):
    assert inbound.handle(gateway, text("ORDERS", to=SHARED_SENDER)).intent == "other"
    assert statuses(db) == {}


def test_help_answers_whether_subscribed_or_not_and_is_recorded(gateway, db):
    handled = inbound.handle(gateway, text("HELP"))
    assert handled.reply.startswith("Acme Deals: help at acme.example/help")
    give_consent(db, "alerts")
    handled = inbound.handle(gateway, text("info"))
    assert handled.reply.startswith("Acme Alerts: outages and service notices.")
    with db.sessions() as session:
        helps = list(session.scalars(select(LedgerEvent.program_id).where(LedgerEvent.type == "help")
                                     .order_by(LedgerEvent.id)))
        assert helps == [programs.by_slug(session, "deals").id, programs.by_slug(session, "alerts").id]
    assert statuses(db) == {"alerts": "opted_in"}


def test_other_text_is_stored_without_a_reply(gateway, db):
    handled = inbound.handle(gateway, text("what time do you open?"))
    assert (handled.intent, handled.reply) == ("other", None)
    assert count(db, LedgerEvent) == 0
    with db.sessions() as session:
        stored = session.scalars(select(InboundMessage)).one()
    assert stored.body == "what time do you open?" and stored.intent == "other" and stored.reply is None


@pytest.mark.parametrize(("opt_out_type", "body", "expected"), [
    ("STOP", "stop", {"deals": "opted_out", "alerts": "opted_out"}),
    ("START", "start", {"deals": "opted_in", "alerts": "opted_out"}),
])
def test_advanced_opt_out_is_recorded_but_not_answered_twice(gateway, db, opt_out_type, body, expected):
    give_consent(db, "deals")
    if opt_out_type == "START":
        inbound.handle(gateway, text("STOP"))
    handled = inbound.handle(gateway, text(body, opt_out_type=opt_out_type))
    assert handled.reply is None
    assert statuses(db) == expected
    with db.sessions() as session:
        assert session.scalars(select(InboundMessage.opt_out_type).order_by(InboundMessage.id.desc())).first() \
            == opt_out_type


def test_advanced_opt_out_help_is_recorded_without_reply(gateway, db):
    handled = inbound.handle(gateway, text("HELP", opt_out_type="HELP"))
    assert handled.reply is None
    assert count(db, LedgerEvent) == 1


def test_advanced_opt_out_trusts_twilio_over_our_classifier(gateway, db):
    # A custom Advanced Opt-Out keyword we do not know: Twilio has blocked the number, so do we.
    handled = inbound.handle(gateway, text("BASTA YA", opt_out_type="STOP"))
    assert handled.intent == "opt_out" and handled.reply is None
    assert statuses(db) == {"deals": "opted_out", "alerts": "opted_out"}


def test_a_repeated_message_sid_gets_the_first_answer_and_writes_nothing(gateway, db):
    give_consent(db, "deals")
    first = inbound.handle(gateway, text("STOP", sid="SM" + "a" * 32))
    counts = [count(db, m) for m in (LedgerEvent, InboundMessage, Consent, PhoneNumber)]
    again = inbound.handle(gateway, text("START", sid="SM" + "a" * 32))
    assert again.duplicate and again.reply == first.reply and again.intent == "opt_out"
    assert [count(db, m) for m in (LedgerEvent, InboundMessage, Consent, PhoneNumber)] == counts
    assert statuses(db)["deals"] == "opted_out"


def test_concurrent_deliveries_of_one_message_are_processed_once(gateway, db):
    give_consent(db, "deals", "alerts")
    inbound_text = text("STOP", sid="SM" + "c" * 32)
    answers, errors = [], []

    def deliver():
        try:
            answers.append(inbound.handle(gateway, inbound_text))
        except Exception as error:  # surfaced below: the test must see it
            errors.append(error)

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({a.reply for a in answers}) == 1 and sum(not a.duplicate for a in answers) == 1
    with db.sessions() as session:
        assert session.scalar(select(func.count()).where(LedgerEvent.type == "opt_out")) == 2
    assert count(db, InboundMessage) == 1


def _at_once(gateway, *texts):
    """Deliver `texts` from parallel threads; their answers, in the order given."""
    answers, errors = {}, []

    def deliver(index, inbound_text):
        try:
            answers[index] = inbound.handle(gateway, inbound_text)
        except Exception as error:  # surfaced below: the test must see it
            errors.append(error)

    threads = [threading.Thread(target=deliver, args=pair) for pair in enumerate(texts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return [answers[index] for index in range(len(texts))]


def test_two_join_keywords_of_one_number_at_once_each_ask_once(gateway, db):
    deals, alerts = _at_once(gateway, text("DEALS"), text("ALERTS"))
    assert statuses(db) == {"deals": "pending", "alerts": "pending"}
    with db.sessions() as session:
        queued = set(session.scalars(select(OutboundMessage.id).where(OutboundMessage.kind == "confirmation")))
        chain = list(session.scalars(select(LedgerEvent.seq).order_by(LedgerEvent.id)))
        assert [str(b) for b in ledger.verify(session)] == []
    assert queued == {*deals.queued, *alerts.queued} and len(queued) == 2
    assert chain == [1, 2]


def test_yes_and_stop_of_one_number_at_once_both_land_on_one_chain(gateway, db):
    give_consent(db, pending=("deals",))
    confirmed, stopped = _at_once(gateway, text("YES"), text("STOP"))
    assert stopped.intent == "opt_out" and statuses(db) == {"deals": "opted_out", "alerts": "opted_out"}
    with db.sessions() as session:
        types = list(session.scalars(select(LedgerEvent.type).order_by(LedgerEvent.seq)))
        assert [str(b) for b in ledger.verify(session)] == []
    # Whichever was written first, both were applied once, one after the other.
    if confirmed.reply is None:  # the STOP came first: nothing was pending any more
        assert types == ["request", "opt_out", "opt_out"]
    else:
        assert types == ["request", "confirmation", "opt_out", "opt_out"]
    assert count(db, InboundMessage) == 2


def test_a_repeated_join_keyword_queues_one_confirmation(gateway, db):
    first = inbound.handle(gateway, text("DEALS", sid="SM" + "d" * 32))
    again = inbound.handle(gateway, text("DEALS", sid="SM" + "d" * 32))
    assert again.duplicate and again.queued == () and len(first.queued) == 1
    assert count(db, OutboundMessage) == 1 and count(db, LedgerEvent) == 1


def test_an_unknown_sender_changes_nothing(gateway, db):
    with pytest.raises(inbound.BadInbound) as problem:
        inbound.handle(gateway, text("STOP", to="+12025550143"))
    assert problem.value.code == "unknown_sender"
    assert count(db, PhoneNumber) == 0 and count(db, InboundMessage) == 0


def test_a_messaging_service_sender_resolves_its_programs(gateway, db):
    service_sid = "MG" + "a" * 32
    spec = ProgramSpec(slug="news", name="Acme News", category="informational",
                                frequency="Weekly", help="Acme News: help at acme.example/help.",
                                messaging_service=service_sid, templates=dict(DEFAULT_TEMPLATES),
                                opt_out_handling="none")
    with db.transaction() as session:
        programs.store(session, [spec])
    give_consent(db, "news")
    handled = inbound.handle(gateway, text("STOP", to="+14155550100", messaging_service_sid=service_sid))
    assert statuses(db) == {"news": "opted_out"}
    # The service filters nothing at Twilio: our confirmation is the one the person gets.
    assert handled.reply.startswith("Acme News: you're unsubscribed")


def test_a_text_from_an_unreachable_number_shows_it_is_reachable(gateway, db):
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(PERSON))
        row.reachability, row.reachability_code = "unreachable", 30003
    inbound.handle(gateway, text("hello"))
    with db.sessions() as session:
        assert store_consents.find_number(session, PERSON).reachability == "ok"


def test_an_opt_out_from_a_number_our_metadata_calls_invalid_is_kept(gateway, db):
    # +1 200 is not a valid area code to phonenumbers; Twilio's signed request says a handset used it.
    inbound.handle(gateway, text("STOP", sender="+12005550100"))
    assert statuses(db, "+12005550100") == {"deals": "opted_out", "alerts": "opted_out"}
    with db.sessions() as session:
        number = store_consents.find_number(session, "+12005550100")
    assert (number.kind, number.region) == ("unknown", None)


def test_an_invalid_from_is_refused_before_anything_is_stored(gateway, db):
    with pytest.raises(inbound.BadInbound) as problem:
        inbound.handle(gateway, text("STOP", sender="not-a-number"))
    assert problem.value.code == "invalid_number"
    assert count(db, InboundMessage) == 0


def test_reply_templates_fit_one_segment_for_the_example_programs(example_programs):
    from gateway.domain.segments import count as segments

    for spec in example_programs:
        for template in ("welcome", "opt_out", "opt_in"):
            assert segments(spec.text(template)).segments == 1, (spec.slug, template)
        assert segments(spec.help).segments == 1


def test_loading_a_program_whose_reply_exceeds_one_segment_warns(tmp_path, caplog):
    file = tmp_path / "programs.toml"
    file.write_text(
        '[programs.news]\nname = "News"\nsender = "+15005550006"\ncategory = "informational"\n'
        'frequency = "Weekly"\nhelp = "' + "Help text that goes on. " * 10 + '"\n'
    )
    with caplog.at_level(logging.WARNING, logger="gateway.domain.programs"):
        load_file(file)
    assert any("help text takes 2 SMS segments" in record.getMessage() for record in caplog.records)


def test_a_reloaded_program_is_used_at_once(gateway, db, example_programs):
    import dataclasses

    inbound.handle(gateway, text("HELP"))  # fills this process's cache for the sender
    changed = dataclasses.replace(example_programs[0], help="Acme Deals: new help text. Reply STOP to cancel.")
    with db.transaction() as session:
        programs.store(session, [changed])
    assert inbound.handle(gateway, text("HELP")).reply == "Acme Deals: new help text. Reply STOP to cancel."


# --- in step with Twilio's own filtering (gateway/domain/twilio_filter.py) -------------------------

def _blocks(db, number=PERSON):
    with db.sessions() as session:
        return store_consents.find_number(session, number).twilio_blocks


def test_a_single_opt_in_join_keyword_while_twilio_blocks_is_a_request_until_start(gateway, db):
    inbound.handle(gateway, text("STOP", to=ORDERS_SENDER))
    assert _blocks(db) == ORDERS_SENDER
    joined = inbound.handle(gateway, text("ORDERS", to=ORDERS_SENDER))
    # No welcome could reach the person: recorded as a request, nothing said, nothing queued.
    assert (joined.reply, joined.queued) == (None, ())
    assert statuses(db) == {"orders": "pending"}
    started = inbound.handle(gateway, text("start", to=ORDERS_SENDER))
    assert statuses(db) == {"orders": "opted_in"} and _blocks(db) == ""
    assert started.reply.startswith("Acme Orders: you're subscribed")


def test_help_while_twilio_blocks_is_recorded_without_a_reply(gateway, db):
    give_consent(db, "alerts")
    inbound.handle(gateway, text("STOP"))
    handled = inbound.handle(gateway, text("HELP"))
    assert (handled.intent, handled.reply) == ("help", None)
    with db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(LedgerEvent).where(LedgerEvent.type == "help")) == 1


def test_a_block_on_one_sender_leaves_replies_on_another_alone(gateway, db):
    inbound.handle(gateway, text("STOP"))
    assert inbound.handle(gateway, text("HELP", to=ORDERS_SENDER)).reply.startswith("Acme Orders")


def test_start_from_a_number_twilio_does_not_block_restores_but_confirms_nothing(gateway, db):
    give_consent(db, "deals", pending=("alerts",))
    inbound.handle(gateway, text("please stop texting me"))  # Twilio does not block on this one
    assert _blocks(db) == ""
    asked = inbound.handle(gateway, text("ALERTS"))  # not blocked: the confirmation goes
    assert len(asked.queued) == 1
    inbound.handle(gateway, text("START"))
    assert statuses(db) == {"deals": "opted_in", "alerts": "pending"}


def test_a_replayed_advanced_opt_out_word_blocks_and_opts_out_without_its_opt_out_type(gateway, db):
    service_sid = "MG" + "c" * 32
    spec = ProgramSpec(slug="club", name="Acme Club", category="informational", frequency="Weekly",
                       help="Acme Club: help at acme.example/help.", messaging_service=service_sid,
                       templates=dict(DEFAULT_TEMPLATES), opt_out_handling="twilio_advanced",
                       twilio_opt_out_keywords=("STOP", "BASTAYA"))
    with db.transaction() as session:
        programs.store(session, [spec])
    give_consent(db, "club")
    # A text from the journal or the reconciler carries no OptOutType: our copy of the keywords decides.
    handled = inbound.handle(gateway, text("bastaya", to="+14155550100", messaging_service_sid=service_sid,
                                           origin="journal"))
    assert handled.intent == "opt_out"
    assert statuses(db) == {"club": "opted_out"}
    assert _blocks(db) == f"+14155550100 {service_sid}"

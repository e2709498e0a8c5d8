"""Consent changes planned from a read and written later: all or nothing, and only from the head read.

The webhook reads a number's ledger head and consents without a lock, then writes the change, its
events and the text together (gateway.db.Writes, one statement on PostgreSQL). These tests pin down
what makes that safe: a write planned from a head that has since moved writes nothing, a failing part
takes the rest with it, and the webhook then reads again instead of losing or doubling the change.
"""


import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from gateway.domain.consent import Input, Source
from gateway.domain.numbers import parse
from gateway.services import consents, inbound
from gateway.store import consents as store_consents
from gateway.store import ledger, programs
from gateway.store.database import Writes, _one_statement, on_driver
from gateway.store.models import Consent, InboundMessage, LedgerEvent, PhoneNumber, utcnow
from tests.sandbox_support import confirmed, other_people

PERSON = "+14155552671"
SENDER = "+15005550006"  # deals and alerts
SMS = consents.Evidence(Source.SMS, reference="SM" + "1" * 32, details={"body": "STOP"})


def on_sender(db):
    with db.sessions() as session:
        found = programs.on_sender(session, SENDER)
        session.expunge_all()
        return found


def store(db):
    with db.sessions() as session:
        number = session.scalars(select(PhoneNumber).where(PhoneNumber.e164 == PERSON)).one()
        statuses = dict(session.execute(select(Consent.program_id, Consent.status)
                                        .where(Consent.number_id == number.id)).all())
        events = session.scalars(select(LedgerEvent.type).order_by(LedgerEvent.seq)).all()
        texts = session.scalar(select(func.count()).select_from(InboundMessage))
        breaks = [str(b) for b in ledger.verify(session)]
        return number.ledger_seq, statuses, events, texts, breaks


def test_a_change_planned_from_a_head_that_moved_writes_nothing(db):
    confirmed(db, PERSON, "deals", "alerts")
    deals, alerts = on_sender(db)
    with db.statements() as connection:
        stale = store_consents.held(connection, PERSON, [deals.id, alerts.id])
    # Meanwhile support staff opt the number out of alerts (the head moves on).
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(PERSON))
        consents.opt_out(session, row, [alerts], Input.API_OPT_OUT, consents.Evidence(Source.API))
    before = store(db)
    planned = consents.plan(stale, [deals, alerts], Input.KEYWORD_STOP, SMS, now=utcnow())
    with db.statements() as connection:
        assert planned.writes.execute(connection) is False
    assert store(db) == before
    assert before[1] == {deals.id: "opted_in", alerts.id: "opted_out"}
    assert before[4] == []


def test_a_change_planned_from_the_current_head_is_written_whole(db):
    confirmed(db, PERSON, "deals", "alerts")
    deals, alerts = on_sender(db)
    with db.statements() as connection:
        state = store_consents.held(connection, PERSON, [deals.id, alerts.id])
        planned = consents.plan(state, [deals, alerts], Input.KEYWORD_STOP, SMS, now=utcnow())
        assert planned.writes.execute(connection) is True
    seq, statuses, events, _, breaks = store(db)
    assert seq == state.seq + 2
    assert statuses == {deals.id: "opted_out", alerts.id: "opted_out"}
    assert events[-2:] == ["opt_out", "opt_out"]
    assert breaks == []


def test_when_one_part_fails_no_part_is_kept(db):
    confirmed(db, PERSON, "deals")
    (deals, _) = on_sender(db)
    with db.statements() as connection:
        state = store_consents.held(connection, PERSON, [deals.id])
        number_id = state.number_id
    first = {"message_sid": "SM" + "7" * 32, "number_id": number_id, "to_number": SENDER, "body": "hi",
             "intent": "other", "received_at": utcnow()}
    with db.statements() as connection:
        assert Writes().insert(InboundMessage.__table__, first).execute(connection) is True
    before = store(db)
    planned = consents.plan(state, [deals], Input.KEYWORD_STOP, SMS, now=utcnow())
    planned.writes.insert(InboundMessage.__table__, first)  # the same MessageSid again: refused
    with pytest.raises(IntegrityError), db.statements() as connection:
        planned.writes.execute(connection)
    assert store(db) == before  # the opt-out and its event went with the refused text


def test_a_text_whose_number_changed_under_it_is_read_again_and_applied_once(gateway, db, monkeypatch):
    confirmed(db, PERSON, "deals", "alerts")
    read = store_consents.held
    reads = []

    def another_change_lands_after_the_first_read(connection, e164, program_ids, **options):
        state = read(connection, e164, program_ids, **options)
        if not reads:
            # Someone else's HELP is written between our read and our write: our plan is stale.
            consents.plan_record(state, "help", consents.Evidence(Source.SMS, reference="SM" + "9" * 32),
                                now=utcnow()).writes.execute(connection)
        reads.append(state.seq)
        return state

    monkeypatch.setattr(store_consents, "held", another_change_lands_after_the_first_read)
    handled = inbound.handle(gateway, inbound.InboundText("SM" + "2" * 32, PERSON, SENDER, "STOP"))
    assert handled.intent == "opt_out"
    assert reads[1] == reads[0] + 1  # read again, after the other change
    seq, statuses, events, texts, breaks = store(db)
    assert sorted(statuses.values()) == ["opted_out", "opted_out"]
    assert events[-3:] == ["help", "opt_out", "opt_out"]
    assert texts == 1
    assert breaks == []


def test_a_change_to_two_consents_finds_them_by_index_not_by_scanning_the_table(db):
    """The consents' new values travel as a JSON recordset, which PostgreSQL guesses at 100 rows: joined
    on that guess alone, a STOP scanned every consent in the store to update two of them."""
    if db.dialect != "postgresql":
        pytest.skip("a query plan of PostgreSQL's; SQLite runs the writes one by one, by id")
    confirmed(db, PERSON, "deals", "alerts")
    deals, alerts = on_sender(db)
    other_people(db, 5000, "deals")
    with db.statements() as connection:
        state = store_consents.held(connection, PERSON, [deals.id, alerts.id])
        planned = consents.plan(state, [deals, alerts], Input.KEYWORD_STOP, SMS, now=utcnow())
        sql, params = _one_statement(planned.writes)
        plan = on_driver(connection, "EXPLAIN (FORMAT JSON) " + sql, params)[0][0]

    def scans(node):
        yield node.get("Node Type"), node.get("Relation Name")
        for child in node.get("Plans", []):
            yield from scans(child)

    read_from_consents = {kind for kind, relation in scans(plan[0]["Plan"]) if relation == "consents"} - {"ModifyTable"}
    assert read_from_consents and "Seq Scan" not in read_from_consents  # an index scan of some kind


def _blocks():
    return select(PhoneNumber.twilio_blocks).where(PhoneNumber.e164 == PERSON)


def test_twilios_block_is_written_with_the_change_and_only_over_what_was_read(db):
    confirmed(db, PERSON, "deals")
    (deals, _) = on_sender(db)
    with db.statements() as connection:
        state = store_consents.held(connection, PERSON, [deals.id])
    assert state.twilio_blocks == ""
    # With a consent change (the guard is the ledger head), and alone (a START with nothing to restore).
    planned = consents.plan(state, [deals], Input.KEYWORD_STOP, SMS, now=utcnow())
    store_consents.set_twilio_blocks(planned.writes, state, SENDER)
    with db.statements() as connection:
        assert planned.writes.execute(connection) is True
        assert connection.scalar(_blocks()) == SENDER
        state = store_consents.held(connection, PERSON, [deals.id])
    alone = Writes()
    store_consents.set_twilio_blocks(alone, state, "")
    # Meanwhile another text from the number blocked it on a Messaging Service too: the write planned
    # from the old list writes nothing (the webhook reads again) rather than lose that block.
    with db.transaction() as session:
        session.scalars(select(PhoneNumber).where(PhoneNumber.e164 == PERSON)).one().twilio_blocks = \
            f"{SENDER} MG{'0' * 32}"
    with db.statements() as connection:
        assert alone.execute(connection) is False
        assert connection.scalar(_blocks()) == f"{SENDER} MG{'0' * 32}"

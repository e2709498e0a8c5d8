"""The consent service over a real store: apply, the ledger chain, verification and rebuild."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text, update

from gateway.domain.consent import IllegalTransition, Input, Source
from gateway.domain.numbers import parse
from gateway.services import consents, expiry
from gateway.store import consents as store_consents
from gateway.store import ledger
from gateway.store.models import Consent, LedgerEvent, PhoneNumber
from gateway.store.programs import by_slug

T0 = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
SMS = consents.Evidence(source=Source.SMS, actor="twilio", reference="SM" + "a" * 32, details={"body": "STOP"})
API = consents.Evidence(source=Source.API, actor="crm", reference="req-1", details={"disclosure": "text v1"})


def run(db, *steps, number="+14155552671"):
    """Apply (program_slug, input) steps to one number; return the final consents by slug."""
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(number))
        for slug, input in steps:
            consents.apply(session, row, by_slug(session, slug), input, API, now=T0,
                           expires_at=T0 + timedelta(hours=48))
        return {c.program.slug: (c.status, c.restorable) for c in consents.consents(session, row)}


def breaks(db):
    with db.sessions() as session:
        return [str(b) for b in ledger.verify(session)]


def test_apply_records_state_and_a_chained_event(db):
    assert run(db, ("deals", Input.API_REQUEST), ("deals", Input.CONFIRM_YES)) == {"deals": ("opted_in", False)}
    with db.sessions() as session:
        events = session.scalars(select(LedgerEvent).order_by(LedgerEvent.seq)).all()
        number = session.scalars(select(PhoneNumber)).one()
    assert [(e.seq, e.type, e.status_before, e.status_after) for e in events] == [
        (1, "request", None, "pending"),
        (2, "confirmation", "pending", "opted_in"),
    ]
    assert events[0].prev_hash == "0" * 64
    assert events[1].prev_hash == events[0].hash
    assert (number.ledger_seq, number.ledger_head) == (2, events[1].hash)
    assert events[0].evidence == {"disclosure": "text v1"}
    assert (events[0].source, events[0].actor, events[0].reference) == ("api", "crm", "req-1")
    assert breaks(db) == []


def test_illegal_input_changes_nothing(db):
    run(db, ("deals", Input.KEYWORD_STOP))
    with pytest.raises(IllegalTransition):
        run(db, ("deals", Input.API_REQUEST))
    with db.sessions() as session:
        assert session.scalar(select(PhoneNumber.ledger_seq)) == 1
        assert session.scalars(select(Consent.status)).all() == ["opted_out"]


def test_stop_then_start_restores_only_confirmed_programs(db):
    result = run(
        db,
        ("deals", Input.API_REQUEST), ("deals", Input.CONFIRM_YES),
        ("alerts", Input.API_REQUEST),
        ("deals", Input.KEYWORD_STOP), ("alerts", Input.KEYWORD_STOP),
        ("deals", Input.KEYWORD_START),
    )
    assert result == {"deals": ("opted_in", False), "alerts": ("opted_out", False)}


def test_expiry_moves_only_overdue_pending_requests(db):
    run(db, ("deals", Input.API_REQUEST), number="+14155552671")
    run(db, ("alerts", Input.API_REQUEST), ("alerts", Input.CONFIRM_YES), number="+14155552672")
    with db.transaction() as session:
        assert expiry.expire_pending(session, now=T0 + timedelta(hours=47)) == 0
    with db.transaction() as session:
        assert expiry.expire_pending(session, now=T0 + timedelta(hours=48)) == 1
    with db.sessions() as session:
        statuses = dict(session.execute(select(PhoneNumber.e164, Consent.status).join(Consent)).all())
    assert statuses == {"+14155552671": "expired", "+14155552672": "opted_in"}
    with pytest.raises(IllegalTransition):
        run(db, ("deals", Input.CONFIRM_YES))


def test_ledger_verify_catches_an_edited_event(db):
    run(db, ("deals", Input.API_REQUEST), ("deals", Input.CONFIRM_YES), ("deals", Input.KEYWORD_STOP))
    with db.transaction() as session:
        session.execute(update(LedgerEvent).where(LedgerEvent.seq == 2).values(status_after="opted_out"))
    assert "seq 2" in breaks(db)[0] and "content was changed" in breaks(db)[0]


def test_ledger_verify_catches_edited_evidence(db):
    run(db, ("deals", Input.API_REQUEST), ("deals", Input.CONFIRM_YES))
    with db.transaction() as session:
        session.execute(update(LedgerEvent).where(LedgerEvent.seq == 1).values(evidence={"disclosure": "other"}))
    assert "seq 1" in breaks(db)[0] and "evidence was changed" in breaks(db)[0]


def test_ledger_verify_catches_a_deleted_event(db):
    run(db, ("deals", Input.API_REQUEST), ("deals", Input.CONFIRM_YES), ("deals", Input.KEYWORD_STOP))
    with db.transaction() as session:
        session.execute(text("DELETE FROM ledger_events WHERE seq = 2"))
    found = breaks(db)
    assert len(found) == 1 and "seq 3" in found[0] and "removed or reordered" in found[0]


def test_ledger_verify_catches_a_deleted_last_event(db):
    run(db, ("deals", Input.API_REQUEST), ("deals", Input.CONFIRM_YES), ("deals", Input.KEYWORD_STOP))
    with db.transaction() as session:
        session.execute(text("DELETE FROM ledger_events WHERE seq = 3"))
    found = breaks(db)
    assert len(found) == 1 and "events were removed" in found[0]


def test_ledger_verify_catches_reordered_events(db):
    run(db, ("deals", Input.API_REQUEST), ("deals", Input.CONFIRM_YES), ("deals", Input.KEYWORD_STOP))
    with db.transaction() as session:
        session.execute(text("UPDATE ledger_events SET seq = -seq WHERE seq IN (2, 3)"))
        session.execute(text("UPDATE ledger_events SET seq = 3 WHERE seq = -2"))
        session.execute(text("UPDATE ledger_events SET seq = 2 WHERE seq = -3"))
    found = breaks(db)
    assert len(found) == 1 and "seq" in found[0] and "removed or reordered" in found[0]


def test_chains_of_other_numbers_stay_intact(db):
    run(db, ("deals", Input.API_REQUEST), number="+14155552671")
    run(db, ("deals", Input.API_REQUEST), number="+14155552672")
    with db.transaction() as session:
        session.execute(update(LedgerEvent).where(LedgerEvent.id == 1).values(actor="mallory"))
    assert len(breaks(db)) == 1


def test_rebuild_reproduces_the_projection(db):
    run(db, ("deals", Input.API_REQUEST), ("deals", Input.CONFIRM_YES), ("alerts", Input.KEYWORD_STOP),
        ("deals", Input.KEYWORD_STOP), ("deals", Input.KEYWORD_START), ("orders", Input.KEYWORD_JOIN_DIRECT))
    run(db, ("deals", Input.API_REQUEST), number="+14155552672")

    def snapshot():
        with db.sessions() as session:
            return sorted(session.execute(select(
                Consent.number_id, Consent.program_id, Consent.status, Consent.restorable, Consent.expires_at)).all())

    before = snapshot()
    with db.transaction() as session:
        session.execute(text("UPDATE consents SET status = 'opted_in'"))
    with db.transaction() as session:
        assert store_consents.rebuild(session) == 4
    assert snapshot() == before


def test_suppression_is_keyed(db, settings):
    with db.transaction() as session:
        consents.suppress(session, settings.suppression_key, "+14155552671", "erased_after_opt_out")
    with db.sessions() as session:
        assert consents.is_suppressed(session, settings.suppression_key, "+14155552671")
        assert not consents.is_suppressed(session, b"another-key-entirely-0123456789abc", "+14155552671")
        assert not consents.is_suppressed(session, settings.suppression_key, "+14155552672")

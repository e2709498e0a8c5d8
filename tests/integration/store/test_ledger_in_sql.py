"""`ledger verify` on PostgreSQL checks each event's link, hash and evidence digest in SQL
(docs/decisions/0026-ledger-check-at-scale.md): it may only confirm what the Python check passes,
and every event it cannot confirm goes to the Python check, which names what broke in its own words.

SQLite has no SHA-256 and checks in Python throughout: there, the tamperings are still named, and
what only PostgreSQL does is not asked of it.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import hypothesis
import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from sqlalchemy import select, text, update

from gateway.domain.consent import Input, Source
from gateway.domain.ledger import canonical_evidence, event_hash, hashed_content
from gateway.domain.numbers import parse
from gateway.services import consents, privacy
from gateway.store import consents as store_consents
from gateway.store import ledger
from gateway.store.models import LedgerEvent, PhoneNumber, UTCDateTime
from gateway.store.programs import by_slug

T0 = datetime(2026, 3, 2, 15, 0, 0, 123456, tzinfo=UTC)
# Every kind of character the canonical JSON escapes or keeps as it is: quotes, backslashes, control
# characters, DEL, accents, emoji, right-to-left text and its override, a line separator. No NUL:
# PostgreSQL's text cannot hold it, so no stored row can.
ODD = 'q"uote \\back\\slash \x01\x08\x0c\x1f\x7f\t\n\r é 😀 שלום \u202e\u2028 中文'


def odd_details(tag: str) -> dict:
    """Evidence whose keys are not in sorted order and whose values are every JSON kind."""
    return {"z": ODD, "body": f"STOP {tag}", "nested": {"b": [1, 2.5, None, True, ODD], "a": {}}, "from": "+1"}


def record(db, phone: str, *steps, actor=ODD[:100], reference=ODD[:60], details=None, at=T0):
    """Consent events through the service, written as every webhook and API call writes them."""
    evidence = consents.Evidence(Source.SMS, actor=actor, reference=reference, details=details or odd_details(phone))
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(phone))
        for slug, input in steps:
            consents.apply(session, row, by_slug(session, slug), input, evidence, now=at,
                           expires_at=at + timedelta(hours=48))


def a_store(db) -> list[str]:
    """Six numbers whose chains carry odd strings, times with microseconds, an expiry and nulls."""
    phones = [f"+1415555{index:04d}" for index in range(1, 7)]
    for index, phone in enumerate(phones):
        record(db, phone, ("deals", Input.API_REQUEST), at=T0 + timedelta(microseconds=index))
        record(db, phone, ("deals", Input.CONFIRM_YES), reference=None, at=T0 + timedelta(hours=1))
        record(db, phone, ("deals", Input.KEYWORD_STOP), actor=None, details={"body": ODD}, at=T0 + timedelta(days=2))
    return phones


def number_id(db, phone: str) -> int:
    with db.sessions() as session:
        return session.scalar(select(PhoneNumber.id).where(PhoneNumber.e164 == phone))


def checked_in_sql(db) -> tuple[list, set[int]]:
    """Each event as the SQL check reads it, and the numbers whose chains it (and the Python check of
    the evidence it could not match) confirmed."""
    with db.snapshot() as session:
        numbers = [row for batch in ledger.number_batches(session, 1000) for row in batch]
        bounds = {"low": numbers[0].id, "high": numbers[-1].id}
        rows = session.execute(ledger._CONFIRMING_IN_RANGE, bounds).all()
        _, confirmed = ledger._confirmed_chains(session, numbers, bounds)
    return rows, confirmed


def verified(db, *, time_zone: str | None = None) -> list[str]:
    with db.snapshot() as session:
        if time_zone:  # the session's zone must not change how a time is written
            session.execute(text(f"SET LOCAL TIME ZONE '{time_zone}'"))
        return [str(found) for found in ledger.verify(session)]


def verified_in_python(db, monkeypatch) -> list[str]:
    """The reference: every chain read whole and checked in Python, as on SQLite."""
    with monkeypatch.context() as patched:
        patched.setattr(ledger, "_confirmed_chains",
                        lambda session, numbers, ids: (ledger._chains(session, numbers, ids), set()))
        return verified(db)


@pytest.fixture
def postgresql(db):
    if db.dialect != "postgresql":
        pytest.skip("the check in SQL is PostgreSQL's; SQLite has no SHA-256 and checks in Python")
    return db


def test_odd_strings_times_and_evidence_verify_clean_and_are_confirmed_in_sql(postgresql, monkeypatch):
    db = postgresql
    phones = a_store(db)
    assert verified(db) == [] == verified(db, time_zone="Asia/Kolkata") == verified_in_python(db, monkeypatch)
    rows, confirmed = checked_in_sql(db)
    assert len(rows) == 18 and all(row.linked and row.evidence_holds for row in rows)
    assert confirmed == {number_id(db, phone) for phone in phones}
    with db.sessions() as session:  # the webhook's write stores the evidence as its canonical text
        stored = session.execute(text("SELECT evidence::text FROM ledger_events WHERE seq = 1 ORDER BY id")).scalars()
        assert list(stored) == [canonical_evidence(odd_details(phone))[0] for phone in phones]


def tamper(db, phone: str, seq: int, **values):
    """A column of one event changed in place, its hash left as it was: what an UPDATE does."""
    with db.transaction() as session:
        session.execute(update(LedgerEvent).where(LedgerEvent.number_id == number_id(db, phone),
                                                  LedgerEvent.seq == seq).values(**values))


def event_id(db, phone: str, seq: int) -> int:
    with db.sessions() as session:
        return session.scalar(select(LedgerEvent.id).where(LedgerEvent.number_id == number_id(db, phone),
                                                           LedgerEvent.seq == seq))


def test_each_kind_of_tampered_column_is_caught_in_sql_and_named_as_the_python_check_names_it(
        db, monkeypatch):
    phones = a_store(db)
    tamper(db, phones[0], 1, actor=ODD[:100].replace('"', "\\"))  # one escaped character for another
    tamper(db, phones[1], 2, occurred_at=T0 + timedelta(hours=1, microseconds=1))  # a time, by a microsecond
    tamper(db, phones[2], 2, reference="SM1")  # null to a value
    tamper(db, phones[3], 3, expires_at=T0)  # a null time to a time
    tamper(db, phones[4], 1, evidence=odd_details("someone else"))  # evidence, as SQLAlchemy writes JSON
    with db.transaction() as session:  # evidence as its canonical text, of other content
        session.execute(text("UPDATE ledger_events SET evidence = :evidence WHERE id = :id"),
                        {"evidence": canonical_evidence({"body": "START"})[0], "id": event_id(db, phones[5], 3)})
    found = verified(db)
    assert found == verified_in_python(db, monkeypatch)  # same words, same order
    assert found == [f"{phone[:5]}***{phone[-4:]} (number {number_id(db, phone)}), event {event_id(db, phone, seq)} "
                     f"at seq {seq}: {problem}" for phone, seq, problem in [
                         (phones[0], 1, "content was changed"), (phones[1], 2, "content was changed"),
                         (phones[2], 2, "content was changed"), (phones[3], 3, "content was changed"),
                         (phones[4], 1, "evidence was changed"), (phones[5], 3, "evidence was changed")]]
    if db.dialect != "postgresql":
        return
    rows, confirmed = checked_in_sql(db)
    assert confirmed == set()
    unconfirmed = {(row.number_id, row.seq) for row in rows if not (row.linked and row.evidence_holds)}
    assert unconfirmed == {(number_id(db, phone), seq) for phone, seq in [
        (phones[0], 1), (phones[1], 2), (phones[2], 2), (phones[3], 3), (phones[4], 1), (phones[5], 3)]}


def test_evidence_stored_in_another_key_order_or_redacted_falls_back_to_python_and_verifies(
        db, settings, monkeypatch):
    phones = a_store(db)
    ids = [number_id(db, phone) for phone in phones]  # the erased number's is gone with its e164
    as_given = json.dumps(odd_details(phones[0]))  # insertion order, spaces, \\u escapes: not canonical
    with db.transaction() as session:
        session.execute(text("UPDATE ledger_events SET evidence = :evidence WHERE id = :id"),
                        {"evidence": as_given, "id": event_id(db, phones[0], 1)})
        privacy.erase(session, store_consents.find_number(session, phones[1]), settings.suppression_key,
                      consents.Evidence(Source.API, actor="dpo"), now=T0 + timedelta(days=3))
    assert verified(db) == [] == verified_in_python(db, monkeypatch)
    if db.dialect == "postgresql":
        rows, confirmed = checked_in_sql(db)
        assert all(row.linked for row in rows)
        assert {(row.number_id, row.seq) for row in rows if not row.evidence_holds} == {
            (ids[0], 1), (ids[1], 1), (ids[1], 2), (ids[1], 3)}  # the erased number's events before the erasure
        assert confirmed == set(ids)  # Python read only those evidences
    # … and an edit of such an evidence is still caught, whatever text it is stored as.
    tamper(db, phones[0], 1, evidence={**odd_details(phones[0]), "z": "changed"})
    (found,) = verified(db)
    assert found.endswith(f"event {event_id(db, phones[0], 1)} at seq 1: evidence was changed")


def test_a_rewritten_link_or_seq_is_caught_in_sql(db, monkeypatch):
    phones = a_store(db)
    tamper(db, phones[0], 2, prev_hash="0" * 64)
    with db.transaction() as session:  # two events' seq swapped: insertion order still shows it
        first, second = event_id(db, phones[1], 1), event_id(db, phones[1], 2)
        session.execute(update(LedgerEvent).where(LedgerEvent.id == first).values(seq=-1))
        session.execute(update(LedgerEvent).where(LedgerEvent.id == second).values(seq=1))
        session.execute(update(LedgerEvent).where(LedgerEvent.id == first).values(seq=2))
    found = verified(db)
    assert found == verified_in_python(db, monkeypatch)
    assert [line.split(": ", 1)[1] for line in found] == [
        "does not follow the event before it: an event was removed or reordered",
        "expected seq 1: an event was removed or reordered"]
    if db.dialect == "postgresql":
        assert checked_in_sql(db)[1] == {number_id(db, phone) for phone in phones[2:]}


# What the columns of a stored event can hold (their lengths kept within the narrowest, source's 10).
stored_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=10)
stored_time = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999),
                           timezones=st.just(UTC))


def test_sql_writes_any_storable_content_byte_for_byte_as_the_canonical_json(postgresql):
    """The SQL rendering is the canonical JSON the Python hash covers, for any content the columns
    can hold: so SQL confirms an event exactly when the Python check would."""
    db = postgresql
    with db.engine.connect() as connection:
        connection.execute(text("CREATE TEMPORARY TABLE probe (LIKE ledger_events)"))
        read_back = text("SELECT * FROM probe").columns(expires_at=UTCDateTime(), occurred_at=UTCDateTime())
        in_sql = text(f"SELECT {ledger._CANONICAL_SQL} FROM probe")

        @hypothesis.settings(max_examples=300, deadline=None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(st.fixed_dictionaries({
            "id": st.just(1), "number_id": st.integers(1, 2**63 - 1), "seq": st.integers(-2**31, 2**31 - 1),
            "type": stored_text, "input": stored_text, "program_id": st.none() | st.integers(-2**31, 2**31 - 1),
            "status_before": st.none() | stored_text, "status_after": st.none() | stored_text,
            "expires_at": st.none() | stored_time, "source": stored_text, "actor": st.none() | stored_text,
            "reference": st.none() | stored_text, "evidence": st.just("{}"), "evidence_digest": stored_text,
            "occurred_at": stored_time, "prev_hash": stored_text, "hash": st.just(""),
        }))
        def renders_the_same(content):
            connection.execute(text("DELETE FROM probe"))
            connection.execute(text(f"INSERT INTO probe ({', '.join(content)}) VALUES "
                                    f"({', '.join(':' + name for name in content)})"), content)
            row = connection.execute(read_back).one()
            canonical = json.dumps(hashed_content(row), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            written = connection.execute(in_sql).scalar_one()
            assert written == canonical
            assert hashlib.sha256(written.encode()).hexdigest() == event_hash(row)

        renders_the_same()

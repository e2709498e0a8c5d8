"""The consents' indexes after migration 0019: the pending requests are found and counted through the
index of consents with a deadline, and no index covers or filters on a column that an opt-out or a
restore changes, so PostgreSQL updates those rows in place (a HOT update: no new index entries)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import text

from gateway.services import expiry
from gateway.store import operations
from gateway.store.models import utcnow

# What a STOP, START or YES writes to a consent that was not pending before (store/consents.py writes_for).
CHANGED_BY_A_MOVE = ("status", "restorable", "updated_at")


@pytest.fixture
def crowded_consents(db):
    """2,000 consents of 1,000 numbers: 1,990 opted in or out, ten pending (three of them overdue)."""
    now = utcnow()
    with db.statements() as connection:
        connection.execute(text("""
            INSERT INTO numbers (e164, kind, reachability, ledger_seq, ledger_head, created_at)
            VALUES (:e164, 'mobile', 'ok', 0, '0', CURRENT_TIMESTAMP)"""),
                           [{"e164": f"+1415700{i:04d}"} for i in range(1, 1001)])
        connection.execute(text("""
            INSERT INTO consents (number_id, program_id, status, restorable, expires_at, updated_at)
            SELECT numbers.id, programs.id, CASE WHEN numbers.id % 2 = 0 THEN 'opted_in' ELSE 'opted_out' END,
                   false, NULL, CURRENT_TIMESTAMP
            FROM numbers, programs
            WHERE numbers.e164 LIKE '+1415700%' AND programs.id IN (SELECT id FROM programs ORDER BY id LIMIT 2)"""))
        pending = connection.execute(text("SELECT id FROM consents ORDER BY id LIMIT 10")).scalars().all()
        for position, consent_id in enumerate(pending):
            deadline = now - timedelta(hours=1) if position < 3 else now + timedelta(hours=1)
            connection.execute(text("UPDATE consents SET status = 'pending', expires_at = :deadline WHERE id = :id"),
                               {"deadline": deadline, "id": consent_id})
        connection.execute(text("ANALYZE consents"))
    return now


def test_pending_requests_are_counted_from_their_index(db, crowded_consents, query_plan):
    with db.statements() as connection:
        assert operations.pending_requests(connection) == 10
    plan = query_plan("SELECT count(*) FROM consents WHERE expires_at IS NOT NULL AND status = 'pending'")
    assert "ix_consents_pending_expires_at" in plan


def test_overdue_requests_are_found_by_their_index(db, crowded_consents, query_plan):
    plan = query_plan("SELECT number_id, program_id FROM consents WHERE status = 'pending' AND expires_at <= :now",
                 {"now": crowded_consents})
    assert "ix_consents_pending_expires_at" in plan
    with db.transaction() as session:
        assert expiry.expire_pending(session, crowded_consents) == 3
    with db.statements() as connection:
        assert operations.pending_requests(connection) == 7


def test_no_index_of_consents_covers_what_an_opt_out_changes(db):
    definitions = _index_definitions(db, "consents")
    assert "ix_consents_pending_expires_at" in " ".join(definitions)
    for definition in definitions:
        named = set(re.findall(r"[a-z_]+", definition.split(" ON ", 1)[1].lower()))
        assert not named & set(CHANGED_BY_A_MOVE), definition


def _index_definitions(db, table: str) -> list[str]:
    with db.statements() as connection:
        if db.dialect == "postgresql":
            query = "SELECT indexdef FROM pg_indexes WHERE tablename = :table"
        else:
            query = "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = :table AND sql IS NOT NULL"
        return list(connection.execute(text(query), {"table": table}).scalars())


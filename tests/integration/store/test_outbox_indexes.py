"""The outbox's indexes after migration 0014: a batch's messages are still found through an index,
though only messages of a batch have an entry in it, and a number's messages through the index on
(number_id, created_at), since the one on number_id alone is gone."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from gateway.store import outbox
from gateway.store.models import utcnow

BATCH = "batch-of-three"


@pytest.fixture
def crowded_outbox(db):
    """2,000 queued messages of no batch to 500 numbers, and three of one batch."""
    with db.statements() as connection:
        connection.execute(text("""
            INSERT INTO numbers (e164, kind, reachability, ledger_seq, ledger_head, created_at)
            VALUES (:e164, 'mobile', 'ok', 0, '0', CURRENT_TIMESTAMP)"""),
                           [{"e164": f"+1415700{i:04d}"} for i in range(1, 501)])
        connection.execute(text("""
            INSERT INTO messages (id, number_id, program_id, kind, sender, body, segments, encoding, status,
                                  attempts, batch_id, created_at, updated_at)
            SELECT 'm-' || numbers.id || '-' || k.k, numbers.id, (SELECT min(id) FROM programs), 'marketing',
                   '+15005550006', 'hello', 1, 'GSM-7', 'queued', 0, NULL, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP
            FROM numbers, (SELECT 1 AS k UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4) k
            WHERE numbers.e164 LIKE '+1415700%'"""))
        connection.execute(text("""
            INSERT INTO messages (id, number_id, program_id, kind, sender, body, segments, encoding, status,
                                  attempts, batch_id, created_at, updated_at)
            SELECT 'b-' || numbers.id, numbers.id, (SELECT min(id) FROM programs), 'marketing', '+15005550006',
                   'hello', 1, 'GSM-7', 'queued', 0, :batch, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP
            FROM numbers WHERE numbers.e164 IN ('+14157000001', '+14157000002', '+14157000003')"""),
                           {"batch": BATCH})
        connection.execute(text("ANALYZE messages"))


def test_a_batchs_messages_are_found_by_the_partial_index(db, crowded_outbox, query_plan):
    with db.transaction() as session:
        assert len(outbox.queued_in_batch(session, BATCH, utcnow() + timedelta(seconds=1))) == 3
    plan = query_plan("SELECT id FROM messages WHERE batch_id = :batch AND status = 'queued'", {"batch": BATCH})
    assert "ix_messages_batch_id" in plan


def test_a_numbers_messages_are_found_by_the_number_and_time_index(db, crowded_outbox, query_plan):
    plan = query_plan("SELECT id FROM messages WHERE number_id = (SELECT id FROM numbers WHERE e164 = :e164)",
                 {"e164": "+14157000007"})
    assert "ix_messages_number_id_created_at" in plan


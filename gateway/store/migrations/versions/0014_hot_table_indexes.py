"""Fewer index entries per inbound text and per message: every ledger event wrote an entry in an index
on occurred_at that no query reads; every message one in an index on number_id that the index on
(number_id, created_at) already serves, and one in the batch_id index though only a batch's messages
have a batch_id (now a partial index of those). Measured in bench/README.md.

Revision ID: 0014_hot_table_indexes
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = '0014_hot_table_indexes'
down_revision = '0013'
branch_labels = None
depends_on = None

_BATCHED = sa.text("batch_id IS NOT NULL")


def upgrade() -> None:
    op.drop_index('ix_ledger_events_occurred_at', table_name='ledger_events')
    op.drop_index('ix_messages_number_id', table_name='messages')
    op.drop_index('ix_messages_batch_id', table_name='messages')
    op.create_index('ix_messages_batch_id', 'messages', ['batch_id'], unique=False,
                    postgresql_where=_BATCHED, sqlite_where=_BATCHED)


def downgrade() -> None:
    op.drop_index('ix_messages_batch_id', table_name='messages')
    op.create_index('ix_messages_batch_id', 'messages', ['batch_id'], unique=False)
    op.create_index('ix_messages_number_id', 'messages', ['number_id'], unique=False)
    op.create_index('ix_ledger_events_occurred_at', 'ledger_events', ['occurred_at'], unique=False)

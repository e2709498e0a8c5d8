"""The review list's index: the ledger's replies kept for review, alone (a partial index: no other
event writes an entry in it).

Revision ID: 0018_review_list
Revises: 0017_send_decisions
"""

import sqlalchemy as sa
from alembic import op

revision = '0018_review_list'
down_revision = '0017_send_decisions'
branch_labels = None
depends_on = None

_REVIEW_ONLY = sa.text("type = 'review'")


def upgrade() -> None:
    op.create_index('ix_ledger_events_review', 'ledger_events', ['id'], unique=False,
                    postgresql_where=_REVIEW_ONLY, sqlite_where=_REVIEW_ONLY)


def downgrade() -> None:
    op.drop_index('ix_ledger_events_review', table_name='ledger_events')

"""The pending requests' index keyed on what only a pending request has, its deadline, so that an
opt-out or a restore updates a consent in place (a HOT update, no new index entries).

Before, the index's predicate named `status`: PostgreSQL cannot update a row in place when a column an
index covers or filters on changes, so every STOP and START wrote a new entry in each of the consents'
indexes as well as the row (1,449 of 1,480 updates in a run of the inbound benchmark). A pending request
is the only consent with a deadline (a move to any other state clears it), so `expires_at IS NOT NULL`
holds the same rows, and a change of status alone no longer touches the index. Measured in bench/README.md.

Revision ID: 0019_hot_consent_updates
Revises: 0018_review_list
"""

import sqlalchemy as sa
from alembic import op

revision = '0019_hot_consent_updates'
down_revision = '0018_review_list'
branch_labels = None
depends_on = None

_WITH_DEADLINE = sa.text("expires_at IS NOT NULL")
_PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    op.drop_index('ix_consents_pending_expires_at', table_name='consents')
    op.create_index('ix_consents_pending_expires_at', 'consents', ['expires_at'], unique=False,
                    postgresql_where=_WITH_DEADLINE, sqlite_where=_WITH_DEADLINE)


def downgrade() -> None:
    op.drop_index('ix_consents_pending_expires_at', table_name='consents')
    op.create_index('ix_consents_pending_expires_at', 'consents', ['expires_at'], unique=False,
                    postgresql_where=_PENDING, sqlite_where=_PENDING)

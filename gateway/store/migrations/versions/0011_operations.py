"""Operations: the workers' heartbeats, and an index on pending double opt-in requests (counted on
every /metrics scrape and read by the expiry task every minute).

Revision ID: 0011
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'worker_heartbeats',
        sa.Column('worker', sa.String(length=200), nullable=False),
        sa.Column('beat_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('worker', name=op.f('pk_worker_heartbeats')),
    )
    op.create_index('ix_consents_pending_expires_at', 'consents', ['expires_at'], unique=False,
                    postgresql_where=sa.text("status = 'pending'"), sqlite_where=sa.text("status = 'pending'"))


def downgrade() -> None:
    op.drop_index('ix_consents_pending_expires_at', table_name='consents')
    op.drop_table('worker_heartbeats')

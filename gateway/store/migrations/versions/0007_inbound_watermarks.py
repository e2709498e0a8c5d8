"""Inbound reconciliation: how far the provider's message log has been read, per sender.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'inbound_watermarks',
        sa.Column('sender', sa.String(length=40), nullable=False),
        sa.Column('listed_through', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('sender', name=op.f('pk_inbound_watermarks')),
    )


def downgrade() -> None:
    op.drop_table('inbound_watermarks')

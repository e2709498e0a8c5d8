"""Each send decision kept with the message's history; console accounts that can be disabled.

Revision ID: 0017_send_decisions
Revises: 0016_number_lookups
"""

import sqlalchemy as sa
from alembic import op

revision = '0017_send_decisions'
down_revision = '0016_number_lookups'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('message_events') as batch:
        batch.add_column(sa.Column('decision', sa.Text(), nullable=True))
    with op.batch_alter_table('console_users') as batch:
        batch.add_column(sa.Column('disabled_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('console_users') as batch:
        batch.drop_column('disabled_at')
    with op.batch_alter_table('message_events') as batch:
        batch.drop_column('decision')

"""The senders Twilio itself blocks a number on (its own STOP filtering), kept on the number's row.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('numbers') as batch:
        batch.add_column(sa.Column('twilio_blocks', sa.Text(), nullable=False, server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('numbers') as batch:
        batch.drop_column('twilio_blocks')

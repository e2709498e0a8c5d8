"""Message history names the rule behind a deferral or refusal: law, version, citation (JSON text).

Revision ID: 0009
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: adding it rewrites nothing, and steps without a rule stay NULL.
    with op.batch_alter_table('message_events') as batch:
        batch.add_column(sa.Column('rule', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('message_events') as batch:
        batch.drop_column('rule')

"""When a number was last said to be a wrong number: it may have been reassigned.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('numbers') as batch:
        batch.add_column(sa.Column('possibly_reassigned_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('numbers') as batch:
        batch.drop_column('possibly_reassigned_at')

"""Outbound: messages.recheck_at (when the sweeper next looks at a message nothing has moved), an
index for the gate's count of a number's recent texts, and numbers.region (where phonenumbers places
the number, so the send gate need not parse it again).

Revision ID: 0005
Revises: 0001
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('numbers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('region', sa.String(length=3), nullable=True))
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('recheck_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_messages_status_recheck_at', ['status', 'recheck_at'], unique=False)
        batch_op.create_index('ix_messages_number_id_created_at', ['number_id', 'created_at'], unique=False)
    # numbers.region stays empty on older rows: the gate works it out from the number when missing.
    # Rows from before this column: let the next sweep look at every unfinished one.
    op.execute("UPDATE messages SET recheck_at = updated_at WHERE status IN ('queued', 'sent')")
    op.execute("UPDATE messages SET recheck_at = not_before WHERE status = 'deferred'")


def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_number_id_created_at')
        batch_op.drop_index('ix_messages_status_recheck_at')
        batch_op.drop_column('recheck_at')
    with op.batch_alter_table('numbers', schema=None) as batch_op:
        batch_op.drop_column('region')

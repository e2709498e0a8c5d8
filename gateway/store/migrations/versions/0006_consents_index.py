"""Consents: drop the index on number_id alone. The unique (number_id, program_id) index starts with
number_id and serves every look-up by number; the second index only cost a write per new consent.

Revision ID: 0006
Revises: 0005
"""

from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('consents', schema=None) as batch_op:
        batch_op.drop_index('ix_consents_number_id')


def downgrade() -> None:
    with op.batch_alter_table('consents', schema=None) as batch_op:
        batch_op.create_index('ix_consents_number_id', ['number_id'], unique=False)

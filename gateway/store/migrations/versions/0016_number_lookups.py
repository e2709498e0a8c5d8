"""Carrier look-ups: each number's last line type, carrier and reassigned-number check, and the days
of the carriers' Deactivations list read through (with the numbers handled, so a run resumes).

Revision ID: 0016_number_lookups
Revises: 0015_bulk_imports
"""

import sqlalchemy as sa
from alembic import op

revision = '0016_number_lookups'
down_revision = '0015_bulk_imports'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('numbers') as batch:
        batch.add_column(sa.Column('line_type', sa.String(length=20), nullable=True))
        batch.add_column(sa.Column('carrier', sa.String(length=120), nullable=True))
        batch.add_column(sa.Column('line_checked_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('reassigned_since', sa.Date(), nullable=True))
        batch.add_column(sa.Column('reassigned_checked_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        'deactivation_days',
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('listed', sa.Integer(), nullable=False),
        sa.Column('held', sa.Integer(), nullable=False),
        sa.Column('ended', sa.Integer(), nullable=False),
        sa.Column('ported', sa.Integer(), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('day', name=op.f('pk_deactivation_days')),
    )
    op.create_table(
        'deactivation_checks',
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('number_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('verdict', sa.String(length=20), nullable=False),
        sa.Column('checked_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['number_id'], ['numbers.id'], name=op.f('fk_deactivation_checks_number_id_numbers')),
        sa.PrimaryKeyConstraint('day', 'number_id', name=op.f('pk_deactivation_checks')),
    )


def downgrade() -> None:
    op.drop_table('deactivation_checks')
    op.drop_table('deactivation_days')
    with op.batch_alter_table('numbers') as batch:
        for column in ('reassigned_checked_at', 'reassigned_since', 'line_checked_at', 'carrier', 'line_type'):
            batch.drop_column(column)

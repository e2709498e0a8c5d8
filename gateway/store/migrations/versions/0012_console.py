"""The compliance console: staff accounts, server-side sessions and the access log.

Revision ID: 0012
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'console_users',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=120), nullable=False),
        sa.Column('role', sa.String(length=20), nullable=False),
        sa.Column('password_hash', sa.String(length=200), nullable=False),
        sa.Column('failed_logins', sa.Integer(), nullable=False),
        sa.Column('locked_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_login_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_console_users')),
        sa.UniqueConstraint('name', name=op.f('uq_console_users_name')),
    )
    op.create_table(
        'console_sessions',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=True),
        sa.Column('data', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['console_users.id'], ondelete='CASCADE',
                                name=op.f('fk_console_sessions_user_id_console_users')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_console_sessions')),
    )
    op.create_index(op.f('ix_console_sessions_expires_at'), 'console_sessions', ['expires_at'], unique=False)
    op.create_table(
        'console_access_log',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=True),
        sa.Column('user_name', sa.String(length=120), nullable=False),
        sa.Column('action', sa.String(length=30), nullable=False),
        sa.Column('number_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
        sa.Column('detail', sa.String(length=200), nullable=True),
        sa.Column('address', sa.String(length=64), nullable=True),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['number_id'], ['numbers.id'], name=op.f('fk_console_access_log_number_id_numbers')),
        sa.ForeignKeyConstraint(['user_id'], ['console_users.id'], ondelete='SET NULL',
                                name=op.f('fk_console_access_log_user_id_console_users')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_console_access_log')),
    )
    op.create_index(op.f('ix_console_access_log_number_id'), 'console_access_log', ['number_id'], unique=False)
    op.create_index(op.f('ix_console_access_log_at'), 'console_access_log', ['at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_console_access_log_at'), table_name='console_access_log')
    op.drop_index(op.f('ix_console_access_log_number_id'), table_name='console_access_log')
    op.drop_table('console_access_log')
    op.drop_index(op.f('ix_console_sessions_expires_at'), table_name='console_sessions')
    op.drop_table('console_sessions')
    op.drop_table('console_users')

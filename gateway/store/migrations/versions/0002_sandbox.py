"""Sandbox: the simulated Twilio's messages, refused creates, opt-out list and scheduled steps.

Revision ID: 0002
Revises: 0001
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('sandbox_messages',
    sa.Column('sid', sa.String(length=34), nullable=False),
    sa.Column('account_sid', sa.String(length=34), nullable=False),
    sa.Column('direction', sa.String(length=16), nullable=False),
    sa.Column('origin', sa.String(length=10), nullable=False),
    sa.Column('handset', sa.String(length=20), nullable=False),
    sa.Column('to_number', sa.String(length=20), nullable=False),
    sa.Column('from_number', sa.String(length=20), nullable=True),
    sa.Column('messaging_service_sid', sa.String(length=34), nullable=True),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('num_segments', sa.Integer(), nullable=False),
    sa.Column('num_media', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('error_code', sa.Integer(), nullable=True),
    sa.Column('error_message', sa.String(length=300), nullable=True),
    sa.Column('status_callback', sa.String(length=1000), nullable=True),
    sa.Column('date_created', sa.DateTime(timezone=True), nullable=False),
    sa.Column('date_updated', sa.DateTime(timezone=True), nullable=False),
    sa.Column('date_sent', sa.DateTime(timezone=True), nullable=True),
    sa.Column('webhook_status', sa.Integer(), nullable=True),
    sa.Column('webhook_error_code', sa.Integer(), nullable=True),
    sa.Column('webhook_note', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('sid', name=op.f('pk_sandbox_messages'))
    )
    op.create_index('ix_sandbox_messages_handset_created', 'sandbox_messages', ['handset', 'date_created'], unique=False)
    op.create_table('sandbox_refusals',
    sa.Column('id', BigId, nullable=False),
    sa.Column('handset', sa.String(length=40), nullable=False),
    sa.Column('sender', sa.String(length=40), nullable=True),
    sa.Column('origin', sa.String(length=10), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('error_code', sa.Integer(), nullable=False),
    sa.Column('error_message', sa.String(length=300), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sandbox_refusals'))
    )
    op.create_index(op.f('ix_sandbox_refusals_handset'), 'sandbox_refusals', ['handset'], unique=False)
    op.create_table('sandbox_opt_outs',
    sa.Column('handset', sa.String(length=20), nullable=False),
    sa.Column('sender', sa.String(length=34), nullable=False),
    sa.Column('keyword', sa.String(length=20), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('handset', 'sender', name=op.f('pk_sandbox_opt_outs'))
    )
    op.create_table('sandbox_events',
    sa.Column('id', BigId, nullable=False),
    sa.Column('message_sid', sa.String(length=34), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('message_status', sa.String(length=20), nullable=True),
    sa.Column('error_code', sa.Integer(), nullable=True),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('state', sa.String(length=10), nullable=False),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('claimed_by', sa.String(length=80), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('url', sa.String(length=1000), nullable=True),
    sa.Column('response_status', sa.Integer(), nullable=True),
    sa.Column('outcome', sa.Text(), nullable=True),
    sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sandbox_events'))
    )
    op.create_index(op.f('ix_sandbox_events_message_sid'), 'sandbox_events', ['message_sid'], unique=False)
    op.create_index('ix_sandbox_events_state_due', 'sandbox_events', ['state', 'due_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_sandbox_events_state_due', table_name='sandbox_events')
    op.drop_index(op.f('ix_sandbox_events_message_sid'), table_name='sandbox_events')
    op.drop_table('sandbox_events')
    op.drop_table('sandbox_opt_outs')
    op.drop_index(op.f('ix_sandbox_refusals_handset'), table_name='sandbox_refusals')
    op.drop_table('sandbox_refusals')
    op.drop_index('ix_sandbox_messages_handset_created', table_name='sandbox_messages')
    op.drop_table('sandbox_messages')

"""Bulk imports: where each stands (so an interrupted one continues), the rows it refused, and the
pieces of an uploaded file.

Revision ID: 0015_bulk_imports
Revises: 0014_hot_table_indexes
"""

import sqlalchemy as sa
from alembic import op

revision = '0015_bulk_imports'
down_revision = '0014_hot_table_indexes'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'imports',
        sa.Column('id', sa.String(length=40), nullable=False),
        sa.Column('digest', sa.String(length=64), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('actor', sa.String(length=120), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('total_lines', sa.Integer(), nullable=True),
        sa.Column('line_done', sa.Integer(), nullable=False),
        sa.Column('applied', sa.Integer(), nullable=False),
        sa.Column('refused', sa.Integer(), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_imports')),
    )
    op.create_index(op.f('ix_imports_digest'), 'imports', ['digest'], unique=False)
    op.create_table(
        'import_refusals',
        sa.Column('import_id', sa.String(length=40), nullable=False),
        sa.Column('line', sa.Integer(), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(['import_id'], ['imports.id'], ondelete='CASCADE',
                                name=op.f('fk_import_refusals_import_id_imports')),
        sa.PrimaryKeyConstraint('import_id', 'line', name=op.f('pk_import_refusals')),
    )
    op.create_table(
        'import_parts',
        sa.Column('import_id', sa.String(length=40), nullable=False),
        sa.Column('part', sa.Integer(), nullable=False),
        sa.Column('data', sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(['import_id'], ['imports.id'], ondelete='CASCADE',
                                name=op.f('fk_import_parts_import_id_imports')),
        sa.PrimaryKeyConstraint('import_id', 'part', name=op.f('pk_import_parts')),
    )


def downgrade() -> None:
    op.drop_table('import_parts')
    op.drop_table('import_refusals')
    op.drop_index(op.f('ix_imports_digest'), table_name='imports')
    op.drop_table('imports')

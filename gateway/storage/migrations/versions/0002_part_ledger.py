"""part ledger: emails.parts, documents.ordinal

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 15:20:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('emails', schema=None) as batch_op:
        batch_op.add_column(sa.Column('parts', sa.JSON(), server_default='[]', nullable=False))
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ordinal', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.drop_column('ordinal')
    with op.batch_alter_table('emails', schema=None) as batch_op:
        batch_op.drop_column('parts')

"""sender authentication: emails.authentication, known_senders

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 15:50:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('emails', schema=None) as batch_op:
        batch_op.add_column(sa.Column('authentication', sa.JSON(), nullable=True))
    op.create_table('known_senders',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('queue_id', sa.Integer(), nullable=False),
    sa.Column('domain', sa.String(length=255), nullable=False),
    sa.Column('display_name', sa.Text(), nullable=False),
    sa.Column('address', sa.Text(), nullable=False),
    sa.Column('first_seen', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['queue_id'], ['queues.id'], name=op.f('fk_known_senders_queue_id_queues')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_known_senders')),
    sa.UniqueConstraint('queue_id', 'domain', 'display_name', name='uq_known_senders')
    )
    with op.batch_alter_table('known_senders', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_known_senders_queue_id'), ['queue_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('known_senders', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_known_senders_queue_id'))
    op.drop_table('known_senders')
    with op.batch_alter_table('emails', schema=None) as batch_op:
        batch_op.drop_column('authentication')

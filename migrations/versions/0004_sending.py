"""sending: rate-limit and daily-quota counters shared by every node

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 22:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('send_counters',
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('key', sa.String(length=253), nullable=False),
    sa.Column('period', sa.String(length=8), nullable=False),
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('count', sa.Integer(), server_default='0', nullable=False),
    sa.PrimaryKeyConstraint('scope', 'key', 'period', 'window_start',
                            name=op.f('pk_send_counters'))
    )
    op.create_index('ix_send_counters_window_start', 'send_counters', ['window_start'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_send_counters_window_start', table_name='send_counters')
    op.drop_table('send_counters')

"""webhook_deliveries.last_attempt_at: when the last POST of an event was answered

The endpoint's figures name its last answered attempt; neither `finished_at` (empty
while an event is retried) nor `next_attempt_at` (the retry's time, or a lease's end)
says when that was.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 05:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('webhook_deliveries',
                  sa.Column('last_attempt_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column('webhook_deliveries', 'last_attempt_at')

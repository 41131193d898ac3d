"""deliveries.prefix: the header fields a forward adds, sent before the stored message

A forwarded message is no longer stored twice: the delivery points at the received
message and keeps only what forwarding puts in front of it (DKIM signatures, the ARC
set, a handler's X- fields), a few hundred bytes.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 02:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('deliveries', sa.Column('prefix', sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    op.drop_column('deliveries', 'prefix')

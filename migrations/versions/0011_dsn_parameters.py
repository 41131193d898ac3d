"""DSN extension parameters (RFC 3461): RET and ENVID per message, NOTIFY and ORCPT
per delivery

What a sender asked of our delivery status notifications, kept with the message and
each recipient so the queue honours it (and passes it on to next hops that offer DSN).
NULL everywhere means "not asked": behaviour as before.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 05:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('messages', sa.Column('dsn_ret', sa.String(length=4), nullable=True))
    op.add_column('messages', sa.Column('dsn_envid', sa.Text(), nullable=True))
    op.add_column('deliveries', sa.Column('dsn_notify', sa.String(length=32), nullable=True))
    op.add_column('deliveries', sa.Column('dsn_orcpt', sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column('deliveries', 'dsn_orcpt')
    op.drop_column('deliveries', 'dsn_notify')
    op.drop_column('messages', 'dsn_envid')
    op.drop_column('messages', 'dsn_ret')

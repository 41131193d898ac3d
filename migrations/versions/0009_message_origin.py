"""messages.origin_id: a forwarded copy points at the message the sender was told about

One id (the 250 reply's queue id) then finds the forwarded copies, their deliveries and
their events. Partial index: only forwarded copies have it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 02:00:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('messages', sa.Column('origin_id', postgresql.UUID(as_uuid=True),
                                        nullable=True))
    op.create_index('ix_messages_origin_id', 'messages', ['origin_id'], unique=False,
                    postgresql_where=sa.text('origin_id IS NOT NULL'))


def downgrade() -> None:
    op.drop_index('ix_messages_origin_id', table_name='messages',
                  postgresql_where=sa.text('origin_id IS NOT NULL'))
    op.drop_column('messages', 'origin_id')

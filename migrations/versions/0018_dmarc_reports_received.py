"""dmarc_reports_received: aggregate reports other domains send about ours

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 06:00:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'dmarc_reports_received',
        sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.Column('message_id', sa.UUID(), nullable=True),
        sa.Column('filename', sa.String(length=255), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('org_name', sa.String(length=253), nullable=True),
        sa.Column('report_id', sa.String(length=253), nullable=True),
        sa.Column('policy_domain', sa.String(length=253), nullable=True),
        sa.Column('period_begin', sa.DateTime(timezone=True), nullable=True),
        sa.Column('period_end', sa.DateTime(timezone=True), nullable=True),
        sa.Column('messages', sa.Integer(), server_default='0', nullable=False),
        sa.Column('records', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.ForeignKeyConstraint(['message_id'], ['messages.id'], ondelete='SET NULL',
                                name=op.f('fk_dmarc_reports_received_message_id_messages')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_dmarc_reports_received')),
    )
    op.create_index('ix_dmarc_reports_received_period_begin', 'dmarc_reports_received',
                    ['period_begin'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_dmarc_reports_received_period_begin',
                  table_name='dmarc_reports_received')
    op.drop_table('dmarc_reports_received')

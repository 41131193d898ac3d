"""tls_reports_received: TLS reports (RFC 8460) other domains send about ours

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07 06:20:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'tls_reports_received',
        sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.Column('message_id', sa.UUID(), nullable=True),
        sa.Column('filename', sa.String(length=255), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('org_name', sa.String(length=253), nullable=True),
        sa.Column('report_id', sa.String(length=253), nullable=True),
        sa.Column('period_begin', sa.DateTime(timezone=True), nullable=True),
        sa.Column('period_end', sa.DateTime(timezone=True), nullable=True),
        sa.Column('successful', sa.BigInteger(), server_default='0', nullable=False),
        sa.Column('failed', sa.BigInteger(), server_default='0', nullable=False),
        sa.Column('policies', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.ForeignKeyConstraint(['message_id'], ['messages.id'], ondelete='SET NULL',
                                name=op.f('fk_tls_reports_received_message_id_messages')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_tls_reports_received')),
    )
    op.create_index('ix_tls_reports_received_period_begin', 'tls_reports_received',
                    ['period_begin'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_tls_reports_received_period_begin', table_name='tls_reports_received')
    op.drop_table('tls_reports_received')

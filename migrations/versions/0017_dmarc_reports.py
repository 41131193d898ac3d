"""dmarc_results and dmarc_reports_sent: DMARC aggregate reports (RFC 7489 §7.2)

`dmarc_results` keeps, per received message whose From domain asks for reports, what its
aggregate report row needs; `dmarc_reports_sent` is the once-across-nodes claim of one
report period of one policy domain and its outcome.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 05:50:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'dmarc_results',
        sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column('ts', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.Column('source_ip', postgresql.INET(), nullable=False),
        sa.Column('header_from', sa.String(length=253), nullable=False),
        sa.Column('envelope_from', sa.String(length=253), nullable=False),
        sa.Column('policy_domain', sa.String(length=253), nullable=False),
        sa.Column('record', sa.Text(), nullable=False),
        sa.Column('result', sa.String(length=16), nullable=False),
        sa.Column('disposition', sa.String(length=16), nullable=False),
        sa.Column('dkim_aligned', sa.Boolean(), nullable=False),
        sa.Column('spf_aligned', sa.Boolean(), nullable=False),
        sa.Column('dkim', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('spf_domain', sa.String(length=253), nullable=False),
        sa.Column('spf_scope', sa.String(length=8), nullable=False),
        sa.Column('spf_result', sa.String(length=16), nullable=False),
        sa.Column('reason', sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_dmarc_results')),
    )
    op.create_index('ix_dmarc_results_ts', 'dmarc_results', ['ts'], unique=False)
    op.create_table(
        'dmarc_reports_sent',
        sa.Column('policy_domain', sa.String(length=253), nullable=False),
        sa.Column('period_begin', sa.DateTime(timezone=True), nullable=False),
        sa.Column('period_end', sa.DateTime(timezone=True), nullable=False),
        sa.Column('report_id', sa.String(length=64), nullable=False),
        sa.Column('node_id', sa.String(length=128), nullable=False),
        sa.Column('records', sa.Integer(), server_default='0', nullable=False),
        sa.Column('messages', sa.Integer(), server_default='0', nullable=False),
        sa.Column('destinations', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.PrimaryKeyConstraint('policy_domain', 'period_begin',
                                name=op.f('pk_dmarc_reports_sent')),
    )


def downgrade() -> None:
    op.drop_table('dmarc_reports_sent')
    op.drop_index('ix_dmarc_results_ts', table_name='dmarc_results')
    op.drop_table('dmarc_results')

"""tls_report_sessions: outbound TLS outcomes counted per day for RFC 8460 reports

One row per (day, recipient domain, policy, result, sending IP, receiving MX host and
IP); nodes add to `count` with INSERT ... ON CONFLICT DO UPDATE (mta/queue/tlsrpt.py).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 05:50:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'tls_report_sessions',
        sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('policy_domain', sa.Text(), nullable=False),
        sa.Column('policy_type', sa.String(length=16), nullable=False),
        sa.Column('policy_key', sa.String(length=64), nullable=False),
        sa.Column('policy_strings', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('result', sa.String(length=40), nullable=False),
        sa.Column('sending_ip', sa.Text(), server_default='', nullable=False),
        sa.Column('receiving_mx', sa.Text(), server_default='', nullable=False),
        sa.Column('receiving_ip', sa.Text(), server_default='', nullable=False),
        sa.Column('count', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_tls_report_sessions')),
        sa.UniqueConstraint('day', 'policy_domain', 'policy_type', 'policy_key', 'result',
                            'sending_ip', 'receiving_mx', 'receiving_ip',
                            name='uq_tls_report_sessions_counter'),
    )


def downgrade() -> None:
    op.drop_table('tls_report_sessions')

"""tls_report_runs: each day's TLS reports sent once across nodes (a lease per day)

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 05:45:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'tls_report_runs',
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('lease_owner', sa.String(length=128), nullable=False),
        sa.Column('lease_until', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('summary', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.PrimaryKeyConstraint('day', name=op.f('pk_tls_report_runs')),
    )


def downgrade() -> None:
    op.drop_table('tls_report_runs')

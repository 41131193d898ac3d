"""received reports: an index on received_at (the lists read the last days, retention
deletes the oldest: observe.report_retention)

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07 12:50:00
"""
from alembic import op

revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None

TABLES = ('dmarc_reports_received', 'tls_reports_received')


def upgrade() -> None:
    for table in TABLES:
        op.create_index(f'ix_{table}_received_at', table, ['received_at'])


def downgrade() -> None:
    for table in TABLES:
        op.drop_index(f'ix_{table}_received_at', table_name=table)

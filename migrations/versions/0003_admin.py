"""admin API: editable flags of sending subdomains

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-23 21:45:00

`drop_suppressed_recipients` and `preview_enabled` are the two settings the reference's
PATCH /zones/{zone_id}/email/sending/subdomains/{id} edits (mta/api/sending_subdomains.py).
"""
from alembic import op
import sqlalchemy as sa

revision = '0003'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('sending_domains', sa.Column('drop_suppressed_recipients', sa.Boolean(),
                                               server_default=sa.text('false'), nullable=False))
    op.add_column('sending_domains', sa.Column('preview_enabled', sa.Boolean(),
                                               server_default=sa.text('false'), nullable=False))


def downgrade() -> None:
    op.drop_column('sending_domains', 'preview_enabled')
    op.drop_column('sending_domains', 'drop_suppressed_recipients')

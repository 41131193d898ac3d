"""dkim_keys.purpose and not_before: key rotation and import (`mta keys rotate|import`)

A key now says what it signs (`sending` for a sending domain, `forwarding` for forwarded
mail, replies and verification mail) and from when (`not_before`); `retired_at` becomes
the end of the old key's grace period (it may lie in the future). Existing keys: those
under a sending domain's own selectors (`dkim_selector`, and `dkim_selector` + `ed`) are
sending keys, every other one a forwarding key.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 04:40:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('dkim_keys', sa.Column('purpose', sa.String(length=16), nullable=False,
                                         server_default='forwarding'))
    op.execute("""
        UPDATE dkim_keys k SET purpose = 'sending'
          FROM sending_domains d
         WHERE d.name = k.domain
           AND k.selector IN (d.dkim_selector, d.dkim_selector || 'ed')
    """)
    op.alter_column('dkim_keys', 'purpose', server_default=None)
    op.add_column('dkim_keys', sa.Column('not_before', sa.DateTime(timezone=True),
                                         nullable=True))
    op.create_check_constraint(op.f('ck_dkim_keys_purpose'), 'dkim_keys',
                               "purpose in ('sending', 'forwarding')")


def downgrade() -> None:
    op.drop_constraint(op.f('ck_dkim_keys_purpose'), 'dkim_keys', type_='check')
    op.drop_column('dkim_keys', 'not_before')
    op.drop_column('dkim_keys', 'purpose')

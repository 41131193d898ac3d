"""accounts: unique names (`--account NAME` must name one account)

Existing duplicates keep their first-created row's name; the others get " (2)", " (3)"
... appended, so that no account is lost and every one can still be named.

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-07 01:40:00
"""
from alembic import op

revision = '0008'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        UPDATE accounts a SET name = a.name || ' (' || d.n || ')'
        FROM (SELECT id, row_number() OVER (PARTITION BY name ORDER BY created_at, id) AS n
              FROM accounts) d
        WHERE a.id = d.id AND d.n > 1
    """)
    op.create_unique_constraint(op.f('uq_accounts_name'), 'accounts', ['name'])


def downgrade() -> None:
    op.drop_constraint(op.f('uq_accounts_name'), 'accounts', type_='unique')

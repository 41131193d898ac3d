"""routing_rules.pattern_type, routing_rules.pattern: wildcard and regex rules

A pattern rule matches recipients by a wildcard (`sales-*@example.com`) or an RE2
regular expression instead of literal matchers (mta/routing/patterns.py). Both columns
are NULL for every existing rule, which keeps its behaviour.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 04:40:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('routing_rules', sa.Column('pattern_type', sa.String(length=16), nullable=True))
    op.add_column('routing_rules', sa.Column('pattern', sa.String(length=1024), nullable=True))
    op.create_check_constraint(
        op.f('ck_routing_rules_pattern'), 'routing_rules',
        "(pattern_type IS NULL) = (pattern IS NULL) AND (pattern_type IS NULL "
        "OR pattern_type IN ('wildcard', 'regex'))")


def downgrade() -> None:
    op.drop_constraint(op.f('ck_routing_rules_pattern'), 'routing_rules', type_='check')
    op.drop_column('routing_rules', 'pattern')
    op.drop_column('routing_rules', 'pattern_type')

"""webhook_endpoints and the webhook outbox (webhook_deliveries), filled by a trigger on events

Every activity event is written by one of several paths (the MX's intake, the inbound
router, the send pipeline, the delivery workers' merged outcomes, bounce and complaint
intake, handlers). A statement-level trigger on `events` copies each event an account's
endpoints want into the outbox in the same statement, hence the same transaction: an
event is in the outbox iff it was committed, whatever path wrote it. With no enabled
endpoint at all the trigger returns after one index probe.

`webhook_event_type()` is the one table from activity statuses to webhook event types
(docs/webhooks.md lists them); NULL means "not a webhook event".

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 05:00:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

EVENT_TYPE = """
CREATE FUNCTION webhook_event_type(direction text, status text, mail_from text,
                                   details jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE
    -- the DSNs we send ourselves (null sender) are not the account's mail
    WHEN direction = 'outbound' AND mail_from = '' THEN NULL
    WHEN direction = 'outbound' AND status = 'Sent' THEN 'sent'
    WHEN direction = 'outbound' AND status = 'Delivered' THEN 'delivered'
    WHEN direction = 'outbound' AND status = 'Deferred' THEN 'deferred'
    WHEN direction = 'outbound' AND status = 'Delivery failed' THEN 'bounced'
    WHEN direction = 'outbound' AND status = 'Complained' THEN 'complained'
    WHEN direction = 'outbound' AND status = 'Rejected'
         AND details->>'reason' = 'suppressed' THEN 'suppressed'
    WHEN direction = 'inbound' AND status = 'Forwarded' THEN 'inbound.forwarded'
    WHEN direction = 'inbound' AND status = 'Rejected' THEN 'inbound.rejected'
    WHEN direction = 'inbound' AND status = 'Delivery failed'
         AND details->>'in_session' = 'true' THEN 'inbound.rejected'
  END
$$;
"""

TRIGGER_FUNCTION = """
CREATE FUNCTION webhook_outbox_from_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM webhook_endpoints WHERE enabled) THEN
    RETURN NULL;
  END IF;
  INSERT INTO webhook_deliveries (endpoint_id, event_id, message_id, event_type, event)
  SELECT w.id, n.id, n.message_id, t.type, to_jsonb(n)
  FROM new_events n
  CROSS JOIN LATERAL (SELECT webhook_event_type(n.direction, n.status, n.mail_from,
                                                n.details) AS type) t
  JOIN webhook_endpoints w ON w.account_id = n.account_id AND w.enabled
       AND (cardinality(w.event_types) = 0 OR t.type = ANY (w.event_types))
  WHERE t.type IS NOT NULL
  ORDER BY n.id, w.id;
  RETURN NULL;
END
$$;
"""

TRIGGER = """
CREATE TRIGGER events_webhook_outbox AFTER INSERT ON events
REFERENCING NEW TABLE AS new_events
FOR EACH STATEMENT EXECUTE FUNCTION webhook_outbox_from_events();
"""


def upgrade() -> None:
    op.create_table(
        'webhook_endpoints',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('account_id', sa.String(length=32), nullable=False),
        sa.Column('url', sa.Text(), nullable=False),
        sa.Column('secret', sa.Text(), nullable=False),
        sa.Column('event_types', postgresql.ARRAY(sa.Text()), server_default='{}',
                  nullable=False),
        sa.Column('description', sa.Text(), nullable=True),
        sa.Column('enabled', sa.Boolean(), server_default=sa.text('true'), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.Column('modified_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ondelete='CASCADE',
                                name=op.f('fk_webhook_endpoints_account_id_accounts')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_endpoints')),
    )
    op.create_index(op.f('ix_webhook_endpoints_account_id'), 'webhook_endpoints',
                    ['account_id'], unique=False)
    op.create_table(
        'webhook_deliveries',
        sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column('endpoint_id', sa.String(length=32), nullable=False),
        sa.Column('event_id', sa.BigInteger(), nullable=False),
        sa.Column('message_id', sa.UUID(), nullable=True),
        sa.Column('event_type', sa.String(length=32), nullable=False),
        sa.Column('event', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('status', sa.String(length=16), server_default='pending', nullable=False),
        sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True),
                  server_default=sa.text('now()'), nullable=False),
        sa.Column('lease_owner', sa.String(length=128), nullable=True),
        sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_status_code', sa.SmallInteger(), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['endpoint_id'], ['webhook_endpoints.id'], ondelete='CASCADE',
                                name=op.f('fk_webhook_deliveries_endpoint_id_webhook_endpoints')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries')),
    )
    op.create_index('ix_webhook_deliveries_due', 'webhook_deliveries', ['next_attempt_at'],
                    unique=False, postgresql_where=sa.text("status = 'pending'"))
    op.create_index('ix_webhook_deliveries_endpoint_id_id', 'webhook_deliveries',
                    ['endpoint_id', 'id'], unique=False)
    op.create_index('ix_webhook_deliveries_chain', 'webhook_deliveries',
                    ['endpoint_id', 'message_id', 'id'], unique=False,
                    postgresql_where=sa.text("status = 'pending'"))
    op.create_index('ix_webhook_deliveries_finished_at', 'webhook_deliveries',
                    ['finished_at'], unique=False)
    op.execute(EVENT_TYPE)
    op.execute(TRIGGER_FUNCTION)
    op.execute(TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER events_webhook_outbox ON events")
    op.execute("DROP FUNCTION webhook_outbox_from_events()")
    op.execute("DROP FUNCTION webhook_event_type(text, text, text, jsonb)")
    op.drop_table('webhook_deliveries')
    op.drop_table('webhook_endpoints')

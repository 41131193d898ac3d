"""The database schema: SQLAlchemy 2.0 typed models.

Every schema change needs an Alembic revision in `migrations/versions/`;
`tests/test_migrations.py` fails when these models and the migrations disagree.

Identifiers that the admin API shows (accounts, zones, rules, addresses, suppressions,
sending subdomains) are 32 hex characters, like the reference API's; internal rows
(messages, deliveries, attempts, events) use integers or UUIDs.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, INET, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_tag() -> str:
    """A 32-hex identifier, the shape of the reference API's ids."""
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


Tag = String(32)
Timestamp = DateTime(timezone=True)


def created_col() -> Mapped[datetime]:
    return mapped_column(Timestamp, server_default=func.now(), nullable=False)


def parent_col(target: str) -> Mapped[Any]:
    """The key of the row this one belongs to (`target`, e.g. "accounts.id"): deleted
    with that row (ON DELETE CASCADE), and indexed, as a parent's rows are looked up by
    it (and the cascade finds them by it)."""
    return mapped_column(ForeignKey(target, ondelete="CASCADE"), index=True)


def modified_col() -> Mapped[datetime]:
    return mapped_column(Timestamp, server_default=func.now(), onupdate=func.now(),
                         nullable=False)


# --- tenancy and credentials ------------------------------------------------------


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[str] = mapped_column(Tag, primary_key=True, default=new_tag)
    # Unique: `--account NAME` and routing files name accounts by it.
    name: Mapped[str] = mapped_column(String(255), nullable=False, unique=True)
    created_at: Mapped[datetime] = created_col()


class ApiToken(Base):
    """A Bearer token; only its SHA-256 is stored. `permissions` names what it may do
    (e.g. `email_routing:read`, `email_routing:edit`, `email_sending:send`)."""

    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(Tag, primary_key=True, default=new_tag)
    account_id: Mapped[str] = parent_col("accounts.id")
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True, nullable=False)
    permissions: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False,
                                                   server_default="{}")
    created_at: Mapped[datetime] = created_col()
    expires_at: Mapped[datetime | None] = mapped_column(Timestamp)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)
    last_used_at: Mapped[datetime | None] = mapped_column(Timestamp)


# --- routing ------------------------------------------------------------------------


class Zone(Base):
    """A DNS zone the operator owns, with its Email Routing settings."""

    __tablename__ = "zones"
    id: Mapped[str] = mapped_column(Tag, primary_key=True, default=new_tag)
    account_id: Mapped[str] = parent_col("accounts.id")
    name: Mapped[str] = mapped_column(String(253), unique=True, nullable=False)
    routing_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False,
                                                  server_default=text("false"))
    support_subaddress: Mapped[bool] = mapped_column(Boolean, nullable=False,
                                                     server_default=text("true"))
    # ready | unconfigured | misconfigured | misconfigured/locked | unlocked
    routing_status: Mapped[str] = mapped_column(String(32), nullable=False,
                                                server_default="unconfigured")
    created_at: Mapped[datetime] = created_col()
    modified_at: Mapped[datetime] = modified_col()

    domains: Mapped[list[RoutingDomain]] = relationship(back_populates="zone",
                                                        cascade="all, delete-orphan")


class RoutingDomain(Base):
    """A domain that receives mail through routing: the zone apex or one of its
    subdomains (at most `limits.domains_per_zone` per zone)."""

    __tablename__ = "routing_domains"
    id: Mapped[str] = mapped_column(Tag, primary_key=True, default=new_tag)
    zone_id: Mapped[str] = parent_col("zones.id")
    name: Mapped[str] = mapped_column(String(253), unique=True, nullable=False)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    created_at: Mapped[datetime] = created_col()

    zone: Mapped[Zone] = relationship(back_populates="domains")


class RoutingRule(Base):
    """A rule: matchers [{type: literal, field: to, value}] or [{type: all}], actions
    [{type: forward|worker|drop, value: [...]}]. The catch-all is the one rule per zone
    with `is_catch_all`. A pattern rule (mta/routing/patterns.py) has `pattern_type`
    (wildcard | regex) and `pattern` instead of matchers (its `matchers` is [])."""

    __tablename__ = "routing_rules"
    id: Mapped[str] = mapped_column(Tag, primary_key=True, default=new_tag)
    zone_id: Mapped[str] = parent_col("zones.id")
    name: Mapped[str] = mapped_column(String(256), nullable=False, server_default="")
    priority: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    is_catch_all: Mapped[bool] = mapped_column(Boolean, nullable=False,
                                               server_default=text("false"))
    matchers: Mapped[list[dict]] = mapped_column(JSONB, nullable=False)
    actions: Mapped[list[dict]] = mapped_column(JSONB, nullable=False)
    pattern_type: Mapped[str | None] = mapped_column(String(16))
    pattern: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = created_col()
    modified_at: Mapped[datetime] = modified_col()

    __table_args__ = (
        Index("uq_routing_rules_catch_all", "zone_id", unique=True,
              postgresql_where=text("is_catch_all")),
        CheckConstraint("(pattern_type IS NULL) = (pattern IS NULL) AND (pattern_type IS NULL "
                        "OR pattern_type IN ('wildcard', 'regex'))", name="pattern"),
    )


class DestinationAddress(Base):
    """An account-level forwarding destination; rules forward only to verified ones."""

    __tablename__ = "destination_addresses"
    id: Mapped[str] = mapped_column(Tag, primary_key=True, default=new_tag)
    account_id: Mapped[str] = parent_col("accounts.id")
    email: Mapped[str] = mapped_column(String(320), nullable=False)
    verified_at: Mapped[datetime | None] = mapped_column(Timestamp)
    verification_token_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    verification_sent_at: Mapped[datetime | None] = mapped_column(Timestamp)
    created_at: Mapped[datetime] = created_col()
    modified_at: Mapped[datetime] = modified_col()

    __table_args__ = (
        Index("uq_destination_addresses_account_email", "account_id", text("lower(email)"),
              unique=True),
    )


# --- sending --------------------------------------------------------------------------


class SendingDomain(Base):
    """A domain or subdomain onboarded for sending: DKIM selector, bounce
    (return-path) subdomain and the live DNS status."""

    __tablename__ = "sending_domains"
    id: Mapped[str] = mapped_column(Tag, primary_key=True, default=new_tag)
    zone_id: Mapped[str] = parent_col("zones.id")
    name: Mapped[str] = mapped_column(String(253), unique=True, nullable=False)
    dkim_selector: Mapped[str] = mapped_column(String(63), nullable=False)
    return_path_domain: Mapped[str] = mapped_column(String(253), nullable=False)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    status: Mapped[str] = mapped_column(String(32), nullable=False, server_default="pending")
    # Editable through PATCH .../email/sending/subdomains/{id} (migration 0003).
    drop_suppressed_recipients: Mapped[bool] = mapped_column(Boolean, nullable=False,
                                                             server_default=text("false"))
    preview_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False,
                                                  server_default=text("false"))
    created_at: Mapped[datetime] = created_col()
    modified_at: Mapped[datetime] = modified_col()


class DkimKey(Base):
    """A DKIM key pair for a domain. The private key (PKCS#8 DER) is encrypted at rest
    with the node's secret key; `public_key` is the base64 `p=` value.

    `purpose`: `sending` (a sending domain's keys) or `forwarding` (what forwarded mail,
    replies and verification mail are signed with). Rotation (mta/store/dkimkeys.py):
    a key signs from `not_before` (NULL: from `created_at`) until a newer key of its
    domain, purpose and algorithm starts; it stays published, so that mail it signed
    still verifies, until `retired_at` (NULL: no end set)."""

    __tablename__ = "dkim_keys"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    domain: Mapped[str] = mapped_column(String(253), nullable=False, index=True)
    selector: Mapped[str] = mapped_column(String(63), nullable=False)
    algorithm: Mapped[str] = mapped_column(String(16), nullable=False)  # rsa | ed25519
    private_key_encrypted: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    public_key: Mapped[str] = mapped_column(Text, nullable=False)
    purpose: Mapped[str] = mapped_column(String(16), nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    created_at: Mapped[datetime] = created_col()
    not_before: Mapped[datetime | None] = mapped_column(Timestamp)
    retired_at: Mapped[datetime | None] = mapped_column(Timestamp)

    __table_args__ = (UniqueConstraint("domain", "selector", "algorithm"),
                      CheckConstraint("algorithm in ('rsa', 'ed25519')", name="algorithm"),
                      CheckConstraint("purpose in ('sending', 'forwarding')", name="purpose"))


class SendCounter(Base):
    """A rate-limit / daily-quota counter window shared by every node (mta/sending/limits.py)."""

    __tablename__ = "send_counters"
    scope: Mapped[str] = mapped_column(String(16), primary_key=True)  # account | domain
    key: Mapped[str] = mapped_column(String(253), primary_key=True)
    period: Mapped[str] = mapped_column(String(8), primary_key=True)  # rate | day
    window_start: Mapped[datetime] = mapped_column(Timestamp, primary_key=True)
    count: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")

    __table_args__ = (Index("ix_send_counters_window_start", "window_start"),)


# --- messages and the delivery queue ------------------------------------------------------


class Message(Base):
    """One message as received or submitted: raw bytes plus envelope and the facts
    of its arrival. Stored before the 250/200 acknowledgement."""

    __tablename__ = "messages"
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True,
                                          default=uuid.uuid4)
    direction: Mapped[str] = mapped_column(String(8), nullable=False)  # inbound | outbound
    source: Mapped[str] = mapped_column(String(16), nullable=False)  # mx|api|submission|...
    account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id",
                                                              ondelete="SET NULL"))
    message_id_header: Mapped[str | None] = mapped_column(Text)
    mail_from: Mapped[str] = mapped_column(Text, nullable=False)  # "" is the null sender
    rcpt_to: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False)
    raw: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    size: Mapped[int] = mapped_column(Integer, nullable=False)
    received_at: Mapped[datetime] = created_col()
    session_id: Mapped[str | None] = mapped_column(String(64))
    client_ip: Mapped[str | None] = mapped_column(INET)
    client_ptr: Mapped[str | None] = mapped_column(Text)
    helo: Mapped[str | None] = mapped_column(Text)
    tls: Mapped[dict | None] = mapped_column(JSONB)  # {"version": ..., "cipher": ...}
    auth_results: Mapped[dict | None] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(32), nullable=False, server_default="received")
    # A forwarded copy's original (the message whose id the sender got in the 250
    # reply), so that one id finds the copies, their deliveries and their events.
    origin_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    # What the sender asked of our DSNs at MAIL (RFC 3461; mta/queue/dsnparams.py):
    # RET (FULL | HDRS) and ENVID (decoded); NULL when not given.
    dsn_ret: Mapped[str | None] = mapped_column(String(4))
    dsn_envid: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_messages_received_at", "received_at"),
                      Index("ix_messages_origin_id", "origin_id",
                            postgresql_where=text("origin_id IS NOT NULL")))


# The delivery statuses in which a message is still owed to someone: the queue works on
# them and retention never deletes their message.
ACTIVE_STATUSES = ("queued", "held")


class Delivery(Base):
    """One recipient of one message on its way out: the unit the queue schedules.

    Workers claim due rows with FOR UPDATE SKIP LOCKED and set a lease
    (`lease_owner`, `lease_expires_at`); a row whose lease expired is due again.
    """

    __tablename__ = "deliveries"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    message_id: Mapped[uuid.UUID] = parent_col("messages.id")
    recipient: Mapped[str] = mapped_column(Text, nullable=False)
    domain: Mapped[str] = mapped_column(String(253), nullable=False)
    envelope_from: Mapped[str] = mapped_column(Text, nullable=False)  # SRS/VERP per delivery
    # What goes on the wire before the message's raw bytes: a forward's DKIM signatures
    # and ARC set (the received message is stored once, not once more signed).
    prefix: Mapped[bytes | None] = mapped_column(LargeBinary)
    # queued | delivered | failed | expired | suppressed | held
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="queued")
    priority: Mapped[int] = mapped_column(SmallInteger, nullable=False, server_default="0")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(Timestamp, nullable=False,
                                                      server_default=func.now())
    created_at: Mapped[datetime] = created_col()
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(Timestamp)
    last_reply: Mapped[str | None] = mapped_column(Text)
    delay_notified_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # RFC 3461 RCPT parameters, stored forms of mta/queue/dsnparams.py: NOTIFY (NEVER or
    # a list of SUCCESS,FAILURE,DELAY; NULL = not given) and ORCPT (addr-type;address,
    # for a forward the address it was sent to when the sender gave none).
    dsn_notify: Mapped[str | None] = mapped_column(String(32))
    dsn_orcpt: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_deliveries_due", "next_attempt_at", "priority",
              postgresql_where=text("status = 'queued'")),
    )


class DeliveryAttempt(Base):
    __tablename__ = "delivery_attempts"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = parent_col("deliveries.id")
    started_at: Mapped[datetime] = mapped_column(Timestamp, nullable=False)
    finished_at: Mapped[datetime] = mapped_column(Timestamp, nullable=False)
    node: Mapped[str | None] = mapped_column(String(128))
    mx_host: Mapped[str | None] = mapped_column(String(253))
    ip: Mapped[str | None] = mapped_column(INET)
    tls_version: Mapped[str | None] = mapped_column(String(16))
    result: Mapped[str] = mapped_column(String(16), nullable=False)  # delivered|deferred|failed
    reply_code: Mapped[int | None] = mapped_column(SmallInteger)
    enhanced_code: Mapped[str | None] = mapped_column(String(16))
    reply_text: Mapped[str | None] = mapped_column(Text)


class Suppression(Base):
    """A recipient we must not send to. Scope is the whole account or one sending
    domain; complaint entries are read-only."""

    __tablename__ = "suppressions"
    id: Mapped[str] = mapped_column(Tag, primary_key=True, default=new_tag)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320), nullable=False)  # stored lower-cased
    # manual | complaint | hard_bounce | soft_bounce | policy
    reason: Mapped[str] = mapped_column(String(16), nullable=False)
    scope_type: Mapped[str] = mapped_column(String(16), nullable=False,
                                            server_default="account")
    scope_value: Mapped[str] = mapped_column(String(253), nullable=False, server_default="")
    note: Mapped[str | None] = mapped_column(Text)
    read_only: Mapped[bool] = mapped_column(Boolean, nullable=False,
                                            server_default=text("false"))
    expires_at: Mapped[datetime | None] = mapped_column(Timestamp)
    created_at: Mapped[datetime] = created_col()
    modified_at: Mapped[datetime] = modified_col()

    __table_args__ = (
        UniqueConstraint("account_id", "email", "scope_type", "scope_value"),
        CheckConstraint("scope_type in ('account', 'sending_domain')", name="scope_type"),
    )


class HandlerKv(Base):
    """A key of a handler key-value namespace (mta/handlers/kv.py)."""

    __tablename__ = "handler_kv"
    namespace: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    metadata_: Mapped[dict | None] = mapped_column("metadata", JSONB)
    expires_at: Mapped[datetime | None] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now(),
                                                 nullable=False)


# --- observability --------------------------------------------------------------------------


class Event(Base):
    """The activity log: one row per message outcome (inbound or outbound)."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = created_col()
    message_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL"), index=True)
    account_id: Mapped[str | None] = mapped_column(Tag)
    zone_id: Mapped[str | None] = mapped_column(Tag)
    direction: Mapped[str] = mapped_column(String(8), nullable=False)
    # Forwarded | Handled | Dropped | Rejected | Delivery failed | Error | Sent | Delivered ...
    status: Mapped[str] = mapped_column(String(32), nullable=False)
    mail_from: Mapped[str | None] = mapped_column(Text)
    rcpt_to: Mapped[str | None] = mapped_column(Text)
    subject: Mapped[str | None] = mapped_column(Text)
    domain: Mapped[str | None] = mapped_column(String(253))
    rule_id: Mapped[str | None] = mapped_column(Tag)
    action: Mapped[str | None] = mapped_column(String(16))
    spf: Mapped[str | None] = mapped_column(String(16))
    dkim: Mapped[str | None] = mapped_column(String(16))
    dmarc: Mapped[str | None] = mapped_column(String(16))
    arc: Mapped[str | None] = mapped_column(String(16))
    details: Mapped[dict | None] = mapped_column(JSONB)

    __table_args__ = (Index("ix_events_ts", "ts"), Index("ix_events_status_ts", "status", "ts"))


class WebhookEndpoint(Base):
    """An HTTPS endpoint of an account that receives its delivery events as signed JSON
    POSTs (mta/webhooks/). `secret` keys the HMAC; it is shown once, at creation.
    `event_types` empty = every type."""

    __tablename__ = "webhook_endpoints"
    id: Mapped[str] = mapped_column(Tag, primary_key=True, default=new_tag)
    account_id: Mapped[str] = parent_col("accounts.id")
    url: Mapped[str] = mapped_column(Text, nullable=False)
    secret: Mapped[str] = mapped_column(Text, nullable=False)
    event_types: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False,
                                                   server_default="{}")
    description: Mapped[str | None] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False,
                                          server_default=text("true"))
    created_at: Mapped[datetime] = created_col()
    modified_at: Mapped[datetime] = modified_col()


class WebhookDelivery(Base):
    """The outbox: one event owed to one endpoint. Rows are written by the database
    trigger on `events` (migration 0012), in the transaction that records the event, so
    a row exists iff its event happened. Senders claim due rows with SKIP LOCKED and a
    lease, as the delivery queue does; the row is also the endpoint's delivery log."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    endpoint_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), nullable=False)
    event_id: Mapped[int] = mapped_column(BigInteger, nullable=False)  # events.id
    message_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    event_type: Mapped[str] = mapped_column(String(32), nullable=False)
    event: Mapped[dict] = mapped_column(JSONB, nullable=False)  # the events row as it was
    status: Mapped[str] = mapped_column(String(16), nullable=False,
                                        server_default="pending")  # pending|delivered|failed
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(Timestamp, nullable=False,
                                                      server_default=func.now())
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(Timestamp)
    last_status_code: Mapped[int | None] = mapped_column(SmallInteger)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_attempt_at: Mapped[datetime | None] = mapped_column(Timestamp)  # its answer's time
    created_at: Mapped[datetime] = created_col()
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)

    __table_args__ = (
        Index("ix_webhook_deliveries_due", "next_attempt_at",
              postgresql_where=text("status = 'pending'")),
        Index("ix_webhook_deliveries_endpoint_id_id", "endpoint_id", "id"),
        Index("ix_webhook_deliveries_chain", "endpoint_id", "message_id", "id",
              postgresql_where=text("status = 'pending'")),
        Index("ix_webhook_deliveries_finished_at", "finished_at"),
    )


class AuditEntry(Base):
    """Who changed which configuration, when, from what to what."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = created_col()
    actor: Mapped[str] = mapped_column(Text, nullable=False)  # token:<id> | cli:<user>
    account_id: Mapped[str | None] = mapped_column(Tag)
    action: Mapped[str] = mapped_column(String(32), nullable=False)  # create|update|delete
    resource_type: Mapped[str] = mapped_column(String(64), nullable=False)
    resource_id: Mapped[str | None] = mapped_column(String(64))
    before: Mapped[dict | None] = mapped_column(JSONB)
    after: Mapped[dict | None] = mapped_column(JSONB)

    __table_args__ = (Index("ix_audit_log_ts", "ts"),)


class TlsReportSession(Base):
    """RFC 8460 TLS reporting: outbound sessions counted per day, recipient domain,
    policy, outcome and hosts (mta/queue/tlsrpt.py adds to `count`; the daily report
    reads them). Empty strings, not NULLs, so that the unique key holds for them."""

    __tablename__ = "tls_report_sessions"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    day: Mapped[date] = mapped_column(Date, nullable=False)  # UTC
    policy_domain: Mapped[str] = mapped_column(Text, nullable=False)
    policy_type: Mapped[str] = mapped_column(String(16), nullable=False)  # sts|tlsa|no-...
    policy_key: Mapped[str] = mapped_column(String(64), nullable=False)  # digest of strings
    policy_strings: Mapped[list] = mapped_column(JSONB, nullable=False)
    result: Mapped[str] = mapped_column(String(40), nullable=False)  # success | RFC 8460 type
    sending_ip: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    receiving_mx: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    receiving_ip: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    count: Mapped[int] = mapped_column(BigInteger, nullable=False)

    __table_args__ = (
        UniqueConstraint("day", "policy_domain", "policy_type", "policy_key", "result",
                         "sending_ip", "receiving_mx", "receiving_ip",
                         name="uq_tls_report_sessions_counter"),
    )


class TlsReportRun(Base):
    """One day's TLS reports, sent once across nodes: a node (or `mta reports tls send`)
    takes the day with a lease, sends, and marks it finished."""

    __tablename__ = "tls_report_runs"
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    lease_owner: Mapped[str] = mapped_column(String(128), nullable=False)
    lease_until: Mapped[datetime] = mapped_column(Timestamp, nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)
    summary: Mapped[dict | None] = mapped_column(JSONB)  # what was sent where, what failed


# --- DMARC aggregate reporting (RFC 7489 §7.2; mta/reports/) --------------------------------


class DmarcResultRow(Base):
    """What one received message's DMARC evaluation contributes to the aggregate report
    of its policy domain: written with the message (or with its 5xx refusal) when the
    From domain published a DMARC record with `rua=`. Kept apart from `messages` so
    that refused mail counts too and message retention does not shorten a report."""

    __tablename__ = "dmarc_results"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = created_col()
    source_ip: Mapped[str] = mapped_column(INET, nullable=False)
    header_from: Mapped[str] = mapped_column(String(253), nullable=False)
    envelope_from: Mapped[str] = mapped_column(String(253), nullable=False)  # domain, or ""
    policy_domain: Mapped[str] = mapped_column(String(253), nullable=False)
    record: Mapped[str] = mapped_column(Text, nullable=False)  # the DMARC TXT record seen
    result: Mapped[str] = mapped_column(String(16), nullable=False)  # pass | fail | ...
    disposition: Mapped[str] = mapped_column(String(16), nullable=False)  # what we applied
    dkim_aligned: Mapped[bool] = mapped_column(Boolean, nullable=False)
    spf_aligned: Mapped[bool] = mapped_column(Boolean, nullable=False)
    dkim: Mapped[list] = mapped_column(JSONB, nullable=False)  # [{domain, selector, result}]
    spf_domain: Mapped[str] = mapped_column(String(253), nullable=False)
    spf_scope: Mapped[str] = mapped_column(String(8), nullable=False)  # mfrom | helo
    spf_result: Mapped[str] = mapped_column(String(16), nullable=False)
    reason: Mapped[str | None] = mapped_column(String(32))  # a policy override type

    __table_args__ = (Index("ix_dmarc_results_ts", "ts"),)


class DmarcReportSent(Base):
    """One aggregate report period of one policy domain, claimed by the node that sends
    it: the primary key makes the claim once across nodes (INSERT ... ON CONFLICT DO
    NOTHING), and the row says what became of it."""

    __tablename__ = "dmarc_reports_sent"
    policy_domain: Mapped[str] = mapped_column(String(253), primary_key=True)
    period_begin: Mapped[datetime] = mapped_column(Timestamp, primary_key=True)
    period_end: Mapped[datetime] = mapped_column(Timestamp, nullable=False)
    report_id: Mapped[str] = mapped_column(String(64), nullable=False)
    node_id: Mapped[str] = mapped_column(String(128), nullable=False)
    records: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    messages: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    destinations: Mapped[list] = mapped_column(JSONB, nullable=False)  # [{uri, outcome}]
    created_at: Mapped[datetime] = created_col()


class ReceivedReportColumns:
    """The columns every table of received reports has (DMARC, TLS): one report file
    another domain sent about ours, with the mail it came in (what mta/reports/
    intake_mail.py's ReportFile holds), or, with status `invalid`, one that could not be
    used and why. Each table adds the report's own content."""

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    # indexed: lists read the last days, retention deletes the oldest
    received_at: Mapped[datetime] = mapped_column(Timestamp, server_default=func.now(),
                                                  nullable=False, index=True)
    message_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL"))
    filename: Mapped[str] = mapped_column(String(255), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)  # ok | invalid
    error: Mapped[str | None] = mapped_column(Text)
    org_name: Mapped[str | None] = mapped_column(String(253))
    report_id: Mapped[str | None] = mapped_column(String(253))
    # index named by the convention: ix_<table>_period_begin
    period_begin: Mapped[datetime | None] = mapped_column(Timestamp, index=True)
    period_end: Mapped[datetime | None] = mapped_column(Timestamp)


class DmarcReportReceived(ReceivedReportColumns, Base):
    """One aggregate report file (mta/reports/dmarc_intake.py). `records`: the report's
    rows as parsed (source_ip, count, disposition, dkim, spf, header_from, envelope_from,
    auth_dkim, auth_spf)."""

    __tablename__ = "dmarc_reports_received"
    policy_domain: Mapped[str | None] = mapped_column(String(253))
    messages: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    records: Mapped[list] = mapped_column(JSONB, nullable=False)


class TlsReportReceived(ReceivedReportColumns, Base):
    """One TLS report (RFC 8460, mta/reports/tls_intake.py). `policies`: per policy,
    policy_type, policy_domain, mx_host, successful, failed and failures {result-type:
    failed sessions}."""

    __tablename__ = "tls_reports_received"
    successful: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    failed: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    policies: Mapped[list] = mapped_column(JSONB, nullable=False)

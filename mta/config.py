"""Typed daemon settings: the tree every part of the product reads.

Every key has one name, one type and one default here; `config/mta.example.yaml`
documents each of them. mta/config_load.py reads them from YAML, strictly: an unknown
key or a value of the wrong type is an error that names the key path and the line of
the YAML file, so a typo never silently falls back to a default.

Durations are written with a unit (`30s`, `5m`, `4h`, `5d`) or as seconds;
sizes with a unit (`25MiB`, `512KiB`) or as bytes. Secrets may come from the
environment instead of the file (see ENVIRONMENT_OVERRIDES).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mta.yamlschema import (
    ConfigError,
    Duration,
    Size,
    parse_duration,
    parse_size,
)

__all__ = [
    "ConfigError",
    "Duration",
    "Settings",
    "Size",
    "copy_section",
    "parse_duration",
    "parse_size",
]


def copy_section(target: Any, section: Any, *, skip: tuple[str, ...] = ()) -> None:
    """Set every dataclass field of `target` (but `skip`) that the settings `section` also
    has; `section` may be None (an optional section left out)."""
    if section is None:
        return
    for f in dataclasses.fields(target):
        if f.name not in skip and hasattr(section, f.name):
            setattr(target, f.name, getattr(section, f.name))


# --- the settings tree ------------------------------------------------------------


@dataclass
class NodeSettings:
    hostname: str = "localhost"
    node_id: str | None = None  # defaults to hostname:pid; names the lease owner in the queue
    # The MX hosts routing domains publish (`mta dns`); empty = [hostname].
    mx_hosts: list[str] = field(default_factory=list)
    # The SPF record sending domains include; null = _spf.<hostname>.
    spf_include: str | None = None


@dataclass
class ProxyProtocolSettings:
    """PROXY protocol v1/v2 from TCP load balancers (SMTP listeners only)."""

    trusted: list[str] = field(default_factory=list)  # the balancers' networks (CIDR)
    required: bool = True  # a trusted peer must send a header
    timeout: Duration = Duration(5)  # for the header to arrive


@dataclass
class Listener:
    enabled: bool = True
    address: str = "127.0.0.1"
    port: int = 0
    tls_cert: str | None = None
    tls_key: str | None = None
    # null = no PROXY protocol: the TCP peer is the client (mx and submission only)
    proxy_protocol: ProxyProtocolSettings | None = None


@dataclass
class Listeners:
    mx: Listener = field(default_factory=lambda: Listener(port=2525))
    # Off until the operator gives it a certificate: credentials travel only over TLS.
    submission: Listener = field(default_factory=lambda: Listener(enabled=False, port=4650))
    submission_starttls: Listener = field(
        default_factory=lambda: Listener(enabled=False, port=5870))
    http: Listener = field(default_factory=lambda: Listener(port=8080))
    metrics: Listener = field(default_factory=lambda: Listener(port=9325))


@dataclass
class DatabaseSettings:
    url: str | None = None  # absent -> embedded cluster under state_dir
    pool_size: int = 10
    connect_timeout: Duration = Duration(10)


@dataclass
class Nameserver:
    address: str = "127.0.0.1"
    port: int = 53


@dataclass
class DnsSettings:
    nameservers: list[Nameserver] = field(default_factory=list)  # empty -> /etc/resolv.conf
    timeout: Duration = Duration(5)
    cache_size: int = 10000
    min_ttl: Duration = Duration(0)
    max_ttl: Duration = Duration(86400)
    # off | trust_ad: believe the AD bit of `nameservers`, a validating resolver on this
    # host (loopback only), so DANE can use DNSSEC-authenticated TLSA records.
    dnssec: str = "off"


@dataclass
class Limits:
    inbound_message_size: Size = Size(25 * 1024 * 1024)
    submission_message_size: Size = Size(5 * 1024 * 1024)
    recipients_per_message: int = 100
    max_sessions: int = 1000
    max_sessions_per_ip: int = 20
    errors_soft_limit: int = 10  # past it, each error reply is delayed by error_delay
    error_delay: Duration = Duration(1)
    errors_before_disconnect: int = 20  # the hard limit: 421 and close
    command_timeout: Duration = Duration(300)
    data_timeout: Duration = Duration(600)
    submission_auth_timeout: Duration = Duration(30)  # until AUTH succeeds
    submission_data_timeout: Duration = Duration(300)  # DATA without progress
    # Submission AUTH failures (mta/smtp/auth_throttle.py): per client address, then 454;
    # per user name, then each AUTH for it waits auth_failure_delay.
    auth_failures_per_ip: int = 10
    auth_failures_per_user: int = 30
    auth_failure_window: Duration = Duration(900)
    auth_failure_delay: Duration = Duration(2)
    rules_per_zone: int = 200
    addresses_per_account: int = 200
    domains_per_zone: int = 30


@dataclass
class RetrySettings:
    first_retry: Duration = Duration(300)
    backoff_factor: float = 2.0
    max_interval: Duration = Duration(3600)
    max_age: Duration = Duration(5 * 86400)
    jitter: float = 0.1
    delay_warning: Duration | None = Duration(4 * 3600)  # null turns delay DSNs off


@dataclass
class SrsSettings:
    domain: str | None = None
    secrets: list[str] = field(default_factory=list)  # first one signs; env MTA_SRS_SECRETS
    max_age_days: int = 21


@dataclass
class LoggingSettings:
    level: str = "info"
    # auto: text on a terminal, json otherwise (systemd's journal) | json | text
    format: str = "auto"


@dataclass
class RblSettings:
    zones: list[str] = field(default_factory=list)  # e.g. zen.spamhaus.org
    allowlist: list[str] = field(default_factory=list)  # networks never checked (CIDR)


@dataclass
class InboundPolicy:
    """What the MX listener does with the authentication results of a message."""

    require_spf_or_dkim: bool = True  # reject unless SPF passes or a DKIM signature verifies
    enforce_dmarc_reject: bool = True  # reject DMARC failures under p=reject (sp=, pct= apply)
    trusted_arc_sealers: list[str] = field(default_factory=list)  # their ARC pass overrides
    monitor_only: bool = False  # record and mark, never reject on authentication


@dataclass
class InboundDomainPolicy:
    """Policy overrides for mail to one of our routing domains; unset keys inherit."""

    domain: str = ""
    require_spf_or_dkim: bool | None = None
    enforce_dmarc_reject: bool | None = None
    trusted_arc_sealers: list[str] | None = None
    monitor_only: bool | None = None


@dataclass
class InboundSettings:
    authserv_id: str | None = None  # Authentication-Results id; defaults to node.hostname
    bare_line_endings: str = "reject"  # reject | normalize (bare CR/LF in DATA)
    rbl: RblSettings = field(default_factory=RblSettings)
    policy: InboundPolicy = field(default_factory=InboundPolicy)
    domain_policies: list[InboundDomainPolicy] = field(default_factory=list)
    recipient_cache_ttl: Duration = Duration(5)  # routing data cached per domain; 0 = off
    ptr_timeout: Duration = Duration(5)


@dataclass
class SmartHostSettings:
    """Relay all outbound mail through another MTA instead of each domain's MX."""

    host: str | None = None  # null = deliver directly to each domain's MX
    port: int = 587
    tls: str = "starttls"  # starttls | implicit | none
    username: str | None = None
    password: str | None = None  # prefer MTA_SMART_HOST_PASSWORD in the environment
    verify: bool = True  # check the relay's certificate before sending credentials


@dataclass
class SoftBounceSettings:
    """Automatic suppression after repeated soft bounces (mta/queue/softbounce.py): a
    message the account sent that expired in the queue after a 4xx reply."""

    threshold: int = 3  # soft bounces of one address that suppress it; 0 turns this off
    window: Duration = Duration(7 * 86400)  # counted over this period
    duration: Duration | None = Duration(30 * 86400)  # how long; null = permanently


@dataclass
class DaneDestination:
    """The DANE mode for one destination domain (overrides `delivery.dane.mode`)."""

    domain: str = ""
    mode: str = "required"  # off | opportunistic | required


@dataclass
class DaneSettings:
    """DANE for outbound delivery (RFC 7672, mta/queue/dane.py). Needs
    dns.dnssec: trust_ad (a validating resolver on this host)."""

    # off | opportunistic; null = opportunistic when dns.dnssec is trust_ad, else off.
    # opportunistic: DNSSEC-authenticated TLSA records are enforced where published.
    mode: str | None = None
    # required for a domain: only MX hosts with authenticated, matching TLSA records.
    destinations: list[DaneDestination] = field(default_factory=list)


@dataclass
class DeliverySettings:
    """Outbound SMTP (queue workers, sending, in-session forwards)."""

    port: int = 25  # TCP port of remote MX hosts; tests point it at loopback sinks
    workers: int = 8  # concurrent delivery jobs per node
    per_domain_sessions: int = 4  # concurrent SMTP sessions per destination domain
    batch_size: int = 20  # recipients claimed per job (one SMTP session)
    lease_seconds: Duration = Duration(300)  # a claim not finished by then is retried
    poll_interval: Duration = Duration(1)  # how often idle workers look for due mail
    smart_host: SmartHostSettings = field(default_factory=lambda: SmartHostSettings())
    soft_bounce: SoftBounceSettings = field(default_factory=lambda: SoftBounceSettings())
    dane: DaneSettings = field(default_factory=lambda: DaneSettings())


@dataclass
class SendingSettings:
    """Rate limits and quotas for the send API, SMTP submission and bindings; shared by
    every node through PostgreSQL. 0 turns a limit off."""

    rate_window: Duration = Duration(60)
    account_rate: int = 1200  # recipients per rate_window per account
    domain_rate: int = 0  # recipients per rate_window per sending domain
    account_daily: int = 100_000  # recipients per UTC day per account
    domain_daily: int = 0
    # A send waits at most this long for its first delivery attempt before answering.
    sync_delivery_timeout: Duration = Duration(5)


@dataclass
class RoutingSettings:
    """Forwarding and destination-address verification (Email Routing, issue 5)."""

    # In-session delivery of a forward to a single destination: the sender waits at
    # most this long for the upstream answer; past it the copy is queued (250).
    in_session_timeout: Duration = Duration(30)
    # false: every forward is queued and delivered by the delivery workers, never tried
    # while the sender waits (the 250 then only means "stored").
    in_session_forward: bool = True
    # DKIM/ARC domain of forwarded mail; null = srs.domain. Its key is taken from
    # dkim_keys or generated on first use (publish it: the log gives the record).
    forwarding_domain: str | None = None
    dkim_selector: str = "mta-fwd"
    # Also sign forwarded mail for the routing domain, when it has an active RSA key.
    sign_routing_domain: bool = False
    # From: domain with p=quarantine/reject and no aligned valid DKIM signature:
    # rewrite (From: at forwarding_domain) | forward (unchanged) | reject (550 5.7.1).
    dmarc_safe_from: str = "rewrite"
    rewritten_from_local: str = "forwarded"
    # Loop protection: more than this many Received fields or ARC sets -> 554 5.4.6.
    max_received: int = 50
    max_arc_instances: int = 10
    # Destination address verification mail: sender, link base and token lifetime.
    verification_from: str | None = None  # null = noreply@<forwarding domain>
    verification_base_url: str | None = None  # null = http://<listeners.http address:port>
    verification_ttl: Duration = Duration(3 * 86400)


@dataclass
class MtaStsSettings:
    """The MTA-STS policy (RFC 8461) we publish for our routing domains, served at
    /.well-known/mta-sts.txt by the HTTP listener, and the TLS-RPT (RFC 8460) address
    that `mta dns DOMAIN --mta-sts` prints."""

    enabled: bool = True  # serve the policy (404 when off)
    mode: str = "testing"  # enforce | testing | none; start with testing (RFC 8461 §5)
    mx: list[str] = field(default_factory=list)  # MX patterns; empty = the MX hosts we print
    max_age: Duration = Duration(7 * 86400)  # how long senders cache it; at most 31557600 s
    tls_rpt_rua: list[str] = field(default_factory=list)  # empty = mailto:postmaster@<domain>


@dataclass
class ObserveSettings:
    """Activity log and audit log housekeeping (mta/observe/retention.py)."""

    event_retention: Duration = Duration(31 * 86400)  # activity events older are deleted
    # Messages older than this whose deliveries are all finished are deleted (never one
    # with a delivery still queued or held, nor one waiting for a handler).
    message_retention: Duration = Duration(31 * 86400)
    audit_retention: Duration | None = None  # null keeps the audit log forever
    # Received DMARC/TLS reports, TLS session counts and sent-report records; null: forever
    report_retention: Duration | None = Duration(366 * 86400)
    retention_interval: Duration = Duration(3600)  # how often each node runs the job
    retention_batch: int = 1000  # rows per DELETE transaction
    retention_enabled: bool = True


@dataclass
class WebhookSettings:
    """Delivery-event webhooks (mta/webhooks/, docs/webhooks.md): the sender that POSTs
    the outbox to the accounts' endpoints, one per node, apart from the mail paths."""

    enabled: bool = True  # run the sender on this node (the outbox fills regardless)
    concurrency: int = 8  # POSTs in flight per node
    per_endpoint: int = 4  # of which at most this many to one endpoint
    timeout: Duration = Duration(10)  # connect + answer, per POST
    poll_interval: Duration = Duration(1)  # how often an idle sender looks for due events
    lease_seconds: Duration = Duration(60)  # a claim not finished by then is any node's
    max_attempts: int = 12  # then the event is marked failed
    first_retry: Duration = Duration(10)  # backoff: doubles per attempt ...
    max_backoff: Duration = Duration(3600)  # ... up to this
    log_retention: Duration = Duration(7 * 86400)  # finished outbox rows older are deleted
    # Endpoints on loopback/private addresses (and http:// to loopback): tests, a lab.
    # Off, a tenant cannot make the node probe its own network.
    allow_private_targets: bool = False
    max_endpoints_per_account: int = 10  # each endpoint costs every message an outbox row


@dataclass
class TlsReportSettings:
    """TLS reporting (RFC 8460, docs/tls-reporting.md): the TLS outcome of every outbound
    session, counted per day, recipient domain and policy."""

    enabled: bool = True  # count the outcomes of this node's outbound sessions
    flush_interval: Duration = Duration(10)  # how often the counts go to the database
    # Send yesterday's reports (UTC) to every domain that asks (_smtp._tls TXT), once
    # across nodes; `mta reports tls send` sends a given day by hand.
    send: bool = True
    check_interval: Duration = Duration(3600)  # how often a node looks for a day to send
    organization: str | None = None  # organization-name; null = the submitter
    contact: str | None = None  # contact-info; null = the from address
    submitter: str | None = None  # null = routing.forwarding_domain, else node.hostname
    from_address: str | None = None  # null = noreply-tlsrpt@<submitter>
    http_timeout: Duration = Duration(30)  # per https POST
    # Mailboxes whose mail is TLS reports about our domains (the rua=mailto: of our
    # _smtp._tls records): the MX accepts, parses and keeps it (`mta reports tls list`),
    # whatever the routing rules.
    intake_addresses: list[str] = field(default_factory=list)
    # POST reports to loopback/private addresses too (tests, a lab); off, a rua naming
    # one is refused: any domain we deliver to picks it.
    allow_private_targets: bool = False


@dataclass
class DmarcReportSettings:
    """DMARC aggregate reports (RFC 7489 §7.2; mta/reports/, docs/reports.md): once a
    day, one report per policy domain that asked (`rua=`), about the mail our MX
    received, sent through the sending pipeline as `sender` of `account`."""

    enabled: bool = False  # run the daily job on this node (rows are recorded regardless)
    sender: str = ""  # From of the reports; its domain: a sending domain of `account`
    account: str = ""  # the account (id or name) whose sending domain signs them
    org_name: str = ""  # <org_name> of the reports; default node.hostname
    interval: Duration = Duration(3600)  # how often the job looks for a day not yet sent
    retention: Duration = Duration(14 * 86400)  # report rows older are deleted
    # Mailboxes whose mail is aggregate reports about our domains (their rua=): the MX
    # accepts, parses and keeps it (`mta reports dmarc list`), whatever the routing rules.
    intake_addresses: list[str] = field(default_factory=list)


# --- handlers (issue 7) -------------------------------------------------------------


@dataclass
class HandlerEntry:
    """One registered email handler: a rule action `worker` with value [name] calls it."""

    name: str = ""
    # "package.module:function", or a file path ("/etc/mta/handlers/support.py", function
    # `email`; "file.py:other" names another function).
    target: str = ""
    time_limit: Duration | None = None  # null = handlers.time_limit
    fallback: str | None = None  # reject_4xx | forward; null = handlers.fallback
    forward_to: str | None = None  # fallback forward address; null = handlers.forward_to
    vars: list[str] = field(default_factory=list)  # "NAME=value", added to handlers.vars
    kv_namespaces: list[str] = field(default_factory=list)  # added to handlers.kv_namespaces


@dataclass
class HandlerDevEndpoint:
    """The local test entry point ([Local development > Email routing]): POST a raw
    message with ?from=&to= and get back what would happen. Off by default."""

    enabled: bool = False
    path: str = "/cdn-cgi/handler/email"


@dataclass
class HandlersSettings:
    """Python email handlers, `async def email(message, env, ctx)` (mta/handlers)."""

    time_limit: Duration = Duration(15)  # in-session; past it -> the fallback
    fallback: str = "reject_4xx"  # reject_4xx (451 4.3.0) | forward (to forward_to)
    forward_to: str | None = None
    vars: list[str] = field(default_factory=list)  # "NAME=value" -> env.NAME
    kv_namespaces: list[str] = field(default_factory=list)  # env.NAME -> a KV namespace
    registry: list[HandlerEntry] = field(default_factory=list)
    dev_endpoint: HandlerDevEndpoint = field(default_factory=HandlerDevEndpoint)

    def __post_init__(self) -> None:
        for i, h in enumerate(self.registry):
            where = f"handlers.registry[{i}]"
            if not h.name or not h.target:
                raise ConfigError(where, "name and target are required")
            for key, fb, to in (("handlers", self.fallback, self.forward_to),
                                (where, h.fallback, h.forward_to or self.forward_to)):
                if fb is not None and fb not in ("reject_4xx", "forward"):
                    raise ConfigError(f"{key}.fallback", "must be reject_4xx or forward")
                if fb == "forward" and not to:
                    raise ConfigError(f"{key}.forward_to", "fallback forward needs an address")
        for i, v in enumerate(self.vars):
            if "=" not in v:
                raise ConfigError(f"handlers.vars[{i}]", "must be NAME=value")


@dataclass
class Settings:
    node: NodeSettings = field(default_factory=NodeSettings)
    state_dir: str = "/var/lib/mta"
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    listeners: Listeners = field(default_factory=Listeners)
    dns: DnsSettings = field(default_factory=DnsSettings)
    limits: Limits = field(default_factory=Limits)
    retry: RetrySettings = field(default_factory=RetrySettings)
    srs: SrsSettings = field(default_factory=SrsSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    inbound: InboundSettings = field(default_factory=InboundSettings)
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    sending: SendingSettings = field(default_factory=SendingSettings)
    mta_sts: MtaStsSettings = field(default_factory=MtaStsSettings)
    observe: ObserveSettings = field(default_factory=ObserveSettings)
    handlers: HandlersSettings = field(default_factory=HandlersSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    tls_reports: TlsReportSettings = field(default_factory=TlsReportSettings)
    dmarc_reports: DmarcReportSettings = field(default_factory=DmarcReportSettings)
    secret_key: str | None = None  # encrypts private keys at rest; env MTA_SECRET_KEY
    source: str = field(default="", metadata={"internal": True})

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)


# Environment variables that take precedence over the file, so secrets need not be
# written into it. Values are plain strings; lists are comma separated.
ENVIRONMENT_OVERRIDES: dict[str, tuple[str, ...]] = {
    "MTA_DATABASE_URL": ("database", "url"),
    "MTA_SRS_SECRETS": ("srs", "secrets"),
    "MTA_SECRET_KEY": ("secret_key",),
    "MTA_STATE_DIR": ("state_dir",),
    "MTA_SMART_HOST_PASSWORD": ("delivery", "smart_host", "password"),
}

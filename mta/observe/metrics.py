"""Prometheus metrics of the node, all defined here so the names stay consistent.

Naming convention: `mta_<subsystem>_<what>_<unit>`, counters end in `_total`, durations
are histograms in seconds ending in `_seconds`; label values come from small fixed sets
(a reason code, a check result, a configured zone) — never an address or a free text.
Metrics live in prometheus_client's default registry, which the metrics listener
(`listeners.metrics`) exposes. Under `mta serve --workers N` every worker writes its
samples to files in `$PROMETHEUS_MULTIPROC_DIR` and the supervisor serves their sum
(`exposition_registry`): gauges therefore say how they combine across processes
(`multiprocess_mode`).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "AUTH_RESULTS",
    "INBOUND_CHECK_SECONDS",
    "INBOUND_MESSAGES",
    "INBOUND_RECORDS_LOST",
    "INBOUND_REJECTIONS",
    "INBOUND_SIZE_BYTES",
    "RBL_HITS",
    "SMTP_REPLIES",
    "SMTP_SESSIONS",
    "SMTP_SESSIONS_ACTIVE",
    "SMTP_SESSIONS_REFUSED",
]

SMTP_SESSIONS = Counter(
    "mta_smtp_sessions_total", "SMTP sessions opened, by listener", ["listener"])
SMTP_SESSIONS_ACTIVE = Gauge(
    "mta_smtp_sessions_active", "SMTP sessions open now, by listener", ["listener"],
    multiprocess_mode="livesum")
SMTP_SESSIONS_REFUSED = Counter(
    "mta_smtp_sessions_refused_total",
    "SMTP sessions refused at connect (limit = sessions | sessions_per_ip | proxy_protocol)",
    ["listener", "limit"])
SMTP_REPLIES = Counter(
    "mta_smtp_replies_total", "SMTP replies sent, by listener and basic code class",
    ["listener", "class"])
INBOUND_MESSAGES = Counter(
    "mta_inbound_messages_total",
    "Messages at the end of DATA on the MX listener, by outcome "
    "(accepted | quarantined | rejected | tempfailed | error)",
    ["outcome"])
INBOUND_RECORDS_LOST = Counter(
    "mta_inbound_records_lost_total",
    "Messages forwarded in-session and answered 250 whose record could not be committed "
    "(the database failed after the next hop accepted them)")
INBOUND_REJECTIONS = Counter(
    "mta_inbound_rejections_total",
    "Refusals on the MX listener by stable reason (relay_denied, unknown_recipient, rbl, "
    "not_authenticated, dmarc_reject, too_big, bare_line_ending, ...)",
    ["reason"])
AUTH_RESULTS = Counter(
    "mta_auth_results_total", "Authentication results of inbound messages",
    ["method", "result"])
RBL_HITS = Counter("mta_rbl_hits_total", "Client addresses found listed, by zone", ["zone"])
INBOUND_SIZE_BYTES = Histogram(
    "mta_inbound_message_size_bytes", "Size of messages received on the MX listener",
    buckets=(1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 33554432))
INBOUND_CHECK_SECONDS = Histogram(
    "mta_inbound_check_seconds",
    "Time from end of DATA to the decision (authentication checks and policy)",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

# --- outbound delivery queue (mta/queue/delivery.py) ------------------------------------

QUEUE_DEPTH = Gauge(
    "mta_queue_depth",
    "Queued deliveries by state (due | waiting | in_flight), sampled "
    "periodically by each node's delivery workers",
    ["status"], multiprocess_mode="livemostrecent")
QUEUE_OLDEST_DUE_SECONDS = Gauge(
    "mta_queue_oldest_due_seconds",
    "How long the oldest due delivery has been waiting past its attempt time",
    multiprocess_mode="livemostrecent")
DELIVERY_ATTEMPTS = Counter(
    "mta_delivery_attempts_total",
    "Delivery attempts per recipient by result (delivered | deferred | failed | expired)",
    ["result"])
DELIVERY_SECONDS = Histogram(
    "mta_delivery_seconds",
    "Time from enqueue to the final outcome of a recipient (delivered | failed | expired)",
    ["result"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400,
             432000))
DELIVERY_ATTEMPT_SECONDS = Histogram(
    "mta_delivery_attempt_seconds",
    "Duration of one SMTP transaction with a remote server (connection reuse included)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
OUTBOUND_CONNECTIONS = Counter(
    "mta_outbound_connections_total",
    "Outbound SMTP connections a delivery used, by origin (new | reused: kept open from "
    "an earlier message to the same next hop)",
    ["origin"])
DSN_QUEUED = Counter(
    "mta_dsn_queued_total", "Delivery status notifications queued, by kind "
    "(failed | expired | delayed)", ["kind"])
SUPPRESSIONS_ADDED = Counter(
    "mta_suppressions_added_total", "Automatic suppression entries, by reason",
    ["reason"])
BOUNCES_RECEIVED = Counter(
    "mta_bounces_received_total",
    "Reports received at VERP addresses by kind (dsn | arf | fallback | unparsed | forged)",
    ["kind"])

# DANE (mta/queue/dane.py, remote.py): what the TLSA look-ups found per MX host, and what
# became of the connections and deliveries DANE governed.
DANE_TLSA_LOOKUPS = Counter(
    "mta_dane_tlsa_lookups_total",
    "TLSA look-ups for MX hosts by state (dane: usable authenticated records | unusable | "
    "none | insecure: not authenticated | error: look-up failed, host not used)",
    ["state"])
TLS_REPORT_SESSIONS = Counter(
    "mta_tls_report_sessions_total",
    "Outbound sessions by the TLS outcome a TLS report (RFC 8460) counts: policy_type "
    "(sts | tlsa | no-policy-found) and result (success | an RFC 8460 result type)",
    ["policy_type", "result"])
TLS_REPORTS_SENT = Counter(
    "mta_tls_reports_sent_total",
    "Daily TLS reports by destination outcome (queued: mailto | posted: https | failed)",
    ["status"])
DANE_OUTCOMES = Counter(
    "mta_dane_outcomes_total",
    "DANE outcomes (verified: the certificate matched | mismatch | no_starttls | "
    "tls_failed | encrypted: TLS with unusable records | required_unmet: deferred, no "
    "host with usable records | lookup_failed: deferred, every look-up failed)",
    ["outcome"])

__all__ += [
    "BOUNCES_RECEIVED", "DANE_OUTCOMES", "TLS_REPORTS_SENT", "TLS_REPORT_SESSIONS", "DANE_TLSA_LOOKUPS", "DELIVERY_ATTEMPTS", "DELIVERY_ATTEMPT_SECONDS", "DELIVERY_SECONDS",
    "DSN_QUEUED", "OUTBOUND_CONNECTIONS", "QUEUE_DEPTH", "QUEUE_OLDEST_DUE_SECONDS",
    "SUPPRESSIONS_ADDED",
]

# --- delivery-event webhooks (mta/webhooks/sender.py) ----------------------------------

WEBHOOK_EVENTS = Counter(
    "mta_webhook_events_total",
    "Webhook events finished, by result (delivered: answered 2xx | failed: gave up after "
    "webhooks.max_attempts)",
    ["result"])
WEBHOOK_ATTEMPTS = Counter(
    "mta_webhook_attempts_total",
    "Webhook POSTs by result (ok: 2xx | http_error: another status | network_error: "
    "no answer, timeout, refused connection)",
    ["result"])
WEBHOOK_PENDING = Gauge(
    "mta_webhook_pending",
    "Webhook events not yet delivered nor given up (every node's outbox), sampled "
    "periodically by each node's sender",
    multiprocess_mode="livemostrecent")
WEBHOOK_SECONDS = Histogram(
    "mta_webhook_post_seconds", "Duration of one webhook POST, answered or not",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

__all__ += ["WEBHOOK_ATTEMPTS", "WEBHOOK_EVENTS", "WEBHOOK_PENDING", "WEBHOOK_SECONDS"]

# --- dependencies (mta/observe/dbhealth.py) ---------------------------------------------

# livemin: with several worker processes the node counts as up only if every one of
# them reaches the database.
DATABASE_UP = Gauge(
    "mta_database_up", "1 when the database answered the last check, 0 when it did not",
    multiprocess_mode="livemin")

__all__ += ["DATABASE_UP"]

# --- SMTP submission (mta/smtp/submission.py) --------------------------------------------

SMTP_BDAT_CHUNKS = Counter(
    "mta_smtp_bdat_chunks_total",
    "BDAT chunks (RFC 3030 CHUNKING) read by the SMTP listeners, refused ones included")
SUBMISSION_AUTH_THROTTLED = Counter(
    "mta_submission_auth_throttled_total",
    "AUTH attempts on the submission listeners throttled after failures, by scope "
    "(ip: refused with 454 | user: answered after a delay)",
    ["scope"])
SUBMISSION_AUTH = Counter(
    "mta_submission_auth_total",
    "AUTH attempts on the submission listeners by mechanism (plain | login) and result "
    "(ok | failed | cancelled | error | throttled)",
    ["mechanism", "result"])
SUBMISSION_MESSAGES = Counter(
    "mta_submission_messages_total",
    "Messages at the end of DATA on the submission listeners, by outcome "
    "(accepted | rejected | tempfailed)",
    ["outcome"])
SUBMISSION_REJECTIONS = Counter(
    "mta_submission_rejections_total",
    "Refusals on the submission listeners by stable reason (an error code such as "
    "E_SENDER_DOMAIN_NOT_AVAILABLE, or too_many_recipients, too_big, auth_required)",
    ["reason"])
SUBMISSION_SECONDS = Histogram(
    "mta_submission_seconds",
    "Time from end of DATA to the final reply (validation, signing, durable enqueue)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

__all__ += [
    "exposition_registry",
    "SMTP_BDAT_CHUNKS", "SUBMISSION_AUTH", "SUBMISSION_AUTH_THROTTLED", "SUBMISSION_MESSAGES",
    "SUBMISSION_REJECTIONS", "SUBMISSION_SECONDS",
]


def exposition_registry(multiprocess_dir: str | None = None):
    """The registry the metrics listener serves: the default one for a single process;
    for a supervisor, the workers' files in `multiprocess_dir` summed up, plus the
    supervisor's own process and Python figures."""
    from prometheus_client import REGISTRY, CollectorRegistry, PlatformCollector, ProcessCollector
    from prometheus_client.multiprocess import MultiProcessCollector

    if multiprocess_dir is None:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=multiprocess_dir)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry

# --- DMARC aggregate reports (mta/reports/dmarc_send.py) ---------------------------------

DMARC_REPORTS = Counter(
    "mta_dmarc_reports_total",
    "DMARC aggregate report destinations by outcome (queued | refused: no §7.1 "
    "authorisation | too_large: over the rua size limit | suppressed | failed)",
    ["outcome"])

__all__ += ["DMARC_REPORTS"]

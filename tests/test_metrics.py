"""Prometheus metrics as an operator scrapes them: a real `mta serve` process, a real
SMTP client on its MX port, the metrics listener over HTTP — and the naming rules every
family in `mta/observe/metrics.py` follows.

World: account "acme" with zone ours.test (routing on), routing domain ours.test and a
drop rule for user@ours.test (accepted, nothing to deliver); sender.test publishes
`v=spf1 ip4:127.0.0.1 -all` in the test DNS server, so the message passes SPF.
"""

from __future__ import annotations

import ast
import asyncio
import re
import smtplib
from email import policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

import httpx
from prometheus_client import Counter, Gauge, Histogram, Summary
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from mta.observe import metrics as metrics_module
from mta.store.models import Account, RoutingDomain, RoutingRule, Zone

METRICS_SOURCE = Path(metrics_module.__file__)
# Prometheus: [a-zA-Z_:][a-zA-Z0-9_:]*, and by convention lower-case snake case; colons
# are for recording rules, never for instrumentation.
NAME = re.compile(r"^[a-z][a-z0-9_]*$")
LABEL = re.compile(r"^[a-z][a-z0-9_]*$")
# Suffixes the client library adds to samples: a family must not end with them itself
# (counters' _total aside).
RESERVED_SUFFIXES = ("_count", "_sum", "_bucket", "_created", "_info")
# Non-base units Prometheus asks not to use: seconds and bytes only.
NON_BASE_UNITS = ("_milliseconds", "_ms", "_microseconds", "_minutes", "_hours", "_days",
                  "_kilobytes", "_kb", "_megabytes", "_mb", "_bits")
SENDER = "alice@sender.test"
RCPT = "user@ours.test"


# --- scraping ----------------------------------------------------------------------------


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """Every sample of the node's /metrics, keyed by (sample name, labels)."""
    resp = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    resp.raise_for_status()
    assert resp.headers["content-type"].startswith("text/plain")
    out: dict[tuple[str, frozenset], float] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    """A sample's value; 0 for a labelled series not created yet (as PromQL treats it)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def exposed_families(port: int) -> dict[str, str]:
    """name -> type of every mta_ family the node exposes. The classic text format shows
    each counter's and histogram's creation time as a separate `<name>_created` gauge;
    those belong to their family and are left out."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    families = {f.name: f.type for f in text_string_to_metric_families(text)
                if f.name.startswith("mta_")}
    return {n: t for n, t in families.items()
            if not (n.endswith("_created") and t == "gauge"
                    and n.removesuffix("_created") in families)}


# --- the world ---------------------------------------------------------------------------


async def seed(db) -> None:
    async with db.session() as s:
        acct = Account(name="acme")
        s.add(acct)
        await s.flush()
        zone = Zone(account_id=acct.id, name="ours.test", routing_enabled=True)
        s.add(zone)
        await s.flush()
        s.add_all([
            RoutingDomain(zone_id=zone.id, name="ours.test"),
            RoutingRule(zone_id=zone.id, name="drop user", matchers=[
                {"type": "literal", "field": "to", "value": RCPT}],
                actions=[{"type": "drop"}]),
        ])


def send_one(port: int) -> tuple[int, bytes]:
    msg = EmailMessage()
    msg["From"] = f"Alice <{SENDER}>"
    msg["To"] = RCPT
    msg["Subject"] = "metrics"
    msg["Date"] = formatdate()
    msg["Message-ID"] = make_msgid(domain="sender.test")
    msg.set_content("Counting this one.\n")
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=20) as s:
        s.ehlo()
        s.mail(SENDER)
        code, text = s.rcpt(RCPT)
        assert code == 250, (code, text)
        return s.data(msg.as_bytes(policy=policy.SMTP))  # CRLF: bare LF is refused


# --- the counters move -------------------------------------------------------------------


async def test_counters_move_after_a_message_over_smtp(make_node, db, db_url,
                                                      dns_server) -> None:
    await seed(db)
    dns_server.add_txt("sender.test", "v=spf1 ip4:127.0.0.1 -all")
    node = make_node({"database": {"url": db_url}})
    mport = node.port("metrics")

    before = await asyncio.to_thread(scrape, mport)
    code, text = await asyncio.to_thread(send_one, node.port("mx"))
    assert code == 250, text
    after = await asyncio.to_thread(scrape, mport)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("mta_smtp_sessions_total", listener="mx") == 1
    assert delta("mta_inbound_messages_total", outcome="accepted") == 1
    for outcome in ("quarantined", "rejected", "tempfailed", "error"):
        assert delta("mta_inbound_messages_total", outcome=outcome) == 0, outcome
    assert delta("mta_auth_results_total", method="spf", result="pass") == 1
    assert delta("mta_auth_results_total", method="dkim", result="none") == 1
    assert delta("mta_smtp_replies_total", listener="mx", **{"class": "2xx"}) >= 4
    assert delta("mta_inbound_message_size_bytes_count") == 1
    assert delta("mta_inbound_check_seconds_count") == 1
    assert value(after, "mta_smtp_sessions_active", listener="mx") == 0

    # The node exposes only families defined in mta/observe/metrics.py, with their types.
    defined = {m._name + ("_total" if m._type == "counter" else ""): m._type
               for m in defined_metrics()}
    exposed = await asyncio.to_thread(exposed_families, mport)
    # The text parser names a counter family without _total; put it back to compare.
    exposed = {n + ("_total" if t == "counter" else ""): t for n, t in exposed.items()}
    assert exposed, "no mta_ family exposed"
    assert exposed.items() <= defined.items(), set(exposed.items()) - set(defined.items())
    assert node.stop() == 0


# --- naming ------------------------------------------------------------------------------


def defined_metrics() -> list[MetricWrapperBase]:
    return [v for v in vars(metrics_module).values() if isinstance(v, MetricWrapperBase)]


def declared_names() -> dict[str, str]:
    """name as written in the source -> constructor (Counter, Gauge, ...), read from the
    module's text: prometheus_client adds a missing `_total` to counters on its own, so
    only the source shows whether the definition follows the convention."""
    kinds = {"Counter", "Gauge", "Histogram", "Summary"}
    out: dict[str, str] = {}
    for node in ast.walk(ast.parse(METRICS_SOURCE.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in kinds):
            first = node.args[0] if node.args else None
            assert isinstance(first, ast.Constant) and isinstance(first.value, str), (
                f"line {node.lineno}: a metric name must be a literal string")
            assert first.value not in out, f"{first.value} defined twice"
            out[first.value] = node.func.id
    return out


def test_every_metric_follows_prometheus_naming() -> None:
    declared = declared_names()
    objects = defined_metrics()
    assert len(declared) == len(objects) >= 20, (sorted(declared), len(objects))
    exported = set(metrics_module.__all__)
    for attr, obj in vars(metrics_module).items():
        if isinstance(obj, MetricWrapperBase):
            assert attr in exported, f"{attr} missing from __all__"
    problems: list[str] = []
    for name, kind in sorted(declared.items()):
        def bad(why: str, name: str = name) -> None:
            problems.append(f"{name}: {why}")

        if not name.startswith("mta_"):
            bad("no mta_ prefix")
        if not NAME.match(name) or "__" in name:
            bad("not lower-case snake case")
        if kind == "Counter" and not name.endswith("_total"):
            bad("a counter must end in _total")
        if kind != "Counter" and name.endswith("_total"):
            bad("only counters end in _total")
        if name.endswith(RESERVED_SUFFIXES):
            bad("ends with a suffix the client library reserves")
        if any(u in f"{name}_" for u in (s + "_" for s in NON_BASE_UNITS)):
            bad("not in base units (seconds, bytes)")
        stem = name.removesuffix("_total")
        if kind in ("Histogram", "Summary") and not stem.endswith(("_seconds", "_bytes")):
            bad("a histogram needs its unit as suffix (_seconds or _bytes)")
        for unit in ("seconds", "bytes"):
            if f"_{unit}_" in f"{stem}_" and not stem.endswith(f"_{unit}"):
                bad(f"the unit {unit} must be the last part of the name")
        if "size" in stem and not stem.endswith("_bytes"):
            bad("a size is in bytes and says so")
        if "duration" in stem or "latency" in stem or "time" in stem.split("_"):
            if not stem.endswith("_seconds"):
                bad("a duration is in seconds and says so")
    for obj in objects:
        full = obj._name + ("_total" if obj._type == "counter" else "")
        if declared.get(full) is None:
            problems.append(f"{full}: registered under another name than its source says")
        if not obj._documentation.strip():
            problems.append(f"{full}: no help text")
        for label in obj._labelnames:
            if not LABEL.match(label) or label.startswith("__"):
                problems.append(f"{full}: label {label!r} is not a valid label name")
            if isinstance(obj, Histogram) and label == "le":
                problems.append(f"{full}: label 'le' is reserved for histogram buckets")
        assert isinstance(obj, Counter | Gauge | Histogram | Summary)
    assert not problems, "\n".join(problems)

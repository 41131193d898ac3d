"""DMARC aggregate reports (RFC 7489 §7.2) from the rows the MX recorded
(`dmarc_results`, mta/smtp/dmarcrow.py): one report per policy domain and period.

Messages with the same source IP, identifiers, raw SPF/DKIM results and evaluated policy
become one <record> with their count. <policy_published> is the newest record seen in
the period (a domain that changes its policy mid-day gets the one in force at its end).
The XML follows the schema of RFC 7489 Appendix C, in its namespace; the attachment is
gzip with the file name of §7.2.1.1 (`receiver!policy-domain!begin!end.xml.gz`).
"""

from __future__ import annotations

import gzip
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from mta.checks.dmarc import parse_dmarc_record
from mta.store.db import Database
from mta.store.models import DmarcResultRow

__all__ = ["NAMESPACE", "AggregateReport", "collect", "gzipped", "report_filename",
           "report_xml"]

NAMESPACE = "http://dmarc.org/dmarc-xml/0.1"


@dataclass
class AggregateReport:
    policy_domain: str
    begin: datetime
    end: datetime
    record: str  # the DMARC TXT record in force (newest in the period)
    rows: dict[tuple, int] = field(default_factory=dict)  # record key -> message count

    @property
    def messages(self) -> int:
        return sum(self.rows.values())


def _key(r: DmarcResultRow) -> tuple:
    dkim = tuple(sorted((d.get("domain", ""), d.get("selector", ""), d.get("result", ""))
                        for d in r.dkim or []))
    return (str(r.source_ip), r.header_from, r.envelope_from, r.disposition,
            "pass" if r.dkim_aligned else "fail", "pass" if r.spf_aligned else "fail",
            r.reason or "", dkim, r.spf_domain, r.spf_scope, r.spf_result)


async def collect(db: Database, begin: datetime, end: datetime,
                  domain: str | None = None) -> list[AggregateReport]:
    """The reports of the period [begin, end), one per policy domain (or only `domain`)."""
    q = select(DmarcResultRow).where(DmarcResultRow.ts >= begin, DmarcResultRow.ts < end)
    if domain:
        q = q.where(DmarcResultRow.policy_domain == domain.lower())
    reports: dict[str, AggregateReport] = {}
    counts: dict[str, dict[tuple, int]] = defaultdict(lambda: defaultdict(int))
    async with db.session() as s:
        result = await s.stream_scalars(q.order_by(DmarcResultRow.id).execution_options(
            yield_per=1000))
        async for r in result:
            rep = reports.get(r.policy_domain)
            if rep is None:
                rep = reports[r.policy_domain] = AggregateReport(r.policy_domain, begin, end,
                                                                 r.record)
            rep.record = r.record  # rows come oldest first: the last one wins
            counts[r.policy_domain][_key(r)] += 1
    for name, rep in reports.items():
        rep.rows = dict(counts[name])
    return sorted(reports.values(), key=lambda rep: rep.policy_domain)


def _sub(parent: ET.Element, tag: str, text: Any = None) -> ET.Element:
    el = ET.SubElement(parent, f"{{{NAMESPACE}}}{tag}")
    if text is not None:
        el.text = str(text)
    return el


def _group(parent: ET.Element, tag: str, **children: Any) -> ET.Element:
    """A `tag` element under `parent` holding one text element per keyword, in the
    order given (the schema's), none for a value of None."""
    el = _sub(parent, tag)
    for name, text in children.items():
        if text is not None:
            _sub(el, name, text)
    return el


def report_xml(rep: AggregateReport, *, org_name: str, email: str, report_id: str) -> bytes:
    ET.register_namespace("", NAMESPACE)
    root = ET.Element(f"{{{NAMESPACE}}}feedback")
    _sub(root, "version", "1.0")
    meta = _group(root, "report_metadata", org_name=org_name, email=email,
                  report_id=report_id)
    _group(meta, "date_range", begin=int(rep.begin.timestamp()),
           end=int(rep.end.timestamp()) - 1)  # inclusive: the period's last second
    try:
        policy = parse_dmarc_record(rep.record)
        p, sp, pct, adkim, aspf = policy.p, policy.sp, policy.pct, policy.adkim, policy.aspf
    except ValueError:  # recorded rows came from parsable records; be safe anyway
        p, sp, pct, adkim, aspf = "none", "none", 100, "r", "r"
    fo = next((part.partition("=")[2].strip() for part in rep.record.split(";")
               if part.strip().lower().startswith("fo=")), "0")
    _group(root, "policy_published", domain=rep.policy_domain, adkim=adkim, aspf=aspf, p=p,
           sp=sp, pct=pct, fo=fo or "0")
    for key, count in sorted(rep.rows.items(), key=lambda kv: (-kv[1], kv[0])):
        (ip, header_from, envelope_from, disposition, dkim_eval, spf_eval, reason, dkim,
         spf_domain, spf_scope, spf_result) = key
        rec = _sub(root, "record")
        row = _group(rec, "row", source_ip=ip, count=count)
        evaluated = _group(row, "policy_evaluated", disposition=disposition, dkim=dkim_eval,
                           spf=spf_eval)
        if reason:
            _group(evaluated, "reason", type=reason)
        _group(rec, "identifiers", envelope_from=envelope_from, header_from=header_from)
        auth = _sub(rec, "auth_results")
        for d_domain, d_selector, d_result in dkim:
            _group(auth, "dkim", domain=d_domain, selector=d_selector or None, result=d_result)
        _group(auth, "spf", domain=spf_domain, scope=spf_scope, result=spf_result)
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True)


def report_filename(receiver: str, rep: AggregateReport) -> str:
    """§7.2.1.1: filename = receiver "!" policy-domain "!" begin "!" end "." ext."""
    return (f"{receiver}!{rep.policy_domain}!{int(rep.begin.timestamp())}!"
            f"{int(rep.end.timestamp()) - 1}.xml.gz")


def gzipped(xml: bytes) -> bytes:
    return gzip.compress(xml, mtime=0)

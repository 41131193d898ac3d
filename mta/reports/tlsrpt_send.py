"""Delivering one TLS report (RFC 8460 §5) to one `rua` URI.

mailto: a multipart/report (report-type=tlsrpt) mail with the gzipped JSON as an
`application/tlsrpt+gzip` attachment and the `TLS-Report-Domain` and
`TLS-Report-Submitter` header fields, DKIM-signed with the forwarding domain's key when
there is one, and queued like any other outbound mail (our own delivery path, retries
and all). https: a POST of the gzipped JSON as `application/tlsrpt+gzip`, never to a non-public
address unless `tls_reports.allow_private_targets` (mta.observe.egress).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from urllib.parse import unquote

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from mta.dnscache import DnsResolver
from mta.observe import egress
from mta.queue.queue import PRIORITY_BULK, Recipient, enqueue
from mta.reports.tlsrpt_build import Report, report_filename
from mta.store.db import Database
from mta.store.models import Message

__all__ = ["CONTENT_TYPE", "SendError", "Signer", "compose_mail", "mail_report", "post_report",
           "queue_mail"]

CONTENT_TYPE = "application/tlsrpt+gzip"
# DKIM-signs a report mail (RFC 8460 §5.3); the caller builds it from the forwarding
# domain's key (mta.routing.forward.forwarding_signer), which lives above this layer.
Signer = Callable[[bytes], Awaitable[bytes]]


class SendError(Exception):
    """This destination did not take the report."""


def compose_mail(report: Report, *, to: str, sender: str, submitter: str,
                 now: datetime) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or submitter)
    # RFC 8460 §5.3: the subject and these two fields let a receiver sort reports.
    msg["Subject"] = (f"Report Domain: {report.domain} Submitter: {submitter} "
                      f"Report-ID: <{report.report_id}>")
    msg["TLS-Report-Domain"] = report.domain
    msg["TLS-Report-Submitter"] = submitter
    msg.set_content(
        f"This is an aggregate TLS report (RFC 8460) from {submitter} about the mail it "
        f"sent to {report.domain} on {report.day.isoformat()}: "
        f"{report.successes} successful and {report.failures} failed session(s).\n")
    msg.add_attachment(report.gzipped(), maintype="application", subtype="tlsrpt+gzip",
                       filename=report_filename(report, submitter))
    msg.set_type("multipart/report")
    msg.set_param("report-type", "tlsrpt")
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


async def queue_mail(session: AsyncSession, raw: bytes, *, to: str, sender: str,
                     now: datetime) -> Message:
    """Queue the report mail in the caller's transaction."""
    message = Message(direction="outbound", source="tlsrpt", mail_from=sender,
                      rcpt_to=[to], raw=raw, size=len(raw), received_at=now,
                      status="queued")
    await enqueue(session, message, [Recipient(to)], now=now, priority=PRIORITY_BULK)
    return message


def mailto_address(uri: str) -> str:
    return unquote(uri[len("mailto:"):].partition("?")[0]).strip()


async def mail_report(db: Database, uri: str, report: Report, *, sender: str,
                      submitter: str, now: datetime, sign: Signer | None = None) -> None:
    """Queue the report mail to the `mailto:` URI, signed by `sign` when given."""
    to = mailto_address(uri)
    raw = compose_mail(report, to=to, sender=sender, submitter=submitter, now=now)
    if sign is not None:
        raw = await sign(raw)
    async with db.session() as s:
        await queue_mail(s, raw, to=to, sender=sender, now=now)


async def post_report(uri: str, report: Report, *, timeout: float, resolver: DnsResolver,
                      allow_private: bool = False, verify=True) -> int:
    """POST the report; the HTTP status. SendError when it was not taken. The `rua`
    comes from the recipient domain's DNS: mta.observe.egress keeps it off our own
    network (tls_reports.allow_private_targets)."""
    try:
        async with httpx.AsyncClient(timeout=timeout, verify=verify, trust_env=False,
                                     follow_redirects=False) as client:
            status = await egress.post(client, uri, content=report.gzipped(),
                                       headers={"Content-Type": CONTENT_TYPE},
                                       resolver=resolver, allow_private=allow_private,
                                       timeout=timeout)
    except egress.Refused as exc:
        raise SendError(str(exc)) from None
    except httpx.HTTPError as exc:
        raise SendError(f"{uri}: {exc or type(exc).__name__}") from None
    except TimeoutError:
        raise SendError(f"{uri}: no answer within {timeout:g} s") from None
    if not 200 <= status < 300:
        raise SendError(f"{uri}: HTTP {status}")
    return status

"""DSN composition and bounce / complaint parsing, checked with Python's email package."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime

from mta.queue.dsn import (
    DsnRecipient,
    compose_dsn,
    dsn_allowed,
    is_auto_submitted,
    is_dsn,
    parse_arf,
    parse_bounce,
    parse_dsn,
)
from mta.queue.intl import needs_smtputf8
from mta.queue.outcome import RecipientOutcome, Reply

ORIGINAL = (b"From: Alice <alice@src.test>\r\nTo: bob@dest.test, carol@dest.test\r\n"
            b"Subject: Quarterly report\r\nMessage-ID: <orig-123@src.test>\r\n"
            b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n\r\nSecret body text\r\n")
ARRIVED = datetime(2024, 1, 1, 10, 0, 5, tzinfo=UTC)


def compose(outcomes, **kw) -> bytes:
    return compose_dsn("mta.src.test", ORIGINAL, "bounces+x@bounce.src.test", outcomes,
                       ARRIVED, "postmaster@src.test", **kw)


def test_failure_dsn_structure_and_round_trip():
    failed = RecipientOutcome("bob@dest.test", "failed",
                              Reply(550, "5.1.1", "The email account does not exist"),
                              mx_host="mx.dest.test", ip="127.0.0.2")
    delayed = RecipientOutcome("carol@dest.test", "deferred", None, mx_host=None,
                               detail="connection refused by mx.dest.test")
    raw = compose([DsnRecipient.from_outcome(failed, "failed"),
                   DsnRecipient.from_outcome(delayed, "delayed",
                                             will_retry_until=datetime(2024, 1, 6, tzinfo=UTC))],
                  envelope_id="env-42")
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only, ready for SMTP

    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["To"] == "bounces+x@bounce.src.test"
    assert msg["In-Reply-To"] == "<orig-123@src.test>"
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    human = parts[0].get_content()
    assert "bob@dest.test" in human and "does not exist" in human
    blocks = parts[1].get_payload()
    assert blocks[0]["Reporting-MTA"] == "dns; mta.src.test"
    assert blocks[0]["Original-Envelope-Id"] == "env-42"
    assert blocks[1]["Final-Recipient"] == "rfc822; bob@dest.test"
    assert (blocks[1]["Action"], blocks[1]["Status"]) == ("failed", "5.1.1")
    assert blocks[1]["Remote-MTA"] == "dns; mx.dest.test"
    assert "550 5.1.1 The email account does not exist" in blocks[1]["Diagnostic-Code"]
    assert (blocks[2]["Action"], blocks[2]["Status"]) == ("delayed", "4.4.1")
    assert blocks[2]["Will-Retry-Until"]
    headers = parts[2].get_payload()
    assert "Subject: Quarterly report" in headers and "Secret body text" not in headers

    parsed = parse_dsn(raw)
    assert [(p.recipient, p.action, p.status) for p in parsed] == [
        ("bob@dest.test", "failed", "5.1.1"), ("carol@dest.test", "delayed", "4.4.1")]
    bob = parsed[0]
    assert bob.permanent and not parsed[1].permanent
    assert bob.diagnostic_code == "550 5.1.1 The email account does not exist"
    assert (bob.remote_mta, bob.reporting_mta) == ("mx.dest.test", "mta.src.test")
    assert (bob.envelope_id, bob.message_id) == ("env-42", "<orig-123@src.test>")


def test_non_ascii_remote_text_stays_a_valid_header():
    out = RecipientOutcome("bob@dest.test", "failed",
                           Reply(550, "5.7.1", "Nachricht abgelehnt – Spam " + "x" * 120))
    raw = compose([DsnRecipient.from_outcome(out, "failed")])
    status = raw.split(b"message/delivery-status", 1)[1].split(b"--=_dsn_", 1)[0]
    assert status.isascii()
    assert all(len(line) <= 200 for line in status.split(b"\r\n"))
    [parsed] = parse_dsn(raw)
    assert parsed.diagnostic_code.startswith("550 5.7.1 Nachricht abgelehnt")
    assert parsed.diagnostic_code.endswith("x" * 120)  # folded, then unfolded intact


def test_loop_protection():
    raw = compose([DsnRecipient("bob@dest.test", "failed", "5.1.1")])
    assert is_dsn(raw) and not is_dsn(ORIGINAL)
    assert is_auto_submitted(raw) and not is_auto_submitted(ORIGINAL)
    assert not dsn_allowed("someone@src.test", raw)  # never a DSN about a DSN
    assert not dsn_allowed("", ORIGINAL)  # nor about a null-sender message
    assert dsn_allowed("alice@src.test", ORIGINAL)
    generated = b"Auto-Submitted: auto-generated\r\n" + ORIGINAL
    assert dsn_allowed("alice@src.test", generated)  # a transactional sender still hears


# RFC 5965 Appendix B.1, with CRLF line ends.
ARF = b"""From: <abusedesk@example.com>
Date: Thu, 8 Mar 2005 17:40:36 EDT
Subject: FW: Earn money
To: <abuse@example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report;
     boundary="part1_13d.2e68ed54_boundary"

--part1_13d.2e68ed54_boundary
Content-Type: text/plain; charset="US-ASCII"
Content-Transfer-Encoding: 7bit

This is an email abuse report for an email message received from IP
192.0.2.1 on Thu, 8 Mar 2005 14:00:00 EDT.  For more information
about this format please see http://www.mipassoc.org/arf/.

--part1_13d.2e68ed54_boundary
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: SomeGenerator/1.0
Version: 1
Original-Mail-From: <somespammer@example.net>
Original-Rcpt-To: <user@example.com>
Arrival-Date: Thu, 8 Mar 2005 14:00:00 EDT
Reporting-MTA: dns; mail.example.com
Source-IP: 192.0.2.1
Authentication-Results: mail.example.com;
               spf=fail smtp.mail=somespammer@example.com
Reported-Domain: example.net
Reported-Uri: http://example.net/earn_money.html
Reported-Uri: mailto:user@example.com
Removal-Recipient: user@example.com

--part1_13d.2e68ed54_boundary
Content-Type: message/rfc822
Content-Disposition: inline

From: <somespammer@example.net>
Received: from mailserver.example.net (mailserver.example.net
        [192.0.2.1]) by example.com with ESMTP id M63d4137594e46;
        Thu, 08 Mar 2005 14:00:00 -0400
To: <Undisclosed Recipients>
Subject: Earn money
MIME-Version: 1.0
Content-type: text/plain
Message-ID: 8787KJKJ3K4J3K4J3K4J3.mail@example.net
Date: Thu, 02 Sep 2004 12:31:03 -0500

Spam Spam Spam
Spam Spam Spam
Spam Spam Spam
Spam Spam Spam
--part1_13d.2e68ed54_boundary--
""".replace(b"\n", b"\r\n")


def test_parse_arf_rfc5965_sample():
    report = parse_arf(ARF)
    assert report is not None
    assert report.feedback_type == "abuse"
    assert report.original_mail_from == "somespammer@example.net"
    assert report.original_rcpt_to == ["user@example.com"]
    assert (report.user_agent, report.version) == ("SomeGenerator/1.0", "1")
    assert report.reporting_mta == "mail.example.com" and report.source_ip == "192.0.2.1"
    assert report.reported_domain == ["example.net"]
    assert report.original_message_id == "8787KJKJ3K4J3K4J3K4J3.mail@example.net"
    assert ("Subject", "Earn money") in report.original_headers
    assert is_dsn(ARF)
    assert parse_arf(ORIGINAL) is None
    assert parse_dsn(ARF) == []


QMAIL = b"""From: MAILER-DAEMON@mx.dest.test
To: bounces+x@bounce.src.test
Subject: failure notice

Hi. This is the qmail-send program at mx.dest.test.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<bob@dest.test>:
127.0.0.2 does not like recipient.
Remote host said: 550 5.1.1 <bob@dest.test>: Recipient address rejected: User unknown
Giving up on 127.0.0.2.

<carol@dest.test>:
Sorry, I couldn't find any host named dest.test. (#5.1.2)

--- Below this line is a copy of the message.

Return-Path: <alice@src.test>
To: dave@dest.test
Message-ID: <orig-123@src.test>

hello
""".replace(b"\n", b"\r\n")


def test_fallback_parser_reads_a_qmail_bounce():
    found = parse_bounce(QMAIL)
    assert [(p.recipient, p.action, p.status, p.source) for p in found] == [
        ("bob@dest.test", "failed", "5.1.1", "heuristic"),
        ("carol@dest.test", "failed", "5.1.2", "heuristic")]
    assert found[0].diagnostic_code.startswith("550 5.1.1")
    # Addresses in the quoted original (dave@) and the daemon itself are not recipients.
    assert parse_dsn(QMAIL) == []


def test_fallback_parser_on_exim_style_and_standard_dsn():
    exim = (b"From: Mail Delivery System <Mailer-Daemon@mx.dest.test>\r\n"
            b"Subject: Mail delivery failed: returning message to sender\r\n\r\n"
            b"This message was created automatically by mail delivery software.\r\n\r\n"
            b"A message that you sent could not be delivered to one or more of its\r\n"
            b"recipients. This is a permanent error. The following address(es) failed:\r\n\r\n"
            b"  erin@dest.test\r\n"
            b"    host mx.dest.test [10.5.1.1]\r\n"
            b"    SMTP error from remote mail server after RCPT TO:<erin@dest.test>:\r\n"
            b"    550 mailbox unavailable\r\n\r\n"
            b"------ This is a copy of the message, including all the headers. ------\r\n"
            b"To: frank@dest.test\r\n\r\nhi\r\n")
    [p] = parse_bounce(exim)
    assert (p.recipient, p.status, p.action) == ("erin@dest.test", "5.0.0", "failed")
    assert p.diagnostic_code.startswith("550 mailbox unavailable")

    standard = compose([DsnRecipient("bob@dest.test", "failed", "5.1.1")])
    [p] = parse_bounce(standard)
    assert (p.recipient, p.source) == ("bob@dest.test", "dsn")
    assert parse_bounce(ORIGINAL) == []  # an ordinary message is not a bounce


INTL = ("From: Jörg <jörg@src.test>\r\nTo: bob@dest.test\r\nSubject: Grüße\r\n"
        "Message-ID: <intl-1@src.test>\r\n\r\nHallo\r\n").encode()


def test_dsn_about_an_internationalised_message_returns_it_as_message_global():
    """RFC 6533 §6: UTF-8 header fields come back in message/global (RET=FULL) or
    message/global-headers, and such a DSN needs SMTPUTF8 although its own header
    section is ASCII."""
    failed = DsnRecipient.from_outcome(
        RecipientOutcome("bob@dest.test", "failed", Reply(550, "5.1.1", "no such user")),
        "failed")
    for ret, kind in (("FULL", "message/global"), ("HDRS", "message/global-headers")):
        raw = compose_dsn("mta.src.test", INTL, "jörg@src.test", [failed], ARRIVED,
                          "postmaster@src.test", ret=ret)
        msg = email.message_from_bytes(raw)
        types = [p.get_content_type() for p in msg.get_payload()]
        assert types == ["text/plain", "message/delivery-status", kind], ret
        assert msg.get_payload()[2]["Content-Transfer-Encoding"] == "8bit"
        assert "Subject: Grüße".encode() in raw
        assert needs_smtputf8("", ["bob@src.test"], raw), ret
    # An ASCII original keeps message/rfc822, and its DSN needs no SMTPUTF8.
    plain = compose([failed], ret="FULL")
    assert [p.get_content_type() for p in email.message_from_bytes(plain).get_payload()] == [
        "text/plain", "message/delivery-status", "message/rfc822"]
    assert not needs_smtputf8("", ["bob@src.test"], plain)

"""Every SMTP reply we send, named once (after mox's `smtp/codes.go`).

Nothing else in the code writes a reply string: a session, or the in-session routing and
handler steps whose answer the MX passes on, picks a `Reply` from this table by name (each written as it reads on the wire) and, where the reply carries a detail (an IP address, a zone, a size),
fills it with `Reply.format(...)`. A test checks that every 4xx reply carries a 4.x.x
enhanced code and every 5xx a 5.x.x one (RFC 3463 §2: the class digits must agree).

References: RFC 5321 §4.2 (basic codes), RFC 3463 and the IANA "SMTP Enhanced Status
Codes" registry (enhanced codes), RFC 7372 (X.7.2x authentication codes), RFC 6531
(X.6.7 non-ASCII addresses), RFC 1870 (SIZE), RFC 3207 (STARTTLS), RFC 3461 (DSN).
It imports nothing of ours, so any layer may name a reply; the checks never do (they
report, `mta.smtp.authcheck.policy_reply` speaks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Reply", "all_replies", "ehlo_lines", "enhanced_for", "quoted"]

_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: basic code, enhanced status code (RFC 3463) and text."""

    code: int
    enhanced: str | None
    text: str

    @classmethod
    def parse(cls, line: str) -> Reply:
        """A reply as it reads on the wire: `"550 5.1.1 text"`, or `"220 text"` without an
        enhanced code."""
        code, _, rest = line.partition(" ")
        enhanced, _, text = rest.partition(" ")
        if not _ENHANCED.fullmatch(enhanced):
            enhanced, text = "", rest
        if not (code.isdigit() and len(code) == 3):
            raise ValueError(f"not an SMTP reply: {line!r}")
        return cls(int(code), enhanced or None, text)

    def format(self, **values: object) -> Reply:
        """The same reply with `{name}` placeholders of the text filled in."""
        return Reply(self.code, self.enhanced, self.text.format(**values))

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    @property
    def positive(self) -> bool:
        return self.code < 400

    def line(self) -> str:
        """The reply as one line, without CRLF (enhanced code only when present)."""
        parts = [str(self.code)]
        if self.enhanced:
            parts.append(self.enhanced)
        parts.append(self.text)
        return " ".join(parts)

    def __str__(self) -> str:
        return self.line()


def ehlo_lines(hostname: str, greeting: str, extensions: list[str]) -> list[str]:
    """The multi-line 250 reply to EHLO (RFC 5321 §4.1.1.1): hostname first, then one
    extension keyword a line; every line but the last has `250-`."""
    lines = [f"{hostname} {greeting}", *extensions]
    return [f"250{'-' if i < len(lines) - 1 else ' '}{text}" for i, text in enumerate(lines)]


# --- 2xx / 3xx ----------------------------------------------------------------------------

GREETING = Reply.parse("220 {hostname} ESMTP ready")
READY_FOR_TLS = Reply.parse("220 2.0.0 Ready to start TLS")
CLOSING = Reply.parse("221 2.0.0 {hostname} closing connection")
HELO_OK = Reply.parse("250 {hostname} greets {helo}")
OK = Reply.parse("250 2.0.0 OK")
SENDER_OK = Reply.parse("250 2.1.0 Sender OK")
RECIPIENT_OK = Reply.parse("250 2.1.5 Recipient OK")
RESET_OK = Reply.parse("250 2.0.0 Reset state")
NOOP_OK = Reply.parse("250 2.0.0 OK")
QUEUED = Reply.parse("250 2.0.0 OK: queued as {queue_id}")
VRFY_CANNOT = Reply.parse("252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery")
HELP = Reply.parse("214 2.0.0 See RFC 5321; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT STARTTLS")
START_DATA = Reply.parse("354 End data with <CR><LF>.<CR><LF>")
# RFC 3030: a BDAT chunk without LAST.
CHUNK_RECEIVED = Reply.parse("250 2.0.0 {size} octets received")

# --- 4xx: try again later -------------------------------------------------------------------

# RFC 5321 §3.8: 421 and close when the server must shut the session.
TOO_MANY_SESSIONS = Reply.parse("421 4.7.0 {hostname} too many connections, try again later")
TOO_MANY_SESSIONS_FROM_IP = Reply.parse("421 4.7.0 {hostname} too many connections from your address")
TOO_MANY_ERRORS = Reply.parse("421 4.7.0 {hostname} too many errors, closing connection")
TIMEOUT = Reply.parse("421 4.4.2 {hostname} timeout exceeded, closing connection")
SHUTTING_DOWN = Reply.parse("421 4.3.2 {hostname} service shutting down, try again later")
TLS_NOT_AVAILABLE = Reply.parse("454 4.7.0 TLS not available")
LOCAL_ERROR = Reply.parse("451 4.3.0 Local error in processing, try again later")
STORE_FAILED = Reply.parse("451 4.3.0 Message could not be stored, try again later")
TOO_MANY_RECIPIENTS = Reply.parse("452 4.5.3 Too many recipients")
# A recipient whose domain applies a different inbound policy than the recipients
# already accepted: the client retries it in a new transaction (like 4.5.3).
RECIPIENT_NEEDS_OWN_TRANSACTION = Reply.parse("452 4.5.3 Recipient needs a separate transaction, send it again")
# RFC 7372: SPF validation error (temperror) / other temporary authentication failure.
SPF_TEMPERROR = Reply.parse("451 4.7.24 Temporary SPF validation error ({detail}), try again later")
AUTH_TEMPERROR = Reply.parse("451 4.7.0 Temporary DNS failure during authentication checks ({detail}), try again later")

# --- 5xx: refused ---------------------------------------------------------------------------

SYNTAX_ERROR = Reply.parse("500 5.5.2 Syntax error, command unrecognized")
# RFC 5321 §4.5.3.1.4 (512 octets; longer for commands an extension widens).
LINE_TOO_LONG = Reply.parse("500 5.5.2 Line too long")
BARE_LINE_END_IN_COMMAND = Reply.parse("500 5.5.2 Command must end with <CR><LF>; bare <CR> or <LF> refused (RFC 5321 2.3.8)")
NUL_IN_COMMAND = Reply.parse("500 5.5.2 NUL character in command refused")
NON_ASCII_COMMAND = Reply.parse("500 5.5.2 Command contains invalid characters")
UNKNOWN_COMMAND = Reply.parse("500 5.5.1 Command not recognized")
NOT_IMPLEMENTED = Reply.parse("502 5.5.1 Command not implemented")
PARAMETER_SYNTAX = Reply.parse("501 5.5.4 Syntax error in parameters or arguments: {detail}")
HELO_SYNTAX = Reply.parse("501 5.5.4 Syntax: {verb} <hostname>")
BAD_SENDER_SYNTAX = Reply.parse("501 5.1.7 Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = Reply.parse("501 5.1.3 Bad recipient address syntax")
DUPLICATE_PARAMETER = Reply.parse("501 5.5.4 Duplicate {param} parameter")
# RFC 3461 §4 (DSN): RET, ENVID, NOTIFY or ORCPT with a value we cannot read.
DSN_PARAMETER = Reply.parse("501 5.5.4 Bad {param} parameter (RFC 3461): {detail}")
UNKNOWN_PARAMETER = Reply.parse("555 5.5.4 Parameter not recognized or not implemented: {detail}")
BDAT_SYNTAX = Reply.parse("501 5.5.4 Syntax: BDAT <size> [LAST]; closing connection")
DATA_AFTER_BDAT = Reply.parse("503 5.5.1 DATA is not allowed after BDAT in one transaction")
NEED_HELO = Reply.parse("503 5.5.1 Send EHLO or HELO first")
NESTED_MAIL = Reply.parse("503 5.5.1 Sender already given")
NEED_MAIL = Reply.parse("503 5.5.1 Send MAIL first")
NEED_RCPT = Reply.parse("503 5.5.1 Send RCPT first")
NO_VALID_RECIPIENTS = Reply.parse("554 5.5.1 No valid recipients")
ALREADY_TLS = Reply.parse("503 5.5.1 TLS already active")
NEED_TLS_FIRST = Reply.parse("530 5.7.0 Must issue a STARTTLS command first")
MESSAGE_TOO_BIG = Reply.parse("552 5.3.4 Message size exceeds fixed maximum message size of {limit} bytes")
# RFC 5321 2.3.8 / the SMTP smuggling family (CVE-2023-51764 ...): DATA must end only at
# <CR><LF>.<CR><LF> and lines only at <CR><LF>.
BARE_LINE_END_IN_DATA = Reply.parse("550 5.6.0 Message refused: bare <CR> or <LF> in message data; lines must end with <CR><LF>")
BAD_FROM_HEADER = Reply.parse("550 5.6.0 Message refused: {detail}")
# A NUL in the data could end it early at a next hop ("<CRLF><NUL>.<CRLF>"); with
# inbound.bare_line_endings = normalize NULs are removed instead.
NUL_IN_DATA = Reply.parse("550 5.6.0 Message refused: NUL character in message data")
# RFC 5322 §2.1.1 / RFC 5321 §4.5.3.1.6: we would have to forward such a line.
LONG_LINE_IN_DATA = Reply.parse("550 5.6.0 Message refused: a line is longer than 998 characters (RFC 5322 2.1.1)")
EMPTY_MESSAGE = Reply.parse("554 5.6.0 Message refused: no message data was sent")
# RFC 5322 §3.6: From is required; refused in every policy mode (monitor_only too), as
# such a message can be neither evaluated (DMARC) nor signed when forwarded.
NO_FROM_HEADER = Reply.parse("550 5.6.0 Message refused: it has no From header (RFC 5322 3.6)")
NON_ASCII_ADDRESS = Reply.parse("553 5.6.7 A non-ASCII local part needs SMTPUTF8 (RFC 6531); without it only the domain may be non-ASCII")
RELAY_DENIED = Reply.parse("550 5.7.1 Relaying denied: {domain} is not a domain served here")
UNKNOWN_RECIPIENT = Reply.parse("550 5.1.1 Recipient address rejected: no such user {address}")
RBL_LISTED = Reply.parse("554 5.7.1 {ip} found on one or more RBLs ({zones})")
# RFC 7372 5.7.26: neither SPF nor DKIM passed.
NOT_AUTHENTICATED = Reply.parse("550 5.7.26 Message refused: it must pass SPF or carry a valid DKIM signature (SPF {spf}, DKIM {dkim})")
# RFC 7208 §6.2: an SPF fail refusal carries the domain's own explanation (exp=).
SPF_EXPLANATION = Reply.parse("550 5.7.26 {refusal}; the sender's domain explains: {explanation}")
DMARC_REJECT = Reply.parse("550 5.7.1 Message refused: it fails the DMARC policy (p=reject) of {domain}")


# Longest text taken from elsewhere (a next hop's reply, a domain's SPF explanation) that
# one of our replies quotes; ours stay well under the 512-octet reply line (RFC 5321
# §4.5.3.1.5).
QUOTED_TEXT = 200
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})\Z")
# RFC 3463 codes for what RFC 5321 says each basic code means, for a peer's reply that
# came without an enhanced code.
_ENHANCED_FOR_CODE = {
    421: "4.4.2", 450: "4.2.0", 451: "4.3.0", 452: "4.3.1",
    550: "5.2.0", 551: "5.1.6", 552: "5.2.2", 553: "5.1.3", 554: "5.0.0",
}


def enhanced_for(code: int, given: str | None = None) -> str:
    """The enhanced status code of a reply with basic `code`: `given` when it is a
    well-formed code of the same class, else the one RFC 3463 gives the basic code."""
    m = _ENHANCED.match(given or "")
    if m and m.group(1) == str(code)[0]:
        return given or ""
    return _ENHANCED_FOR_CODE.get(code, f"{str(code)[0]}.0.0")


def quoted(text: str, limit: int = QUOTED_TEXT) -> str:
    """Text from elsewhere made safe to put inside one of our replies: printable ASCII
    only (no CR, LF or NUL that could end or split our reply), whitespace collapsed,
    at most `limit` characters, in double quotes."""
    clean = "".join(c if " " <= c <= "~" else " " for c in text)
    clean = " ".join(clean.split()).replace('"', "'")
    if len(clean) > limit:
        clean = clean[:limit - 3] + "..."
    return f'"{clean}"'


def all_replies() -> dict[str, Reply]:
    """Every named reply of this module, for the class-consistency test and docs."""
    return {name: value for name, value in globals().items() if isinstance(value, Reply)}


# --- routing (issue 5: forwarding, SRS bounces) ----------------------------------------------

# RFC 3463 X.4.6: routing loop detected (too many Received fields or ARC sets).
ROUTING_LOOP = Reply.parse("554 5.4.6 Routing loop detected: {detail}")
# The forwarding destination refused the message during our in-session attempt. The
# basic code is the next hop's 5xx, the enhanced code its own when it gave a valid one
# (else `enhanced_for(code)`); its reply follows, through `quoted()` (mta.routing.inbound).
FORWARD_REFUSED = Reply.parse("550 5.0.0 The forwarding destination refused the message; its server said: {remote}")
# Not the next hop's words but ours: it does not offer SMTPUTF8 (queue/intl.py).
FORWARD_NEEDS_SMTPUTF8 = Reply.parse("553 5.6.7 The forwarding destination does not offer SMTPUTF8, which this message needs (internationalised address or header)")
# routing.dmarc_safe_from = reject: forwarding unchanged would fail DMARC downstream.
FORWARD_DMARC_REFUSED = Reply.parse("550 5.7.1 Message refused: it cannot be forwarded without failing the DMARC policy (p={policy}) of {domain}; sign it with DKIM aligned with the From domain")


# --- submission (issue 6: SMTP submission on 465 / 587) -------------------------------------
# Texts follow the reference's transcript ([SMTP > Raw SMTP transcript]). Refusals that are
# sending errors (530, 535, 550 5.7.1, 452 4.5.3, 552 5.3.4 ...) come from mta/errors.py.

SUBMISSION_HELP = Reply.parse("214 2.0.0 See RFC 5321 and RFC 4954; commands: EHLO HELO AUTH MAIL RCPT DATA BDAT RSET NOOP QUIT STARTTLS")
AUTH_OK = Reply.parse("235 2.7.0 Authentication successful")
# RFC 4954 §4: a server challenge is "334 " and base64 text (empty for PLAIN).
AUTH_CHALLENGE = Reply.parse("334 {challenge}")
SUBMISSION_SENDER_OK = Reply.parse("250 2.1.0 Ok")
SUBMISSION_RECIPIENT_OK = Reply.parse("250 2.1.5 Ok")
SUBMISSION_START_DATA = Reply.parse("354 Start mail input; end with <CR><LF>.<CR><LF>")
# The final reply carries the Message-ID we assigned (with its angle brackets).
SUBMISSION_ACCEPTED = Reply.parse("250 2.0.0 Ok {message_id}")
ALREADY_AUTHENTICATED = Reply.parse("503 5.5.1 Already authenticated")
AUTH_DURING_TRANSACTION = Reply.parse("503 5.5.1 AUTH not permitted during a mail transaction")
# RFC 4954 §4: 501 for a cancelled exchange or a response that is not base64,
# 504 for a mechanism we do not offer.
AUTH_CANCELLED = Reply.parse("501 5.0.0 Authentication cancelled")
AUTH_BAD_RESPONSE = Reply.parse("501 5.5.2 Cannot decode the authentication response")
AUTH_MECHANISM_UNKNOWN = Reply.parse("504 5.5.4 Unrecognized authentication mechanism; use PLAIN or LOGIN")
# Too many failed AUTHs from the client's address (mta/smtp/auth_throttle.py); sent
# before any credential is read, so it says nothing about them.
AUTH_THROTTLED = Reply.parse("454 4.7.0 Too many failed authentication attempts, try again later")
SUBMISSION_NULL_SENDER = Reply.parse("501 5.1.7 A submitted message needs a sender address")


# --- handlers (issue 7: email(message, env, ctx)) -------------------------------------------

# message.set_reject(reason): [Workers API > Reject emails] "a permanent SMTP error".
HANDLER_REJECTED = Reply.parse("550 5.7.1 {reason}")
# A handler raised or ran past its time limit (fallback reject_4xx): the message is kept
# and the sender retries.
HANDLER_FAILED = Reply.parse("451 4.3.0 Message could not be processed, try again later")

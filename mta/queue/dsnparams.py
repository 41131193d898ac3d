"""The DSN extension's SMTP parameters (RFC 3461 §4): what a client asks of our DSNs.

Job: the values only — read and check `RET`, `ENVID` (MAIL) and `NOTIFY`, `ORCPT` (RCPT)
as a server, write them again as a client, and xtext (§4) both ways. The listeners
(`mta.smtp`) parse with these functions and name the reply; the queue stores the values
(`messages.dsn_ret`, `messages.dsn_envid`, `deliveries.dsn_notify`,
`deliveries.dsn_orcpt`), `remote.py` passes them on to next hops that offer DSN, and
`delivery.py` / `bounces.py` honour them in the DSNs we send.

Stored forms: RET `FULL` | `HDRS`; ENVID decoded (printable ASCII, ≤ 100 characters as
sent); NOTIFY `NEVER` or a comma list of `SUCCESS`, `FAILURE`, `DELAY` in that order;
ORCPT `addr-type;address` decoded (the form of the DSN's Original-Recipient field),
except for the `utf-8` type, whose address stays in its utf-8-addr-xtext form (RFC 6533
§3: `\\x{HEX}` escapes, no xtext `+XX`), ASCII either way.
No parameter given: None, and our behaviour is what it was without DSN (failure DSNs,
delay notices after `retry.delay_warning`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["ENVID_MAX", "ORCPT_MAX", "Dsn", "DsnParamError", "RcptDsn", "mail_params",
           "merge_notify", "notify_wants", "orcpt_for", "orcpt_param", "parse_envid",
           "parse_notify", "parse_orcpt", "parse_ret", "rcpt_params", "read_mail_params",
           "read_rcpt_params", "success_dsn_due", "without_success", "xtext_decode",
           "xtext_encode"]

ENVID_MAX = 100  # RFC 3461 §4.4
ORCPT_MAX = 500  # RFC 3461 §4.2
_NOTIFY_ORDER = ("SUCCESS", "FAILURE", "DELAY")
_ADDR_TYPE = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]+\Z")  # an atom (RFC 3461 §4.2)
_HEX = re.compile(r"[0-9A-Fa-f]{2}\Z")
# RFC 6533 §3 utf-8-addr-xtext: QCHARs (printable ASCII but "+", "=" and "\\") and
# EmbeddedUnicodeChars `\x{HEX}`.
_UTF8_ADDR_XTEXT = re.compile(r"(?:[!-*,-<>-\[\]-~]|\\x\{[0-9A-Fa-f]{2,6}\})+\Z")


class DsnParamError(ValueError):
    """A DSN parameter the server refuses (501 5.5.4); `param` names it."""

    def __init__(self, param: str, detail: str) -> None:
        super().__init__(f"{param}: {detail}")
        self.param = param
        self.detail = detail


@dataclass(frozen=True)
class RcptDsn:
    """What RCPT asked: NOTIFY and ORCPT in their stored forms (None: not given)."""

    notify: str | None = None
    orcpt: str | None = None


@dataclass
class Dsn:
    """What one mail transaction asked (RFC 3461): RET and ENVID of MAIL, NOTIFY and
    ORCPT per recipient (keyed by the recipient as accepted). Empty: nothing asked."""

    ret: str | None = None
    envid: str | None = None
    recipients: dict[str, RcptDsn] = field(default_factory=dict)

    def rcpt(self, address: str) -> RcptDsn:
        return self.recipients.get(address) or RcptDsn()


def xtext_decode(value: str, param: str) -> str:
    """RFC 3461 §4: `+XX` is the octet XX; other characters are themselves (`!`..`~`
    but `+` and `=`). The result must be printable US-ASCII (§4.2, §4.4)."""
    out: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == "+":
            hexpair = value[i + 1:i + 3]
            if not _HEX.match(hexpair):
                raise DsnParamError(param, "'+' must be followed by two hex digits (xtext)")
            c = chr(int(hexpair, 16))
            i += 3
        else:
            if not "!" <= c <= "~" or c == "=":
                raise DsnParamError(param, "not xtext")
            i += 1
        if not " " <= c <= "~":
            raise DsnParamError(param, "only printable US-ASCII may be encoded")
        out.append(c)
    return "".join(out)


def xtext_encode(text: str) -> str:
    """The xtext form of printable ASCII `text` (`+`, `=`, space and others as `+XX`)."""
    return "".join(c if "!" <= c <= "~" and c not in "+=" else f"+{ord(c):02X}"
                   for c in text)


def parse_ret(value: str | None) -> str:
    ret = (value or "").upper()
    if ret not in ("FULL", "HDRS"):
        raise DsnParamError("RET", "expected FULL or HDRS")
    return ret


def parse_envid(value: str | None) -> str:
    if not value:
        raise DsnParamError("ENVID", "a value is required")
    if len(value) > ENVID_MAX:
        raise DsnParamError("ENVID", f"longer than {ENVID_MAX} characters")
    return xtext_decode(value, "ENVID")


def parse_notify(value: str | None) -> str:
    words = [w.upper() for w in (value or "").split(",")]
    if words == ["NEVER"]:
        return "NEVER"
    if "NEVER" in words:
        raise DsnParamError("NOTIFY", "NEVER cannot be combined with other values")
    unknown = [w for w in words if w not in _NOTIFY_ORDER]
    if unknown or len(set(words)) != len(words):
        raise DsnParamError("NOTIFY", "expected NEVER or a list of SUCCESS, FAILURE, DELAY")
    return ",".join(w for w in _NOTIFY_ORDER if w in words)


def parse_orcpt(value: str | None) -> str:
    if not value:
        raise DsnParamError("ORCPT", "a value is required")
    if len(value) > ORCPT_MAX:
        raise DsnParamError("ORCPT", f"longer than {ORCPT_MAX} characters")
    addr_type, semi, encoded = value.partition(";")
    if not semi or not _ADDR_TYPE.match(addr_type) or not encoded:
        raise DsnParamError("ORCPT", "expected addr-type;xtext, e.g. rfc822;user@example.com")
    if addr_type.lower() == "utf-8":
        if not _UTF8_ADDR_XTEXT.match(encoded):
            raise DsnParamError("ORCPT", "not utf-8-addr-xtext (RFC 6533)")
        return f"utf-8;{encoded}"
    return f"{addr_type.lower()};{xtext_decode(encoded, 'ORCPT')}"


def read_mail_params(params: Mapping[str, str | None]) -> tuple[str | None, str | None]:
    """RET and ENVID among MAIL's parameters, in their stored forms (None: not given);
    DsnParamError when one is invalid."""
    ret = parse_ret(params["RET"]) if "RET" in params else None
    envid = parse_envid(params["ENVID"]) if "ENVID" in params else None
    return ret, envid


def read_rcpt_params(params: Mapping[str, str | None]) -> RcptDsn:
    """NOTIFY and ORCPT among RCPT's parameters; DsnParamError when one is invalid."""
    notify = parse_notify(params["NOTIFY"]) if "NOTIFY" in params else None
    orcpt = parse_orcpt(params["ORCPT"]) if "ORCPT" in params else None
    return RcptDsn(notify, orcpt)


def orcpt_param(orcpt: str) -> str:
    """The ORCPT parameter value of a stored `addr-type;address` (a `utf-8` one is
    stored in its parameter form already)."""
    addr_type, _, address = orcpt.partition(";")
    if addr_type == "utf-8":
        return orcpt
    return f"{addr_type};{xtext_encode(address)}"


def notify_wants(notify: str | None, event: str) -> bool:
    """Whether a DSN of `event` (SUCCESS | FAILURE | DELAY) is wanted. Without NOTIFY
    (RFC 3461 §4.1: the server chooses) failures and delays are reported, successes not."""
    if notify is None:
        return event in ("FAILURE", "DELAY")
    return event in notify.split(",")


def without_success(notify: str | None) -> str | None:
    """NOTIFY with SUCCESS taken out (NEVER when nothing is left): what the new
    recipients of a multiple-recipient alias get (RFC 3461 §5.2.7.3)."""
    if notify is None or "SUCCESS" not in notify.split(","):
        return notify
    return ",".join(w for w in notify.split(",") if w != "SUCCESS") or "NEVER"


def merge_notify(values: list[str | None]) -> str | None:
    """One NOTIFY for a single next-hop recipient that stands for several original ones:
    every event any of them wants (a recipient without NOTIFY wants what the server
    chooses, failures and delays), NEVER only when none wants anything, None when none
    gave NOTIFY. One recipient's NEVER must not silence another's FAILURE."""
    if all(v is None for v in values):
        return None
    wanted = {e for v in values for e in _NOTIFY_ORDER if notify_wants(v, e)}
    return ",".join(e for e in _NOTIFY_ORDER if e in wanted) or "NEVER"


def orcpt_for(address: str) -> str:
    """The stored ORCPT naming `address`: `rfc822;...`, or for a non-ASCII address
    `utf-8;...` with its non-ASCII characters as `\\x{HEX}` (RFC 6533 §3)."""
    if address.isascii():
        return f"rfc822;{address}"
    return "utf-8;" + "".join(c if "!" <= c <= "~" and c not in "+=\\" else f"\\x{{{ord(c):X}}}"
                              for c in address)


def success_dsn_due(outcome: object, notify: str | None) -> bool:
    """Whether a delivered recipient gets a `relayed` DSN from us: it asked
    NOTIFY=SUCCESS and the next hop took the message without taking the request on
    (`RecipientOutcome.dsn_passed` false: it does not offer DSN). When it did, the
    success DSN is the next hop's to send (RFC 3461 §5.2.1, §5.2.2)."""
    return (getattr(outcome, "result", None) == "delivered"
            and not getattr(outcome, "dsn_passed", False) and notify_wants(notify, "SUCCESS"))


# -- as a client: passing the request on (RFC 3461 §5.2.1) ------------------------------


def mail_params(dsn: Dsn) -> list[bytes]:
    """RET and ENVID for our MAIL to a next hop that offers DSN."""
    out = [b"RET=" + dsn.ret.encode()] if dsn.ret else []
    if dsn.envid:
        out.append(b"ENVID=" + xtext_encode(dsn.envid).encode())
    return out


def rcpt_params(dsn: Dsn, rcpt: str) -> list[bytes]:
    """NOTIFY and ORCPT for our RCPT of `rcpt` to a next hop that offers DSN."""
    asked = dsn.rcpt(rcpt)
    out = [b"NOTIFY=" + asked.notify.encode()] if asked.notify else []
    if asked.orcpt:
        out.append(b"ORCPT=" + orcpt_param(asked.orcpt).encode())
    return out

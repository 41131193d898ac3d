"""Custom header rules of [Email headers]: the allowlist, the platform-controlled headers,
the per-header value rules and the limits.

One function, `validate_custom_headers`, serves every way a message enters: the `headers`
object of the JSON send (and the Python binding), and the header section of a message
submitted whole (SMTP submission, `send_raw`), where the reference says "the same
allowlist applies". The two differ only where a whole message must differ: it carries its
own From/To/Subject and MIME structure headers, and trace headers from earlier hops.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from mta.errors import MtaError

__all__ = [
    "ALLOWLIST", "API_FIELD_HEADERS", "HeaderLimits", "MIME_MESSAGE_HEADERS",
    "MIME_REPLACED_HEADERS", "PLATFORM_HEADERS", "is_message_or_replaced",
    "validate_custom_headers",
]


@dataclass(frozen=True)
class HeaderLimits:
    """[Email headers > Header limits]. "16 KB" is taken as 16 KiB (16,384 bytes), the
    binary unit the reference uses for its other size limits (5 MiB, 25 MiB)."""

    max_custom_headers: int = 20  # allowlisted (non-X) headers only
    max_name_bytes: int = 100
    max_value_bytes: int = 2048
    max_total_bytes: int = 16 * 1024


DEFAULT_HEADER_LIMITS = HeaderLimits()

# Lower-case name -> canonical casing used in the generated message.
ALLOWLIST: dict[str, str] = {n.lower(): n for n in (
    "In-Reply-To", "References",
    "List-Unsubscribe", "List-Unsubscribe-Post", "List-Id", "List-Archive", "List-Help",
    "List-Owner", "List-Post", "List-Subscribe", "Precedence",
    "Auto-Submitted",
    "Content-Language", "Keywords", "Comments", "Importance", "Sensitivity", "Organization",
    "Require-Recipient-Valid-Since",
    "Archived-At",
)}

# [Email headers > Platform-controlled headers]; "ARC-*" is matched as a prefix.
PLATFORM_HEADERS: dict[str, str] = {n.lower(): n for n in (
    "Date", "Message-ID", "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
    "DKIM-Signature", "Return-Path", "Received", "Feedback-ID", "TLS-Required",
    "TLS-Report-Domain", "TLS-Report-Submitter", "CFBL-Address", "CFBL-Feedback-ID",
)}
ARC_PREFIX = "arc-"

# Header -> the API field to use instead (REST spelling; Workers spells reply_to replyTo).
API_FIELD_HEADERS: dict[str, tuple[str, str]] = {
    "from": ("From", "from"), "to": ("To", "to"), "cc": ("Cc", "cc"), "bcc": ("Bcc", "bcc"),
    "subject": ("Subject", "subject"), "reply-to": ("Reply-To", "reply_to"),
}

# In a whole message these belong to the message itself, not to its custom headers:
# the address fields and the MIME structure of the top-level part. They are neither
# refused nor counted toward the custom header limits.
MIME_MESSAGE_HEADERS = frozenset({
    "from", "to", "cc", "subject", "reply-to", "mime-version", "content-type",
    "content-transfer-encoding", "content-disposition", "content-id", "content-description",
})
# In a whole message these are tolerated and dropped or replaced by the platform, because
# honest clients and relays put them there: Date and Message-ID are set at acceptance
# (the SMTP 250 reports the new Message-ID), Bcc must never be sent, and trace and
# signature headers from earlier hops (a smarthost relaying through us) would be wrong
# once we re-sign. Platform headers a sender could only mean to set (Feedback-ID, CFBL-*,
# TLS-*) are still refused.
MIME_REPLACED_HEADERS = frozenset({
    "date", "message-id", "bcc", "received", "return-path", "dkim-signature",
})

_X_NAME = re.compile(r"X-[A-Za-z0-9\-_]+", re.IGNORECASE)
_NAME = re.compile(r"[A-Za-z0-9\-]+")
# NEL and the Unicode separators too: the email package reads them as line ends.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_ANGLE_URI = re.compile(r"<([^<>\s]+)>")
_MSG_ID = re.compile(r"<[^<>\s@]+@[^<>\s@]+>")
_HTTPS_URI = re.compile(r"https://[^/?#\s]+\S*", re.IGNORECASE)
_MAILTO_URI = re.compile(r"mailto:[^@\s]+@[^@\s]+", re.IGNORECASE)
ONE_CLICK = "List-Unsubscribe=One-Click"

# Headers whose reference notes give a closed set of values (compared case-insensitively:
# RFC 3834 and RFC 2156 define these as case-insensitive tokens).
_VALUES: dict[str, frozenset[str]] = {
    "precedence": frozenset({"bulk", "list", "junk"}),
    "auto-submitted": frozenset({"auto-generated", "auto-replied", "auto-notified"}),
    "importance": frozenset({"high", "normal", "low"}),
    "sensitivity": frozenset({"personal", "private", "company-confidential"}),
}


def validate_custom_headers(
    headers: Mapping[str, object] | Iterable[tuple[str, object]],
    limits: HeaderLimits = DEFAULT_HEADER_LIMITS,
    *,
    mime: bool = False,
) -> list[tuple[str, str]]:
    """Check custom headers and return them as (canonical name, value) pairs, in order.

    `mime=False`: the `headers` object of a send request. Values are taken as given
    (surrounding whitespace trimmed) and may not contain CR or LF at all: folding is ours.
    `mime=True`: the header section of a submitted message, as (name, raw value) pairs.
    Values are unfolded first, names in MIME_MESSAGE_HEADERS and MIME_REPLACED_HEADERS are
    skipped (the caller keeps or drops them) and repeated names are allowed.

    Raises MtaError with the [Email headers > Error codes] code of the first broken rule.
    """
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    result: list[tuple[str, str]] = []
    seen: set[str] = set()
    non_x = 0
    total = 0
    for name, raw_value in items:
        if not isinstance(name, str):
            raise MtaError("E_HEADER_NAME_INVALID", f"Header name {name!r} is not a string.",
                           field="headers")
        lower = name.lower()
        if mime and is_message_or_replaced(lower):
            continue
        canonical = _check_name(name, limits, api=not mime)
        if not mime and lower in seen:
            # JSON keys are unique, but only case-sensitively; names are not.
            raise MtaError("E_HEADER_NAME_INVALID",
                           f"Header '{name}' is given more than once (names are "
                           "case-insensitive).", field=f"headers.{name}")
        seen.add(lower)
        value = _check_value(canonical, raw_value, limits, mime=mime)
        if not lower.startswith("x-"):
            non_x += 1
        total += len(canonical.encode()) + 2 + len(value.encode()) + 2
        result.append((canonical, value))

    if non_x > limits.max_custom_headers:
        raise MtaError("E_HEADERS_TOO_MANY",
                       f"{non_x} allowlisted headers provided, maximum is "
                       f"{limits.max_custom_headers}.", field="headers")
    if total > limits.max_total_bytes:
        raise MtaError("E_HEADERS_TOO_LARGE",
                       f"Total custom headers payload ({total / 1024:.1f}KB) exceeds "
                       f"{limits.max_total_bytes // 1024}KB limit.", field="headers")
    _check_one_click(result)
    return result


def is_message_or_replaced(name: str) -> bool:
    """Whether a header of a submitted whole message is the message's own or one the
    platform drops or replaces (ARC sets of earlier hops go the way of DKIM-Signature)."""
    lower = name.lower()
    return (lower in MIME_MESSAGE_HEADERS or lower in MIME_REPLACED_HEADERS
            or lower.startswith(ARC_PREFIX))


def _check_name(name: str, limits: HeaderLimits, *, api: bool) -> str:
    field = f"headers.{name}"
    if (not name or not name.isascii() or len(name.encode()) > limits.max_name_bytes
            or any(c in name for c in " \t:") or _CONTROL.search(name)):
        raise MtaError("E_HEADER_NAME_INVALID",
                       f"Header name '{name}' contains invalid characters or exceeds "
                       f"{limits.max_name_bytes} bytes.", field=field)
    lower = name.lower()
    if lower.startswith("x-"):
        if not _X_NAME.fullmatch(name):
            raise MtaError("E_HEADER_NAME_INVALID",
                           f"Header name '{name}' contains invalid characters.", field=field)
        return name  # X- headers have no canonical form: the sender's casing is kept.
    if not _NAME.fullmatch(name):
        raise MtaError("E_HEADER_NAME_INVALID",
                       f"Header name '{name}' contains invalid characters.", field=field)
    if lower in API_FIELD_HEADERS:
        header, api_field = API_FIELD_HEADERS[lower]
        if api:
            raise MtaError("E_HEADER_USE_API_FIELD",
                           f"Header '{header}' must be set via the '{api_field}' API field, "
                           "not the 'headers' object.", field=field)
    if lower in PLATFORM_HEADERS or lower.startswith(ARC_PREFIX):
        shown = PLATFORM_HEADERS.get(lower, name)
        raise MtaError("E_HEADER_NOT_ALLOWED",
                       f"Header '{shown}' is not allowed. It is auto-generated by the "
                       "platform.", field=field)
    if lower not in ALLOWLIST:
        raise MtaError("E_HEADER_NOT_ALLOWED",
                       f"Header '{name}' is not allowed. Only allowlisted and X- headers "
                       "may be set.", field=field)
    return ALLOWLIST[lower]


def _check_value(name: str, raw: object, limits: HeaderLimits, *, mime: bool) -> str:
    field = f"headers.{name}"
    if not isinstance(raw, str):
        raise MtaError("E_HEADER_VALUE_INVALID", f"Header '{name}' value must be a string.",
                       field=field)
    value = _FOLD.sub("", raw) if mime else raw
    if "\r" in value or "\n" in value:
        raise MtaError("E_HEADER_VALUE_INVALID",
                       f"Header '{name}' value contains a bare CR or LF.", field=field)
    if _CONTROL.search(value):
        raise MtaError("E_HEADER_VALUE_INVALID",
                       f"Header '{name}' value contains control characters.", field=field)
    value = value.strip(" \t")
    if not value:
        raise MtaError("E_HEADER_VALUE_INVALID", f"Header '{name}' value is empty.",
                       field=field)
    if len(value.encode("utf-8", "surrogateescape")) > limits.max_value_bytes:
        raise MtaError("E_HEADER_VALUE_TOO_LONG",
                       f"Header '{name}' value exceeds {limits.max_value_bytes} byte limit.",
                       field=field)
    problem = _value_problem(name.lower(), value)
    if problem:
        raise MtaError("E_HEADER_VALUE_INVALID", f"Header '{name}' {problem}.", field=field)
    return value


def _value_problem(lower: str, value: str) -> str | None:
    """The reason `value` is malformed for header `lower`, or None."""
    if lower == "list-unsubscribe":
        uris = _angle_uris(value)
        if uris is None or not all(
                _HTTPS_URI.fullmatch(u) or _MAILTO_URI.fullmatch(u) for u in uris):
            return "must contain angle-bracket HTTPS or mailto URI(s)"
    elif lower == "list-unsubscribe-post":
        if value != ONE_CLICK:  # case-sensitive, per RFC 8058
            return f"must be exactly '{ONE_CLICK}'"
    elif lower in _VALUES:
        token = value.split(";", 1)[0].strip().lower() if lower == "auto-submitted" \
            else value.lower()  # RFC 3834 allows parameters after the keyword
        if token not in _VALUES[lower]:
            return "must be one of " + ", ".join(sorted(_VALUES[lower]))
    elif lower in ("in-reply-to", "references"):
        if not re.fullmatch(rf"\s*{_MSG_ID.pattern}(\s*{_MSG_ID.pattern})*\s*", value):
            return "must contain message IDs in angle brackets"
    elif lower == "archived-at":
        if _angle_uris(value) is None:
            return "must contain a URI in angle brackets"
    elif lower == "require-recipient-valid-since":
        return _rrvs_problem(value)
    return None


def _angle_uris(value: str) -> list[str] | None:
    """URIs of a comma-separated `<uri>, <uri>` list (RFC 2369), or None if not one."""
    uris = []
    for item in value.split(","):
        m = _ANGLE_URI.fullmatch(item.strip())
        if not m:
            return None
        uris.append(m.group(1))
    return uris


def _rrvs_problem(value: str) -> str | None:
    # RFC 7293: addr-spec ";" date-time
    addr, sep, when = value.rpartition(";")
    if not sep or "@" not in addr:
        return "must be '<address>; <date-time>'"
    try:
        parsedate_to_datetime(when.strip())
    except (TypeError, ValueError):
        return "must be '<address>; <date-time>'"
    return None


def _check_one_click(headers: list[tuple[str, str]]) -> None:
    # RFC 8058: one-click needs an HTTPS target to POST to; mailto alone cannot take it.
    names = {n.lower(): v for n, v in headers}
    if "list-unsubscribe-post" not in names:
        return
    uris = _angle_uris(names.get("list-unsubscribe", "")) or []
    if not any(_HTTPS_URI.fullmatch(u) for u in uris):
        raise MtaError("E_HEADER_VALUE_INVALID",
                       "Header 'List-Unsubscribe-Post' requires List-Unsubscribe with an "
                       "HTTPS URI.", field="headers.List-Unsubscribe-Post")

"""The send request and its validation: [Workers API > send()], [Email Sending > Send an
email] (REST body), [Limits], [Specify recipients], [Email attachments].

`parse_send_request` turns the JSON body (or the Python binding's dict) into a
`SendRequest`, checking only shapes and types. `validate_send` applies every rule and
limit and returns a `ValidatedSend` ready for `compose.compose_message`. Both raise
`MtaError` naming the field at fault. Header rules live in `headers.py`.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import idna

from mta.errors import MtaError
from mta.sending.headers import DEFAULT_HEADER_LIMITS, HeaderLimits, validate_custom_headers

__all__ = [
    "Address", "Attachment", "SendLimits", "SendRequest", "ValidatedSend",
    "check_message_size", "normalize_address", "check_address", "has_line_break",
    "no_line_breaks",
    "parse_send_request", "validate_custom_headers", "validate_send",
]

MiB = 1024 * 1024


@dataclass(frozen=True)
class SendLimits:
    """[Limits > Email content limits] and [Workers API > Error codes], by default."""

    max_recipients: int = 50  # to + cc + bcc together
    max_attachments: int = 32
    max_message_size: int = 5 * MiB
    # When every recipient is a verified destination address of the account.
    max_message_size_verified: int = 25 * MiB
    max_subject_chars: int = 998
    headers: HeaderLimits = DEFAULT_HEADER_LIMITS


DEFAULT_LIMITS = SendLimits()


@dataclass(frozen=True)
class Address:
    """`address` is an addr-spec with its domain in ASCII (IDNA A-labels)."""

    address: str
    name: str | None = None


@dataclass(frozen=True)
class Attachment:
    content: bytes
    filename: str
    type: str
    disposition: Literal["attachment", "inline"] = "attachment"
    content_id: str | None = None  # without angle brackets


@dataclass(frozen=True)
class SendRequest:
    """A send as the caller gave it. Addresses are not yet checked; `None` means absent,
    so the Python binding can build one directly and still get E_FIELD_MISSING."""

    sender: Address | None = None
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    reply_to: Address | None = None
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    attachments: tuple[Attachment, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ValidatedSend:
    sender: Address
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    bcc: tuple[Address, ...]
    reply_to: Address | None
    subject: str
    text: str | None
    html: str | None
    attachments: tuple[Attachment, ...]
    headers: tuple[tuple[str, str], ...]  # canonical names, in the caller's order
    size_limit: int  # bytes allowed for the composed message (5 MiB or 25 MiB)

    @property
    def recipients(self) -> tuple[str, ...]:
        """Envelope recipients: to, cc, bcc, each address once (compared without case)."""
        seen: dict[str, str] = {}
        for a in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(a.address.lower(), a.address)
        return tuple(seen.values())


# --- parsing ------------------------------------------------------------------------

_KEYS = {"from": "from", "to": "to", "cc": "cc", "bcc": "bcc", "reply_to": "reply_to",
         "replyTo": "reply_to", "subject": "subject", "text": "text", "html": "html",
         "attachments": "attachments", "headers": "headers"}
_NAMED = re.compile(r"\s*(.*?)\s*<([^<>]*)>\s*")


def parse_send_request(data: object) -> SendRequest:
    """Parse the JSON send body. Addresses may be strings (`a@b` or `Name <a@b>`) or
    objects `{address, name}` (REST) / `{email, name}` (Workers); `replyTo` and
    `contentId` are accepted as the Workers spellings. `null` means absent, as the SDK
    sends an explicit None. Unknown keys are refused so that a misspelt field
    ("attachements") is not silently dropped."""
    if not isinstance(data, Mapping):
        raise MtaError("E_VALIDATION_ERROR", "The request body must be a JSON object.")
    fields: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _KEYS:
            raise MtaError("E_VALIDATION_ERROR", f"Unknown field '{key}'.", field=str(key))
        if value is not None:
            fields[_KEYS[key]] = value
    headers = fields.get("headers", {})
    if not isinstance(headers, Mapping):
        raise MtaError("E_VALIDATION_ERROR", "'headers' must be an object of strings.",
                       field="headers")
    return SendRequest(
        sender=_one_address(fields["from"], "from") if "from" in fields else None,
        to=_address_list(fields.get("to"), "to"),
        cc=_address_list(fields.get("cc"), "cc"),
        bcc=_address_list(fields.get("bcc"), "bcc"),
        reply_to=(_one_address(fields["reply_to"], "reply_to")
                  if "reply_to" in fields else None),
        subject=_optional_str(fields, "subject", header=True),
        text=_optional_str(fields, "text"),
        html=_optional_str(fields, "html"),
        attachments=_attachments(fields.get("attachments")),
        headers=dict(headers),
    )


# CR, LF, NUL, and what Python's str.splitlines() also reads as a line end (VT, FF,
# FS, GS, RS, NEL, LINE and PARAGRAPH SEPARATOR): the email package refuses those in a
# header value, so letting them through would turn a bad request into a 500.
_LINE_BREAK = re.compile("[\r\n\x00\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")


def has_line_break(value: str) -> bool:
    return _LINE_BREAK.search(value) is not None


def no_line_breaks(value: str, where: str) -> str:
    """`value`, refused when it holds CR, LF, NUL or another line break: a field that
    ends up in a header could otherwise add header fields of its own (or end the data
    at a next hop). Refused rather than stripped, even at the ends, so what is sent is
    what was asked."""
    if has_line_break(value):
        raise MtaError("E_VALIDATION_ERROR",
                       f"'{where}' contains a line break or a NUL character.", field=where)
    return value


def _optional_str(fields: Mapping[str, Any], key: str, *, header: bool = False) -> str | None:
    value = fields.get(key)
    if value is not None and not isinstance(value, str):
        raise MtaError("E_VALIDATION_ERROR", f"'{key}' must be a string.", field=key)
    if value is not None and header:
        no_line_breaks(value, key)
    return value


def _one_address(value: object, where: str) -> Address:
    if isinstance(value, str):
        no_line_breaks(value, where)
        m = _NAMED.fullmatch(value)
        if m:
            return Address(m.group(2).strip(), _unquote(m.group(1)) or None)
        return Address(value.strip())
    if isinstance(value, Mapping):
        extra = set(value) - {"address", "email", "name"}
        addr = value.get("address", value.get("email"))
        name = value.get("name")
        if extra or not isinstance(addr, str) or not isinstance(name, str | None):
            raise MtaError("E_VALIDATION_ERROR",
                           f"'{where}' must be an address string or {{address, name}}.",
                           field=where)
        no_line_breaks(addr, f"{where}.address")
        no_line_breaks(name or "", f"{where}.name")
        return Address(addr.strip(), name or None)
    raise MtaError("E_VALIDATION_ERROR",
                   f"'{where}' must be an address string or {{address, name}}.", field=where)


def _unquote(name: str) -> str:
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return re.sub(r"\\(.)", r"\1", name[1:-1])
    return name


def _address_list(value: object, where: str) -> tuple[Address, ...]:
    if value is None:
        return ()
    if isinstance(value, list):
        return tuple(_one_address(v, f"{where}[{i}]") for i, v in enumerate(value))
    return (_one_address(value, where),)


def _attachments(value: object) -> tuple[Attachment, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise MtaError("E_VALIDATION_ERROR", "'attachments' must be an array.",
                       field="attachments")
    return tuple(_attachment(v, f"attachments[{i}]") for i, v in enumerate(value))


def _attachment(value: object, where: str) -> Attachment:
    if not isinstance(value, Mapping):
        raise MtaError("E_VALIDATION_ERROR", f"'{where}' must be an object.", field=where)
    item = {("content_id" if k == "contentId" else k): v for k, v in value.items()
            if v is not None}
    for key in item:
        if key not in ("content", "filename", "type", "disposition", "content_id"):
            raise MtaError("E_VALIDATION_ERROR", f"Unknown field '{key}'.",
                           field=f"{where}.{key}")
    for key in ("content", "filename", "type"):
        if key not in item:
            raise MtaError("E_FIELD_MISSING", f"'{where}.{key}' is required.",
                           field=f"{where}.{key}")
        if not isinstance(item[key], str):
            raise MtaError("E_VALIDATION_ERROR", f"'{where}.{key}' must be a string.",
                           field=f"{where}.{key}")
    disposition = item.get("disposition", "attachment")
    if disposition not in ("attachment", "inline"):
        raise MtaError("E_VALIDATION_ERROR",
                       f"'{where}.disposition' must be 'attachment' or 'inline'.",
                       field=f"{where}.disposition")
    content_id = item.get("content_id")
    if content_id is not None and not isinstance(content_id, str):
        raise MtaError("E_VALIDATION_ERROR", f"'{where}.content_id' must be a string.",
                       field=f"{where}.content_id")
    for key in ("filename", "type", "content_id"):  # all three reach MIME part headers
        no_line_breaks(item.get(key) or "", f"{where}.{key}")
    try:
        content = base64.b64decode(re.sub(r"\s+", "", item["content"]), validate=True)
    except (binascii.Error, ValueError):
        raise MtaError("E_VALIDATION_ERROR", f"'{where}.content' is not valid base64.",
                       field=f"{where}.content") from None
    return Attachment(content, item["filename"], item["type"], disposition, content_id)


# --- addresses ----------------------------------------------------------------------

# RFC 5322 dot-atom and quoted-string local parts, with RFC 6532 §3.2: atext and qtext
# also take non-ASCII characters (an internationalised local part, sent with SMTPUTF8).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u0080-\U0010ffff-]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(\.{_ATEXT}+)*")
_QUOTED = re.compile(r'"([\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"')
_LDH_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
LOCAL_PART_OCTETS = 64  # RFC 5321 §4.5.3.1.1, counted in UTF-8 octets for SMTPUTF8


def _printable_unicode(local: str) -> bool:
    """No control, format, private-use, unassigned, surrogate or space character among
    the non-ASCII ones: they would be invisible in a header or refused by next hops."""
    return all(c.isascii() or unicodedata.category(c)[0] not in "CZ" for c in local)


def normalize_address(address: str, where: str = "address") -> str:
    """Check an RFC 5322 addr-spec and return it with the domain as IDNA A-labels in
    lower case (a U-label domain needs no SMTPUTF8 once converted). The local part is
    kept as given; a non-ASCII one (RFC 6532) makes the message need SMTPUTF8.
    Raises E_VALIDATION_ERROR. Address literals (`user@[192.0.2.1]`) are
    refused: mail is routed by MX, and a literal is almost always a mistake or abuse."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise MtaError("E_VALIDATION_ERROR", f"Invalid email address '{address}'.",
                       field=where)
    if (not (_DOT_ATOM.fullmatch(local) or _QUOTED.fullmatch(local))
            or len(local.encode("utf-8", "surrogatepass")) > LOCAL_PART_OCTETS
            or not local.isascii() and not _printable_unicode(local)):
        raise MtaError("E_VALIDATION_ERROR",
                       f"Invalid local part in email address '{address}'.", field=where)
    ascii_domain = _ascii_domain(domain)
    if ascii_domain is None:
        raise MtaError("E_VALIDATION_ERROR",
                       f"Invalid domain in email address '{address}'.", field=where)
    result = f"{local}@{ascii_domain}"
    if len(result.encode("utf-8", "surrogatepass")) > 254:  # RFC 5321 path limit (256) minus <>
        raise MtaError("E_VALIDATION_ERROR", f"Email address '{address}' is too long.",
                       field=where)
    return result


def _ascii_domain(domain: str) -> str | None:
    domain = domain.rstrip(".") if domain.endswith(".") and len(domain) > 1 else domain
    try:
        # UTS 46 mapping accepts what users type (upper case, full-width dots); IDNA 2008
        # then refuses what must not be registered.
        ascii_domain = idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return None
    labels = ascii_domain.split(".")
    if len(ascii_domain) > 253 or len(labels) < 2:
        return None  # a dotless domain cannot be reached by MX lookup from the Internet
    if not all(_LDH_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        return None
    return ascii_domain


def check_address(value: Address, where: str) -> Address:
    """`value` with a checked address and a display name free of line breaks."""
    if value.name is not None and has_line_break(value.name):
        raise MtaError("E_VALIDATION_ERROR", f"The name in '{where}' contains a line break.",
                       field=where)
    return Address(normalize_address(value.address, where), value.name or None)


# --- validation ---------------------------------------------------------------------

_MIME_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;.*)?")
_CONTENT_ID = re.compile(r"[\x21-\x3b\x3d\x3f-\x7e]+")  # visible ASCII except < >


def validate_send(
    request: SendRequest,
    limits: SendLimits = DEFAULT_LIMITS,
    *,
    verified_destinations: Container[str] = (),
) -> ValidatedSend:
    """Apply every rule of [Limits] and [Email headers] to `request`.

    `verified_destinations` holds the account's verified destination addresses in lower
    case; when every recipient is one of them the 25 MiB size limit applies.
    """
    if request.sender is None:
        raise MtaError("E_FIELD_MISSING", "'from' is required.", field="from")
    if request.subject is None:
        raise MtaError("E_FIELD_MISSING", "'subject' is required.", field="subject")
    if not (request.text or request.html):
        raise MtaError("E_FIELD_MISSING", "At least one of 'text' or 'html' is required.",
                       field="text")
    count = len(request.to) + len(request.cc) + len(request.bcc)
    if count == 0:
        raise MtaError("E_FIELD_MISSING", "At least one recipient (to, cc or bcc) is "
                       "required.", field="to")
    if count > limits.max_recipients:
        raise MtaError("E_TOO_MANY_RECIPIENTS",
                       f"{count} recipients in to/cc/bcc, maximum is {limits.max_recipients}.",
                       field="to")
    if len(request.attachments) > limits.max_attachments:
        raise MtaError("E_TOO_MANY_ATTACHMENTS",
                       f"{len(request.attachments)} attachments, maximum is "
                       f"{limits.max_attachments}.", field="attachments")

    sender = check_address(request.sender, "from")
    lists = {name: tuple(check_address(a, f"{name}[{i}]") for i, a in enumerate(addrs))
             for name, addrs in (("to", request.to), ("cc", request.cc),
                                 ("bcc", request.bcc))}
    reply_to = check_address(request.reply_to, "reply_to") if request.reply_to else None

    subject = request.subject
    if len(subject) > limits.max_subject_chars:
        raise MtaError("E_VALIDATION_ERROR",
                       f"Subject has {len(subject)} characters, maximum is "
                       f"{limits.max_subject_chars}.", field="subject")
    if has_line_break(subject):
        raise MtaError("E_VALIDATION_ERROR", "Subject contains a line break.",
                       field="subject")

    attachments = _check_attachments(request.attachments)
    headers = validate_custom_headers(request.headers, limits.headers)

    all_recipients = [a.address.lower() for v in lists.values() for a in v]
    verified_only = all(r in verified_destinations for r in all_recipients)
    size_limit = limits.max_message_size_verified if verified_only else limits.max_message_size
    # The decoded size is a lower bound of the composed size: refuse early what can
    # never fit, before spending time on MIME. The composed message is checked again
    # with check_message_size(), the same check SMTP and send_raw apply.
    payload = sum(len(a.content) for a in request.attachments)
    payload += len((request.text or "").encode()) + len((request.html or "").encode())
    check_message_size(payload, size_limit)

    return ValidatedSend(sender=sender, to=lists["to"], cc=lists["cc"], bcc=lists["bcc"],
                         reply_to=reply_to, subject=subject, text=request.text or None,
                         html=request.html or None, attachments=attachments,
                         headers=tuple(headers), size_limit=size_limit)


def check_message_size(size: int, size_limit: int) -> None:
    """Raise E_CONTENT_TOO_LARGE when a message of `size` bytes exceeds `size_limit`."""
    if size > size_limit:
        raise MtaError("E_CONTENT_TOO_LARGE",
                       f"Message size {size} bytes exceeds the {size_limit // MiB} MiB limit.")


def _check_attachments(attachments: tuple[Attachment, ...]) -> tuple[Attachment, ...]:
    """The attachments, checked, with Content-IDs stripped of angle brackets."""
    content_ids: set[str] = set()
    result = []
    for i, a in enumerate(attachments):
        where = f"attachments[{i}]"
        if not a.filename.strip() or has_line_break(a.filename):
            raise MtaError("E_VALIDATION_ERROR", f"'{where}.filename' is empty or contains "
                           "a line break.", field=f"{where}.filename")
        if not _MIME_TYPE.fullmatch(a.type) or has_line_break(a.type):
            raise MtaError("E_VALIDATION_ERROR", f"'{where}.type' is not a MIME type.",
                           field=f"{where}.type")
        if a.type.split("/", 1)[0].strip().lower() == "multipart":
            raise MtaError("E_VALIDATION_ERROR", f"'{where}.type' may not be multipart.",
                           field=f"{where}.type")
        cid = (a.content_id or "").strip().removeprefix("<").removesuffix(">")
        if a.disposition == "inline" or cid:
            if not cid:
                raise MtaError("E_FIELD_MISSING", f"'{where}.content_id' is required for "
                               "inline attachments.", field=f"{where}.content_id")
            if not _CONTENT_ID.fullmatch(cid):
                raise MtaError("E_VALIDATION_ERROR", f"'{where}.content_id' is not a valid "
                               "Content-ID.", field=f"{where}.content_id")
            if cid.lower() in content_ids:
                raise MtaError("E_VALIDATION_ERROR", f"'{where}.content_id' '{cid}' is "
                               "used twice.", field=f"{where}.content_id")
            content_ids.add(cid.lower())
        result.append(Attachment(a.content, a.filename, a.type, a.disposition, cid or None))
    return tuple(result)

"""Every error code of the product, and the one table that maps each to its replies.

An `MtaError` carries a stable string code (`E_SENDER_NOT_VERIFIED` ...), a human message
and optionally the request field at fault. Boundaries translate it, and only through
`ERRORS`: the HTTP API with `rest_error_body()` and `MtaError.http_status`, the SMTP
listeners with `ErrorSpec.smtp`, the Python binding by raising the error itself (the
reference's Workers `send()` throws errors with the same string codes).

Sources, as headings of spec/email-service-docs.cleaned.md:
- string codes and their meaning: [Workers API > Error codes] and [Email headers > Error codes];
- REST (http status, numeric code, message): [REST API > Error handling];
- SMTP replies: [SMTP > Response codes].
The reference does not say which numeric REST code each string code becomes, nor give an
SMTP reply for most string codes; those choices are marked "ours" below with the reason.
Codes that exist only on one side of the reference (REST-only rows such as 10103, or the
SMTP-only 530) get a string code of ours so that every row has exactly one home here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mta.replies import Reply

__all__ = ["ERRORS", "ErrorSpec", "MtaError", "RestError", "rest_error_body"]


@dataclass(frozen=True)
class RestError:
    """One row of the reference's REST error table."""

    http_status: int
    code: int
    message: str


# The REST rows, named once, exactly as [REST API > Error handling] lists them.
INVALID_REQUEST = RestError(400, 10001, "email.sending.error.invalid_request_schema")
TOO_BIG = RestError(400, 10200, "email.sending.error.email.too_big")
NO_CONTENT_LENGTH = RestError(400, 10201, "email.sending.error.email.no_content_length")
EMAIL_INVALID = RestError(400, 10202, "email.sending.error.email.invalid")
UNAUTHORIZED = RestError(401, 10101, "email.sending.error.authentication.unauthorized")
BAD_TOKEN_TYPE = RestError(401, 10103, "email.sending.error.authentication.bad_token_type")
FORBIDDEN = RestError(403, 10102, "email.sending.error.authentication.forbidden")
NOT_ENTITLED = RestError(403, 10105, "email.sending.error.authentication.not_entitled")
SENDING_DISABLED = RestError(403, 10203, "email.sending.error.email.sending_disabled")
NOT_FOUND = RestError(404, 10000, "email.sending.error.not_found")
THROTTLED = RestError(429, 10004, "email.sending.error.throttled")
INTERNAL = RestError(500, 10002, "email.sending.error.internal_server")
NOT_IMPLEMENTED = RestError(500, 10003, "email.sending.error.not_implemented")
AUTH_UPSTREAM = RestError(503, 10100, "email.sending.error.authentication.upstream")

# SMTP replies used by several codes. The first four are documented by [SMTP > Response
# codes]; the rest are ours, chosen from RFC 3463 (comments at each use say why).
SENDER_DENIED = Reply.parse("550 5.7.1 Sender denied")
TOO_MANY_RCPTS = Reply.parse("452 4.5.3 Too many recipients")
TOO_BIG_SMTP = Reply.parse("552 5.3.4 Message too big")
LOCAL_ERROR = Reply.parse("451 4.3.0 Local error, try again later")
# 5.6.0 "other or undefined media error": the content itself is malformed, so resending
# the same message can never succeed (permanent), and it is not a policy refusal.
CONTENT_INVALID = Reply.parse("554 5.6.0 Message content invalid")
# 5.7.1 "delivery not authorized, message refused": the content is well formed but our
# policy refuses it; 554 is the reference's "content rejected by policy".
POLICY_REFUSED = Reply.parse("554 5.7.1 Message refused by policy")
AUTH_FAILED = Reply.parse("535 5.7.8 Authentication failed")
# Replies of one code each (the comment at its row in ERRORS says why).
RECIPIENT_REFUSED = Reply.parse("550 5.7.1 Recipient not allowed")
RECIPIENT_SUPPRESSED = Reply.parse("550 5.7.1 Recipient is on the suppression list")
DELIVERY_FAILED = Reply.parse("554 5.0.0 Delivery failed")
RATE_LIMITED = Reply.parse("451 4.7.1 Rate limit exceeded, try again later")
DAILY_LIMITED = Reply.parse("451 4.7.1 Daily sending limit exceeded")
NO_LENGTH = Reply.parse("501 5.5.4 Missing message length")
AUTH_REQUIRED = Reply.parse("530 5.7.0 Authentication required")
NOT_FOUND_SMTP = Reply.parse("554 5.0.0 Not found")
NOT_IMPLEMENTED_SMTP = Reply.parse("502 5.5.1 Command not implemented")
AUTH_TEMPFAIL = Reply.parse("454 4.7.0 Temporary authentication failure")
DESTINATION_NOT_VERIFIED = Reply.parse("550 5.7.1 Destination address not verified")


@dataclass(frozen=True)
class ErrorSpec:
    """What one string code means and how each boundary reports it."""

    code: str
    description: str
    rest: RestError
    smtp: Reply

    @property
    def temporary(self) -> bool:
        """Whether the same request may succeed later (the SMTP class says so)."""
        return 400 <= self.smtp.code < 500


def _table(*specs: ErrorSpec) -> dict[str, ErrorSpec]:
    table = {s.code: s for s in specs}
    if len(table) != len(specs):
        raise ValueError("duplicate error code in ERRORS")
    return table


ERRORS: dict[str, ErrorSpec] = _table(
    # --- [Workers API > Error codes] -------------------------------------------------
    # Request-shape problems are all 10001 ("invalid request format"): the REST table has
    # no finer row for them. In SMTP they surface at end of DATA, about the content.
    ErrorSpec("E_VALIDATION_ERROR", "Validation error in the payload", INVALID_REQUEST, CONTENT_INVALID),
    ErrorSpec("E_FIELD_MISSING", "Required field is missing", INVALID_REQUEST, CONTENT_INVALID),
    # 452 4.5.3 is documented for the 51st RCPT of a session.
    ErrorSpec("E_TOO_MANY_RECIPIENTS", "Too many recipients in to/cc/bcc arrays", INVALID_REQUEST, TOO_MANY_RCPTS),
    # Ours: a count limit on parts, not a size, so a content error rather than 5.3.4.
    ErrorSpec("E_TOO_MANY_ATTACHMENTS", "Too many attachments in attachments array", INVALID_REQUEST, CONTENT_INVALID),
    # Ours (REST): 10203 "sending disabled for this zone or account" is the row clients
    # of the reference meet when the sender's domain cannot send. SMTP: documented 550.
    ErrorSpec("E_SENDER_NOT_VERIFIED", "Sender domain not verified", SENDING_DISABLED, SENDER_DENIED),
    # Ours: the caller's binding or account may not send there, a permission problem
    # (403 10102); in SMTP a relay refusal at RCPT time.
    ErrorSpec("E_RECIPIENT_NOT_ALLOWED", "Recipient not in allowed list", FORBIDDEN, RECIPIENT_REFUSED),
    # Ours: the REST reference reports suppression per recipient in the result; when the
    # whole request is refused for it, 400 keeps SDKs from retrying (they retry 5xx/429).
    ErrorSpec("E_RECIPIENT_SUPPRESSED", "Recipient is on suppression list", INVALID_REQUEST, RECIPIENT_SUPPRESSED),
    ErrorSpec("E_SENDER_DOMAIN_NOT_AVAILABLE", "Domain not available for sending", SENDING_DISABLED, SENDER_DENIED),
    ErrorSpec("E_CONTENT_TOO_LARGE", "Email content exceeds size limit", TOO_BIG, TOO_BIG_SMTP),
    # Ours: a permanent refusal by the recipient's server; 4xx so SDKs do not resend,
    # 10202 because it is this content the remote refused. SMTP 5.0.0: undefined status.
    ErrorSpec("E_DELIVERY_FAILED", "Could not deliver the email", EMAIL_INVALID, DELIVERY_FAILED),
    # Ours (SMTP): 451 4.7.1 is the customary temporary policy refusal for rate limits.
    ErrorSpec("E_RATE_LIMIT_EXCEEDED", "Rate limit exceeded", THROTTLED, RATE_LIMITED),
    ErrorSpec("E_DAILY_LIMIT_EXCEEDED", "Daily limit exceeded", THROTTLED, DAILY_LIMITED),
    ErrorSpec("E_INTERNAL_SERVER_ERROR", "Internal service error", INTERNAL, LOCAL_ERROR),
    # --- [Email headers > Error codes] (also listed under Workers API) ----------------
    ErrorSpec("E_HEADER_NOT_ALLOWED", "Header not allowed", INVALID_REQUEST, POLICY_REFUSED),
    ErrorSpec("E_HEADER_USE_API_FIELD", "Must use API field", INVALID_REQUEST, POLICY_REFUSED),
    ErrorSpec("E_HEADER_VALUE_INVALID", "Header value invalid", INVALID_REQUEST, CONTENT_INVALID),
    ErrorSpec("E_HEADER_VALUE_TOO_LONG", "Header value too long", INVALID_REQUEST, CONTENT_INVALID),
    ErrorSpec("E_HEADER_NAME_INVALID", "Header name invalid", INVALID_REQUEST, CONTENT_INVALID),
    # Ours: a size limit on the header section, hence 552 5.3.4 like the message size.
    ErrorSpec("E_HEADERS_TOO_LARGE", "Headers payload too large", INVALID_REQUEST, TOO_BIG_SMTP),
    ErrorSpec("E_HEADERS_TOO_MANY", "Too many headers", INVALID_REQUEST, CONTENT_INVALID),
    # --- ours: REST rows and SMTP replies with no string code in the reference --------
    ErrorSpec("E_NO_CONTENT_LENGTH", "Missing content length", NO_CONTENT_LENGTH, NO_LENGTH),
    # A send_raw body or an SMTP DATA that does not parse as a message.
    ErrorSpec("E_EMAIL_INVALID", "Invalid email content", EMAIL_INVALID, CONTENT_INVALID),
    # No credentials at all: SMTP before AUTH is the documented 530 5.7.0.
    ErrorSpec("E_AUTH_REQUIRED", "Authentication required", UNAUTHORIZED, AUTH_REQUIRED),
    ErrorSpec("E_UNAUTHORIZED", "Missing or invalid API token", UNAUTHORIZED, AUTH_FAILED),
    ErrorSpec("E_BAD_TOKEN_TYPE", "Wrong token type for this endpoint", BAD_TOKEN_TYPE, AUTH_FAILED),
    # [SMTP > Troubleshooting] lists a token without the send permission under 535 5.7.8.
    ErrorSpec("E_FORBIDDEN", "Token lacks permission to send", FORBIDDEN, AUTH_FAILED),
    ErrorSpec("E_NOT_ENTITLED", "Account not entitled to use Email Sending", NOT_ENTITLED, SENDER_DENIED),
    ErrorSpec("E_SENDING_DISABLED", "Sending disabled for this zone or account", SENDING_DISABLED, SENDER_DENIED),
    # A REST resource (rule, address, suppression ...) that does not exist; SMTP has no
    # such thing, so the generic permanent failure.
    ErrorSpec("E_NOT_FOUND", "Resource not found", NOT_FOUND, NOT_FOUND_SMTP),
    # 502 5.5.1 is RFC 5321's "command not implemented".
    ErrorSpec("E_NOT_IMPLEMENTED", "Operation not implemented", NOT_IMPLEMENTED, NOT_IMPLEMENTED_SMTP),
    # Ours: the database is unreachable (down, restarting). REST: the reference's only 503
    # row; every API call authenticates against the database first, so "authentication
    # service temporarily unavailable" is what its clients would meet, and SDKs retry a
    # 503 (the response carries Retry-After). SMTP: the usual 451 4.3.0, try again.
    ErrorSpec("E_TEMPORARILY_UNAVAILABLE", "Service temporarily unavailable, retry later", AUTH_UPSTREAM, LOCAL_ERROR),
    # RFC 4954's temporary authentication failure.
    ErrorSpec("E_AUTH_UPSTREAM", "Authentication service temporarily unavailable", AUTH_UPSTREAM, AUTH_TEMPFAIL),
    # --- handlers (issue 7): [Workers API > Reply to emails], one code per rule -------
    # The reference says only that reply() "throws an exception" when a rule is broken;
    # the codes are ours, one per rule as it lists them. REST (the dev endpoint) 400; in
    # SMTP they never reach the client directly (an uncaught one is a handler error ->
    # the fallback), so the generic policy refusal.
    ErrorSpec("E_REPLY_DMARC_NOT_PASSED", "The incoming email has no valid DMARC result", INVALID_REQUEST, POLICY_REFUSED),
    ErrorSpec("E_REPLY_ALREADY_SENT", "An email can only be replied to once per event", INVALID_REQUEST, POLICY_REFUSED),
    ErrorSpec("E_REPLY_RECIPIENT_MISMATCH", "The reply recipient must be the sender of the incoming email", INVALID_REQUEST, POLICY_REFUSED),
    ErrorSpec("E_REPLY_SENDER_DOMAIN_MISMATCH", "The reply sender domain must be the domain that received the email", INVALID_REQUEST, POLICY_REFUSED),
    ErrorSpec("E_REPLY_TOO_MANY_REFERENCES", "The incoming email has more than 100 References entries", INVALID_REQUEST, POLICY_REFUSED),
    # --- pattern rules (issue 14, ours): refused at creation, so REST only; 10001 like
    # every other request-shape problem, and the string code says which limit.
    ErrorSpec("E_PATTERN_INVALID", "Pattern is not a valid wildcard or RE2 regular expression", INVALID_REQUEST, CONTENT_INVALID),
    ErrorSpec("E_PATTERN_TOO_LONG", "Pattern is longer than the limit", INVALID_REQUEST, CONTENT_INVALID),
    ErrorSpec("E_PATTERN_TOO_COMPLEX", "Pattern compiles to a program larger than the limit", INVALID_REQUEST, CONTENT_INVALID),
    # forward() goes to verified destination addresses only ([Workers API > Forward]).
    ErrorSpec("E_FORWARD_DESTINATION_NOT_VERIFIED", "Forward destination is not a verified destination address", FORBIDDEN, DESTINATION_NOT_VERIFIED),
)


class MtaError(Exception):
    """An error with a stable code from `ERRORS`; `field` names the request part at fault
    (`to[2]`, `headers.Date`, `attachments[0].content`). `message` reaches the client, so
    it never carries internal details (exception text, SQL, hostnames)."""

    def __init__(self, code: str, message: str | None = None, *,
                 field: str | None = None) -> None:
        if code not in ERRORS:
            # A typo in a code would otherwise reach a client as a 500 much later.
            raise ValueError(f"unknown error code {code!r}")
        self.code = code
        self.message = message or ERRORS[code].description
        self.field = field
        super().__init__(f"{code}: {self.message}")

    @property
    def spec(self) -> ErrorSpec:
        return ERRORS[self.code]

    @property
    def http_status(self) -> int:
        return self.spec.rest.http_status

    @property
    def smtp_reply(self) -> Reply:
        return self.spec.smtp

    def __repr__(self) -> str:
        return f"MtaError({self.code!r}, {self.message!r}, field={self.field!r})"


def rest_error_body(err: MtaError, area: str = "sending") -> dict[str, Any]:
    """The reference's error envelope for `err`.

    The reference documents the message strings of its sending API
    (`email.sending.error.*`); in another area of the API (`area` "routing": the Email
    Routing endpoints) the same row reads `email.routing.error.*`, so a routing error is
    not reported as a sending one. The numeric code is the same in every area.

    `code` and `message` are exactly the REST table's, because that is what clients of
    the reference match on. The string code, our human message and the field are extra
    keys of the same error object (the official SDK keeps unknown keys), so a caller who
    gets 10001 can still see which rule failed; `source.pointer` is the SDK's own slot for
    the field, as a JSON pointer.
    """
    message = err.spec.rest.message
    if area != "sending" and message.startswith("email.sending."):
        message = f"email.{area}." + message.removeprefix("email.sending.")
    entry: dict[str, Any] = {
        "code": err.spec.rest.code,
        "message": message,
        "error_code": err.code,
        "detail": err.message,
    }
    if err.field:
        entry["source"] = {"pointer": _json_pointer(err.field)}
    return {"success": False, "errors": [entry], "messages": [], "result": None}


def _json_pointer(field: str) -> str:
    # "attachments[0].content" -> "/attachments/0/content"; "headers.X-A" keeps the name.
    parts: list[str] = []
    for piece in field.replace("[", ".").replace("]", "").split("."):
        if piece:
            parts.append(piece.replace("~", "~0").replace("/", "~1"))
    return "/" + "/".join(parts)

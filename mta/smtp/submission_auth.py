"""What the submission listener asks of the database: who the client is (AUTH) and
whether it may send from an address (MAIL FROM). Protocol lives in
`submission_session.py`; this module raises `MtaError`s whose SMTP replies come from
`mta/errors.py`.

Credentials ([SMTP > Authentication]): SASL PLAIN (RFC 4616) or LOGIN, username the
literal `api_token`, password an API token of ours (mta/tokens.py) holding the
`email_sending:send` permission. Every way of failing — wrong username, a string that
is not one of our tokens, an unknown, revoked or expired token, a token without the
permission — is the same `535 5.7.8` ([SMTP > Troubleshooting] lists them all under
it), so the reply does not tell a prober which part was wrong; the log says. A
database that cannot answer is `454 4.7.0` (RFC 4954: temporary failure).

Sender ([SMTP > Response codes] `550 5.7.1`): the MAIL FROM domain must be a sending
domain of the token's account, or one of its enabled routing domains (which may send
only to the account's verified destination addresses; the sending service enforces
that at the end of DATA). This is `mta.sending.domains.check_sender`, the rule the
sending pipeline applies too, asked early so the client hears the refusal at MAIL time
as the reference documents.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from typing import Any

from mta.errors import MtaError
from mta.sending import domains
from mta.smtp.auth_throttle import AuthThrottle
from mta.tokens import grants, is_well_formed, verify_token

__all__ = ["PERMISSION", "USERNAME", "Submitter", "SubmissionGate", "b64decode",
           "parse_plain"]

log = logging.getLogger("mta.smtp.submission")

USERNAME = "api_token"
PERMISSION = "email_sending:send"


@dataclass(frozen=True)
class Submitter:
    """An authenticated submission client."""

    token_id: str
    account_id: str


def b64decode(text: str) -> bytes | None:
    """A SASL response: strict base64 ("=" alone is the empty response, RFC 4954 §4);
    None when it is not base64."""
    if text == "=":
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None


def parse_plain(message: bytes) -> tuple[str, str, str] | None:
    """RFC 4616: `[authzid] NUL authcid NUL passwd` in UTF-8 -> (authzid, authcid,
    passwd), or None when malformed."""
    parts = message.split(b"\x00")
    if len(parts) != 3:
        return None
    try:
        authzid, authcid, passwd = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError:
        return None
    return authzid, authcid, passwd


class SubmissionGate:
    """Shared by every session of a submission listener."""

    def __init__(self, ctx: Any) -> None:
        self.db = ctx.db
        self.clock = ctx.clock
        limits = ctx.settings.limits
        self.throttle = AuthThrottle(limits.auth_failures_per_ip, limits.auth_failures_per_user,
                                     limits.auth_failure_window, limits.auth_failure_delay)

    async def authenticate(self, username: str, password: str, *,
                           authzid: str = "") -> Submitter:
        """The client behind `username`/`password`, or MtaError (535 / 454)."""
        if username != USERNAME or authzid not in ("", USERNAME):
            log.info("submission AUTH refused: username is not %s", USERNAME,
                     extra={"event": "submission.auth_failed", "reason": "username"})
            raise MtaError("E_UNAUTHORIZED", f"The username must be {USERNAME} and the "
                           "password an API token.")
        if not is_well_formed(password):
            log.info("submission AUTH refused: not an API token", extra={
                "event": "submission.auth_failed", "reason": "bad_token_type"})
            raise MtaError("E_BAD_TOKEN_TYPE", "The password is not an API token of "
                           "this server.")
        try:
            async with self.db.session() as s:
                check = await verify_token(s, password, self.clock())
        except Exception as exc:  # a database fault is temporary, not a refusal
            log.error("token lookup failed: %s", type(exc).__name__,
                      extra={"event": "submission.auth_error"})
            raise MtaError("E_AUTH_UPSTREAM") from None
        token = check.token
        if token is None:
            log.info("submission AUTH refused: token %s", check.problem, extra={
                "event": "submission.auth_failed", "reason": check.problem})
            raise MtaError("E_UNAUTHORIZED", f"The API token is {check.problem}.")
        if not grants(token.permissions, PERMISSION):
            log.info("submission AUTH refused: token %s lacks %s", token.id, PERMISSION,
                     extra={"event": "submission.auth_failed", "reason": "forbidden",
                            "token_id": token.id})
            raise MtaError("E_FORBIDDEN", f"The API token lacks the {PERMISSION} "
                           "permission.")
        return Submitter(token.id, token.account_id)

    async def check_sender(self, account_id: str, address: str) -> None:
        """MtaError (550 5.7.1) unless `address` may be a sender of `account_id`."""
        domain = address.rpartition("@")[2].lower()
        async with self.db.session() as s:
            await domains.check_sender(s, account_id, domain)

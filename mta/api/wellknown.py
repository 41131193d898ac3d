"""MTA-STS (RFC 8461): the policy at /.well-known/mta-sts.txt and the DNS records that
announce it, plus the TLS-RPT (RFC 8460) record.

One policy serves every routing domain: its mx patterns name our MX hosts, which are
the same for all of them (`mta_sts.mx`, or the hosts the routing MX records point at).
Senders fetch it from `https://mta-sts.<domain>/.well-known/mta-sts.txt`; the HTTP
listener answers whatever the Host header says, so one TLS front end holding the
`mta-sts.<domain>` names is enough.

The `id=` of the `_mta-sts` TXT record is a hash of the policy text: it changes exactly
when the policy does, which is what tells senders to fetch it again (§3.1), and every
node computes the same id from the same settings without storing anything.
"""

from __future__ import annotations

import hashlib

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from mta.config import Settings
from mta.dnsrecords import mx_hosts

__all__ = ["POLICY_PATH", "mta_sts_records", "policy_id", "policy_text", "routes"]

POLICY_PATH = "/.well-known/mta-sts.txt"


def policy_text(settings: Settings) -> str:
    """The policy document: `key: value` lines ending in CRLF (RFC 8461 §3.2)."""
    sts = settings.mta_sts
    patterns = [p.strip().rstrip(".").lower() for p in sts.mx] or mx_hosts(settings)
    lines = ["version: STSv1", f"mode: {sts.mode}", *(f"mx: {p}" for p in patterns),
             f"max_age: {int(sts.max_age)}"]
    return "".join(f"{line}\r\n" for line in lines)


def policy_id(settings: Settings) -> str:
    """1-32 alphanumerics (§3.1) that change whenever the policy text changes."""
    return hashlib.sha256(policy_text(settings).encode()).hexdigest()[:20]


def _rua(settings: Settings, domain: str) -> str:
    return ",".join(settings.mta_sts.tls_rpt_rua or [f"mailto:postmaster@{domain}"])


def mta_sts_records(settings: Settings, domain: str) -> list[dict]:
    """The TXT records to publish for `domain`, in the shape of mta/dnsrecords.py."""
    domain = domain.strip().rstrip(".").lower()
    return [
        {"type": "TXT", "name": f"_mta-sts.{domain}",
         "content": f"v=STSv1; id={policy_id(settings)}", "ttl": 1},
        {"type": "TXT", "name": f"_smtp._tls.{domain}",
         "content": f"v=TLSRPTv1; rua={_rua(settings, domain)}", "ttl": 1},
    ]


async def mta_sts_policy(request: Request) -> Response:
    settings: Settings = request.app.state.ctx.settings
    if not settings.mta_sts.enabled:
        return PlainTextResponse("no MTA-STS policy\n", status_code=404)
    # §3.3: senders must not follow redirects and may cache; say how long it is valid.
    return PlainTextResponse(policy_text(settings), media_type="text/plain",
                             headers={"Cache-Control": f"max-age={int(settings.mta_sts.max_age)}"})


def routes() -> list[Route]:
    return [Route(POLICY_PATH, mta_sts_policy, methods=["GET"])]

"""`mta simulate --from A --to B [--ip IP] message.eml`: what the MX would do with a
message, with nothing delivered ([Local development > Email routing];
mta/handlers/simulate.py).

It runs what the MX runs: the recipient check, then SPF (for `--ip` and `--helo`), DKIM,
ARC and DMARC from DNS, then the same policy decision (`smtp.authcheck.judge`, per
domain overrides included), and says which check decided; then, for an accepted
message, the rule matching and the rule's actions, handlers included (forward/reply
checked and printed, not sent). `--spf`, `--dkim`, `--dmarc`, `--arc` give a result
instead of checking it (all four given: no DNS at all). The message must have a
Message-ID. `--json` prints the result as JSON. Exit code 0, or 1 when the sender would
be refused.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from mta.checks.policy import AuthVerdicts, effective_policy
from mta.commands._common import add_json_option, open_database
from mta.commands._errors import CliError
from mta.config import Settings
from mta.dnscache import DnsResolver
from mta.smtp.authcheck import DECIDED_BY, from_header, judge, run_checks, start_spf, verdicts_of

__all__ = ["register"]

SPF = ["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"]
DKIM = ["pass", "fail", "none", "temperror", "permerror"]
DMARC = ["pass", "fail", "none", "temperror", "permerror"]
ARC = ["pass", "fail", "none"]


async def _authenticate(args, settings: Settings, raw: bytes) -> tuple[AuthVerdicts, dict]:
    """The verdicts the MX would reach (checked in DNS unless given)."""
    given = {k: getattr(args, k) for k in ("spf", "dkim", "dmarc", "arc")
             if getattr(args, k)}
    author = from_header(raw)
    results = None
    if len(given) < 4:
        resolver = DnsResolver.from_settings(settings.dns)
        spf_task = start_spf(resolver, args.ip, args.mail_from, args.helo,
                             receiver=settings.node.hostname)
        results = await run_checks(resolver, raw, spf_task, author)
        verdicts = verdicts_of(results, author)
    else:
        verdicts = AuthVerdicts(from_problem=author.problem)
    override = {k: (v,) if k == "dkim" and v != "none" else () if k == "dkim" else v
                for k, v in given.items()}
    if "dmarc" in given and given["dmarc"] == "fail" and not verdicts.dmarc_domain:
        # A given DMARC failure is taken at p=reject of the From domain.
        override.update(dmarc_disposition="reject", dmarc_domain=author.domain or "")
    verdicts = dataclasses.replace(verdicts, **override)
    shown = {"spf": verdicts.spf, "dkim": list(verdicts.dkim) or ["none"],
             "dmarc": verdicts.dmarc, "dmarc_disposition": verdicts.dmarc_disposition,
             "arc": verdicts.arc, "given": sorted(given),
             "authentication_results": results.to_header(
                 settings.inbound.authserv_id or settings.node.hostname) if results else None}
    return verdicts, {"verdicts": shown, "results": results}


async def _cmd(args, settings: Settings) -> int:
    from mta.handlers.simulate import SimulationError, format_text, simulate

    raw = sys.stdin.buffer.read() if args.message == "-" else Path(args.message).read_bytes()
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # as it arrives over SMTP
    async with open_database(settings) as db:
        verdicts, auth = await _authenticate(args, settings, raw)
        inbound = settings.inbound
        policy = effective_policy(inbound.policy, inbound.domain_policies,
                                  args.rcpt_to.rpartition("@")[2])
        decision, refusal = judge(verdicts, policy, auth["results"])
        dmarc = verdicts.dmarc if verdicts.dmarc in ("pass", "fail") else "none"
        try:
            result = await simulate(settings, db, mail_from=args.mail_from,
                                    rcpt_to=args.rcpt_to, raw=raw, dmarc=dmarc)
        except SimulationError as exc:
            raise CliError(f"simulate: {exc}", exit_code=2) from None
    result["authentication"] = auth["verdicts"]
    result["policy"] = {"verdict": decision.verdict, "reason": decision.reason,
                        "decided_by": DECIDED_BY.get(decision.reason, decision.reason),
                        "would_be": decision.would_be, "quarantine": decision.quarantine}
    if refusal is not None and result["smtp_reply"].startswith("2"):
        # Refused after DATA: no rule runs (a refusal at RCPT came first and stands).
        result["smtp_reply"] = refusal.line()
        result["actions"], result["replies"], result["sent"] = [], [], []
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False, default=str))
    else:
        a, p = result["authentication"], result["policy"]
        print(f"authentication: spf={a['spf']} dkim={','.join(a['dkim'])} dmarc={a['dmarc']}"
              f" arc={a['arc']}" + (f" (given: {', '.join(a['given'])})" if a["given"] else ""))
        print(f"policy: {p['verdict']} ({p['reason']}), decided by {p['decided_by']}"
              + (f"; would be {p['would_be']} without monitor_only" if p["would_be"] else ""))
        print(format_text(result))
    return 0 if result["smtp_reply"].startswith("2") else 1


def register(sub) -> None:
    p = sub.add_parser("simulate", help="what the MX would do with a message (checks, "
                       "policy, rules, handlers); delivers nothing")
    p.add_argument("--from", dest="mail_from", required=True, help="envelope sender")
    p.add_argument("--to", dest="rcpt_to", required=True, help="envelope recipient")
    p.add_argument("--ip", default="127.0.0.1",
                   help="the client's address SPF is checked for (default %(default)s)")
    p.add_argument("--helo", default="localhost", help="the client's HELO name")
    p.add_argument("--spf", choices=SPF, help="take this SPF result instead of checking")
    p.add_argument("--dkim", choices=DKIM, help="take this DKIM result instead of checking")
    p.add_argument("--dmarc", choices=DMARC, help="take this DMARC result instead of checking")
    p.add_argument("--arc", choices=ARC, help="take this ARC result instead of checking")
    add_json_option(p)
    p.add_argument("message", help="the RFC 5322 message (.eml), or - for stdin")
    p.set_defaults(func=_cmd)


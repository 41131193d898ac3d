"""`mta simulate --from A --to B message.eml`: what would happen to a message, with
nothing delivered ([Local development > Email routing]; mta/handlers/simulate.py).

Runs the rule matching against the configured database and the matched rule's
actions, handlers included (forward/reply checked and printed, not sent). The message
must have a Message-ID. `--dmarc` sets the DMARC result to assume (default pass);
`--json` prints the result as JSON. Exit code 0, or 1 when the sender would be refused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mta.commands._common import open_database
from mta.commands._errors import CliError
from mta.config import Settings

__all__ = ["register"]


async def _cmd(args, settings: Settings) -> int:
    from mta.handlers.simulate import SimulationError, format_text, simulate

    raw = sys.stdin.buffer.read() if args.message == "-" else Path(args.message).read_bytes()
    async with open_database(settings) as db:
        try:
            result = await simulate(settings, db, mail_from=args.mail_from,
                                    rcpt_to=args.rcpt_to, raw=raw, dmarc=args.dmarc)
        except SimulationError as exc:
            raise CliError(f"simulate: {exc}", exit_code=2) from None
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json
          else format_text(result))
    return 0 if result["smtp_reply"].startswith("2") else 1


def register(sub) -> None:
    p = sub.add_parser("simulate", help="run rule matching and handlers on a message, "
                       "deliver nothing")
    p.add_argument("--from", dest="mail_from", required=True, help="envelope sender")
    p.add_argument("--to", dest="rcpt_to", required=True, help="envelope recipient")
    p.add_argument("--dmarc", default="pass", choices=["pass", "fail", "none"],
                   help="DMARC result to assume (default pass)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("message", help="the RFC 5322 message (.eml), or - for stdin")
    p.set_defaults(func=_cmd)

"""`mta domains onboard|list` and `mta dns`: sending domains and the DNS they need.

    mta domains onboard example.com --sending [--ed25519] [--zone ZONE_ID]
    mta domains list
    mta dns example.com [--json] [--no-check] [--mta-sts | --routing | --forwarding]

`onboard` makes the domain (or subdomain: each is onboarded on its own) a sending domain
of the account owning its zone, with DKIM keys and a bounce subdomain, then prints the
records to publish. `dns` prints every record (bounce MX and SPF, DKIM TXT per selector,
DMARC TXT) and checks each in live DNS through the node's resolver: ok, missing, wrong,
or unknown when DNS cannot answer. The exit code is 0 when every record is in place,
1 when one is missing or wrong, 3 when DNS could not say, 2 on a usage error.
The MTA-STS and TLS-RPT records follow, unchecked; `--mta-sts` prints and checks only
them, for any domain we receive mail for (mta/api/wellknown.py); `--routing` and
`--forwarding` print the node's own domains' records (mta/commands/_nodedns.py).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import select

from mta.api.wellknown import POLICY_PATH, mta_sts_records
from mta.commands._common import (
    CommandGroup,
    add_json_option,
    open_database,
    print_json,
    print_list,
)
from mta.commands._errors import CliError
from mta.config import Settings
from mta.dnscache import DnsResolver
from mta.sending.domains import DomainError, check_domain, domain_records, onboard_sending_domain
from mta.store.dkimkeys import SENDING, signing_selectors
from mta.store.models import SendingDomain, Zone

__all__ = ["register"]


def _print_records(records: list[dict], states: list[str] | None = None) -> None:
    for i, r in enumerate(records):
        prio = f" {r['priority']}" if r["type"] == "MX" else ""
        content = r["content"] if r["type"] in ("MX", "TLSA") else json.dumps(r["content"])
        state = f"{states[i]:<8} " if states else ""
        print(f"{state}{r['type']:<4} {r['name']}{prio} {content}")


async def _cmd_onboard(args, settings: Settings) -> int:
    if not args.sending:
        raise CliError("only --sending onboarding is done here (routing domains: "
                       "`mta zones create` or `mta apply`)", exit_code=2)
    async with open_database(settings) as db:
        try:
            async with db.session() as s:
                row = await onboard_sending_domain(s, settings, args.domain, zone_id=args.zone,
                                                   ed25519=args.ed25519)
                name, bounce = row.name, row.return_path_domain
            async with db.session() as s:
                _, records = await domain_records(s, settings, name)
        except DomainError as exc:
            raise CliError(str(exc)) from None
    print(f"{name}: sending domain, bounce subdomain {bounce}. Publish:")
    _print_records(records)
    print(f"then check with: mta dns {name}")
    return 0


async def _cmd_list(args, settings: Settings) -> int:
    async with open_database(settings) as db, db.session() as s:
        rows = (await s.execute(select(SendingDomain, Zone.account_id).join(
            Zone, Zone.id == SendingDomain.zone_id).order_by(SendingDomain.name))).all()
        # The selector that signs now: a rotation's new key once it has taken over.
        signing = await signing_selectors(s, [d.name for d, _ in rows], SENDING,
                                          datetime.now(UTC))
    selector = {d.name: signing.get(d.name, d.dkim_selector) for d, _ in rows}
    return print_list(
        args, [{"name": d.name, "status": d.status, "enabled": d.enabled,
                "dkim_selector": selector[d.name], "return_path_domain": d.return_path_domain,
                "zone_id": d.zone_id, "account_id": account} for d, account in rows],
        [[d.name, d.status, "enabled" if d.enabled else "disabled", selector[d.name],
          d.return_path_domain, account] for d, account in rows],
        ["NAME", "STATUS", "STATE", "SELECTOR", "BOUNCE", "ACCOUNT"])


async def _cmd_dns_mta_sts(args, settings: Settings) -> int:
    """`mta dns DOMAIN --mta-sts`: the _mta-sts and _smtp._tls TXT records of any
    domain we receive for, checked live like the sending records (no database needed);
    `--routing` adds the MX and SPF records before them, `--forwarding` prints the SRS
    and forwarding-DKIM records instead (mta/commands/_nodedns.py)."""
    from mta.commands import _nodedns as nodedns
    from mta.dnsrecords import check_records

    if args.node or args.forwarding:
        records = await (nodedns.node_records(settings) if args.node
                         else nodedns.forwarding_records(settings, args.domain))
        if isinstance(records, str):
            raise CliError(records)
    elif args.routing:
        records = nodedns.routing_domain_records(settings, args.domain)
    else:
        records = mta_sts_records(settings, args.domain)
    checks = None if args.no_check else await check_records(
        DnsResolver.from_settings(settings.dns), records)
    if args.json:
        print_json(records if checks is None else [
            dict(c.record, state=c.state, found=list(c.found)) for c in checks])
    else:
        _print_records(records, None if checks is None else [c.state for c in checks])
        if not (args.forwarding or args.node):
            print(f"and serve https://mta-sts.{args.domain}{POLICY_PATH} from this "
                  "node's HTTP listener behind TLS")
        if any(r["type"] == "TLSA" for r in records):
            print("TLSA (DANE) records count only in a DNSSEC-signed zone; publish the "
                  "new key's record before changing keys")
    states = {c.state for c in checks or ()}
    return 1 if states & {"missing", "wrong"} else 3 if "unknown" in states else 0


async def _kind(settings: Settings, domain: str) -> str:
    """What `domain` is to us: sending, routing, node (SRS or forwarding domain)."""
    from mta.routing.forward import forwarding_domain
    from mta.store.models import RoutingDomain

    name = domain.strip().rstrip(".").lower()
    async with open_database(settings) as db, db.session() as s:
        if (await s.execute(select(SendingDomain.id).where(SendingDomain.name == name))).first():
            return "sending"
        if (await s.execute(select(RoutingDomain.id).where(RoutingDomain.name == name))).first() \
                or (await s.execute(select(Zone.id).where(Zone.name == name))).first():
            return "routing"
    if name in ((settings.srs.domain or "").lower(), forwarding_domain(settings)):
        return "node"
    raise CliError(f"{name} is not one of our domains (sending: `mta domains list`, "
                   "routing: `mta zones list`); `mta dns --node` prints the node's own")


async def _cmd_dns(args, settings: Settings) -> int:
    if not args.domain and not args.node:
        raise CliError("name a DOMAIN, or --node for this deployment's own records",
                       exit_code=2)
    if args.domain and not (args.node or args.mta_sts or args.routing or args.forwarding):
        kind = await _kind(settings, args.domain)
        args.routing, args.forwarding = kind == "routing", kind == "node"
    if args.node or args.mta_sts or args.routing or args.forwarding:
        return await _cmd_dns_mta_sts(args, settings)
    resolver = DnsResolver.from_settings(settings.dns)
    async with open_database(settings) as db:
        try:
            async with db.session() as s:
                if args.no_check:
                    _, records = await domain_records(s, settings, args.domain)
                    checks = None
                else:
                    result = await check_domain(s, settings, resolver, args.domain)
                    records = [c.record for c in result.checks]
                    checks = result.checks
        except DomainError as exc:
            raise CliError(str(exc)) from None
    if args.json:
        out = [dict(c.record, state=c.state, found=list(c.found)) for c in checks] \
            if checks is not None else records
        print_json(out)
    else:
        _print_records(records, [c.state for c in checks] if checks is not None else None)
        if settings.mta_sts.enabled:  # unchecked here: they concern inbound mail
            print(f"inbound TLS (MTA-STS, TLS-RPT; check: mta dns {args.domain} --mta-sts):")
            _print_records(mta_sts_records(settings, args.domain))
    if checks is None:
        return 0
    states = {c.state for c in checks}
    if states & {"missing", "wrong"}:
        if not args.json:
            print(f"{args.domain}: misconfigured")
        return 1
    if "unknown" in states:
        if not args.json:
            print(f"{args.domain}: DNS did not answer for every record; try again")
        return 3
    if not args.json:
        print(f"{args.domain}: ready")
    return 0


def register(sub) -> None:
    ps = CommandGroup(sub, "domains", "sending domains (DKIM keys, bounce subdomain)")
    c = ps.add("onboard", _cmd_onboard, "onboard a domain or subdomain for sending")
    c.add_argument("domain")
    c.add_argument("--sending", action="store_true", help="onboard for Email Sending")
    c.add_argument("--ed25519", action="store_true",
                   help="also an Ed25519 key (RFC 8463 dual signature)")
    c.add_argument("--zone", help="zone id (default: the zone containing the domain)")
    c.set_defaults(secrets="create")
    ps.add("list", _cmd_list, "list sending domains and their status", json=True)

    d = sub.add_parser("dns", help="print a domain's DNS records (sending, routing, or the "
                                   "node's own) and check them live")
    d.add_argument("domain", nargs="?")
    d.add_argument("--node", action="store_true",
                   help="this deployment's own records: the SPF include target and its "
                        "content, the SRS domain's MX and SPF, the forwarding DKIM key, "
                        "the MX hosts' TLSA (DANE) records")
    add_json_option(d)
    d.add_argument("--no-check", action="store_true", help="print only, do not query DNS")
    d.add_argument("--mta-sts", action="store_true",
                   help="the _mta-sts and _smtp._tls records (any receiving domain)")
    d.add_argument("--routing", action="store_true",
                   help="a routing domain's MX and SPF records, then --mta-sts's")
    d.add_argument("--forwarding", action="store_true",
                   help="the SRS domain's MX and SPF and the forwarding DKIM key "
                        "(generated on first use)")
    d.set_defaults(func=_cmd_dns)

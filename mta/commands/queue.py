"""`mta queue list|show|retry|purge|stats`: look at and act on the outbound queue.

Every command works on the database the configuration names (or the embedded cluster),
so it can run on any node, or on an admin host with the same config.
"""

from __future__ import annotations

import argparse
import json
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from mta.commands._common import open_database, table
from mta.commands._errors import CliError
from mta.config import Settings
from mta.queue import queue as q
from mta.store.models import Delivery, DeliveryAttempt, Message

__all__ = ["register"]


def _now() -> datetime:
    return datetime.now(UTC)


def _ago(ts: datetime | None, now: datetime) -> str:
    if ts is None:
        return "-"
    secs = int((ts - now).total_seconds())
    sign, secs = ("in " if secs > 0 else ""), abs(secs)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{sign}{secs // size}{unit}" + ("" if sign else " ago")
    return f"{sign}{secs}s" + ("" if sign else " ago")


def _delivery_dict(d: Delivery) -> dict:
    return {"id": d.id, "message_id": str(d.message_id), "recipient": d.recipient,
            "domain": d.domain, "envelope_from": d.envelope_from, "status": d.status,
            "priority": d.priority, "attempts": d.attempts,
            "next_attempt_at": d.next_attempt_at.isoformat(),
            "created_at": d.created_at.isoformat(),
            "finished_at": d.finished_at.isoformat() if d.finished_at else None,
            "lease_owner": d.lease_owner, "last_reply": d.last_reply}


async def _cmd_list(args, settings: Settings) -> int:
    now = _now()
    async with open_database(settings) as db, db.session() as s:
        stmt = select(Delivery)
        statuses = [args.status] if args.status != "all" else None
        if statuses:
            stmt = stmt.where(Delivery.status.in_(statuses))
        if args.domain:
            stmt = stmt.where(Delivery.domain == args.domain.lower())
        if args.recipient:
            stmt = stmt.where(Delivery.recipient.ilike(args.recipient))
        rows = (await s.execute(stmt.order_by(Delivery.priority, Delivery.next_attempt_at)
                                .limit(args.limit))).scalars().all()
    if args.json:
        print(json.dumps([_delivery_dict(d) for d in rows], indent=2))
        return 0
    if not rows:
        print("no deliveries match")
        return 0
    print(table([[str(d.id), d.status, d.recipient, str(d.attempts),
                   _ago(d.next_attempt_at, now) if d.status == "queued" else "-",
                   _ago(d.created_at, now), (d.last_reply or "")[:60]] for d in rows],
                 ["ID", "STATUS", "RECIPIENT", "TRIES", "NEXT", "QUEUED", "LAST REPLY"]))
    return 0


async def _cmd_show(args, settings: Settings) -> int:
    async with open_database(settings) as db, db.session() as s:
        d = await s.get(Delivery, args.id)
        if d is None:
            raise CliError(f"no delivery {args.id}; see `mta queue list`")
        msg = await s.get(Message, d.message_id)
        attempts = (await s.execute(select(DeliveryAttempt).where(
            DeliveryAttempt.delivery_id == d.id).order_by(DeliveryAttempt.started_at))
        ).scalars().all()
    info = _delivery_dict(d)
    if msg is not None:
        info["message"] = {"mail_from": msg.mail_from, "source": msg.source,
                           "message_id_header": msg.message_id_header, "size": msg.size,
                           "account_id": msg.account_id}
    info["attempts"] = [{
        "started_at": a.started_at.isoformat(), "finished_at": a.finished_at.isoformat(),
        "node": a.node, "result": a.result, "mx_host": a.mx_host, "ip": a.ip,
        "tls_version": a.tls_version, "reply_code": a.reply_code,
        "enhanced_code": a.enhanced_code, "reply_text": a.reply_text} for a in attempts]
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for key, value in info.items():
        if key not in ("attempts", "message"):
            print(f"{key:16} {value if value is not None else '-'}")
    for key, value in (info.get("message") or {}).items():
        print(f"{'message.' + key:16} {value if value is not None else '-'}")
    print(f"\n{len(attempts)} attempt(s)")
    for a in info["attempts"]:
        reply = " ".join(str(v) for v in (a["reply_code"], a["enhanced_code"], a["reply_text"])
                         if v)
        print(f"  {a['started_at']}  {a['result']:9} {a['mx_host'] or '-'} "
              f"[{a['ip'] or '-'}] {a['tls_version'] or 'no TLS'}  {reply}")
    return 0


def _targets(args) -> dict:
    msg = uuid.UUID(args.message) if getattr(args, "message", None) else None
    return {"ids": args.ids or None, "domain": args.domain, "message_id": msg}


def _plural(n: int) -> str:
    return f"{n} deliver{'y' if n == 1 else 'ies'}"


async def _cmd_retry(args, settings: Settings) -> int:
    targets = _targets(args)
    if not (args.all or any(targets.values())):
        raise CliError("name deliveries (ids, --domain, --message) or use --all", exit_code=2)
    async with open_database(settings) as db, db.session() as s:
        n = await q.requeue(s, now=_now(), include_failed=args.failed, **targets)
    print(f"{_plural(n)} due now")
    return 0


async def _cmd_purge(args, settings: Settings) -> int:
    targets = _targets(args)
    async with open_database(settings) as db, db.session() as s:
        if args.finished_before_days is not None:
            before = _now() - timedelta(days=args.finished_before_days)
            n = await q.purge(s, now=_now(), finished_before=before, **targets)
            print(f"{_plural(n)} finished before {before:%F %T} deleted")
            return 0
        if not any(targets.values()):
            raise CliError("name deliveries (ids, --domain, --message) or "
                           "--finished-before-days", exit_code=2)
        n = await q.purge(s, now=_now(), **targets)
    print(f"{_plural(n)} purged")
    return 0


async def _cmd_stats(args, settings: Settings) -> int:
    async with open_database(settings) as db, db.session() as s:
        stats = await q.queue_stats(s, now=_now())
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(table([[k, str(v)] for k, v in stats["depth"].items()], ["STATE", "DELIVERIES"]))
    print(f"\noldest due: {stats['oldest_due_seconds']:.0f}s past its attempt time; "
          f"oldest queued: {stats['oldest_queued_seconds']:.0f}s")
    if stats["top_domains"]:
        print("\n" + table([[d["domain"], str(d["queued"])] for d in stats["top_domains"]],
                            ["DOMAIN", "QUEUED"]))
    if stats["finished"]:
        print("\n" + table([[k, str(v)] for k, v in sorted(stats["finished"].items())],
                            ["FINISHED", "DELIVERIES"]))
    return 0


def _add_targets(p: argparse.ArgumentParser) -> None:
    p.add_argument("ids", nargs="*", type=int, help="delivery ids")
    p.add_argument("--domain", help="every delivery to this destination domain")
    p.add_argument("--message", help="every delivery of this message (uuid)")


def register(sub) -> None:
    queue = sub.add_parser("queue", help="the outbound delivery queue")
    qs = queue.add_subparsers(dest="queue_command", required=True)

    p = qs.add_parser("list", help="list deliveries (queued ones by default)")
    p.add_argument("--status", default="queued",
                   help="queued (default), held, delivered, failed, expired, bounced, "
                        "complained, purged or all")
    p.add_argument("--domain")
    p.add_argument("--recipient", help="address (SQL ILIKE pattern)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_list)

    p = qs.add_parser("show", help="one delivery with every attempt")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_show)

    p = qs.add_parser("retry", help="make deliveries due now (the backoff schedule goes on)")
    _add_targets(p)
    p.add_argument("--all", action="store_true", help="every queued delivery")
    p.add_argument("--failed", action="store_true",
                   help="also revive failed and expired deliveries")
    p.set_defaults(func=_cmd_retry)

    p = qs.add_parser("purge", help="remove queued deliveries (kept as 'purged' in the log)")
    _add_targets(p)
    p.add_argument("--finished-before-days", type=float, default=None,
                   help="instead delete finished deliveries older than this many days")
    p.set_defaults(func=_cmd_purge)

    p = qs.add_parser("stats", help="queue depth, age and busiest domains")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_stats)

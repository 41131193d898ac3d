"""`mta queue list|show|cat|hold|release|retry|purge|stats`: look at and act on the
outbound queue.

One id names a message everywhere: the queue id of the 250 reply (also in our Received
header and the activity log) finds the message, its forwarded copies and all their
deliveries; a delivery id or the Message-ID the send API returns work too.

Every command works on the database the configuration names (or the embedded cluster),
so it can run on any node, or on an admin host with the same config.
"""

from __future__ import annotations

import argparse
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from mta.commands._common import CommandGroup, open_database, print_json, print_list, print_table
from mta.commands._errors import CliError
from mta.config import Settings
from mta.queue import admin
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
    return {"id": d.id, "message_id": d.message_id.hex, "recipient": d.recipient,
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
        found = (await s.execute(
            stmt.add_columns(Message.origin_id).join(Message, Message.id == Delivery.message_id)
            .order_by(Delivery.priority, Delivery.next_attempt_at).limit(args.limit))).all()
    # The queue id a sender was given: a forwarded copy's original.
    queue_ids = {d.id: (origin or d.message_id).hex for d, origin in found}
    rows = [d for d, _ in found]
    return print_list(args, [dict(_delivery_dict(d), queue_id=queue_ids[d.id]) for d in rows],
                      [[d.id, queue_ids[d.id], d.status, d.recipient, d.attempts,
                        _ago(d.next_attempt_at, now) if d.status == "queued" else "-",
                        _ago(d.created_at, now), (d.last_reply or "")[:60]] for d in rows],
                      ["ID", "QUEUE ID", "STATUS", "RECIPIENT", "TRIES", "NEXT", "QUEUED",
                       "LAST REPLY"], empty="no deliveries match")


def _attempt_line(a: DeliveryAttempt) -> str:
    """One attempt as a person reads it: when, outcome, next hop, TLS, the reply."""
    hop = a.mx_host or (str(a.ip) if a.ip else None)
    if hop and a.ip and str(a.ip) != a.mx_host:
        hop += f" [{a.ip}]"
    tls = a.tls_version or ("no TLS" if hop else "")
    reply = " ".join(str(v) for v in (a.reply_code, a.enhanced_code, a.reply_text) if v)
    took = (a.finished_at - a.started_at).total_seconds()
    return (f"{a.started_at:%Y-%m-%d %H:%M:%S}Z  {a.result:9}  "
            f"{'via ' + hop if hop else 'no connection'}{', ' + tls if tls else ''}  "
            f"{took:.1f}s: {reply or '(no reply)'}")


def _attempt_dict(a: DeliveryAttempt) -> dict:
    return {"started_at": a.started_at.isoformat(), "finished_at": a.finished_at.isoformat(),
            "node": a.node, "result": a.result, "mx_host": a.mx_host,
            "ip": str(a.ip) if a.ip else None, "tls_version": a.tls_version,
            "reply_code": a.reply_code, "enhanced_code": a.enhanced_code,
            "reply_text": a.reply_text}


def _message_dict(m: Message) -> dict:
    return {"id": m.id.hex, "origin_id": m.origin_id.hex if m.origin_id else None,
            "direction": m.direction, "source": m.source, "status": m.status,
            "mail_from": m.mail_from, "rcpt_to": list(m.rcpt_to),
            "message_id_header": m.message_id_header, "size": m.size,
            "received_at": m.received_at.isoformat(), "account_id": m.account_id,
            "session_id": m.session_id}


async def find_messages(s, ref: str) -> tuple[Message, list[Message]]:
    """The message `ref` names and its forwarded copies. `ref` is the queue id of the
    250 reply (32 hex or a UUID), a delivery id (digits), or a Message-ID (the send
    API's `message_id`, with or without <>). A copy's id names its original."""
    ref = ref.strip()
    message: Message | None = None
    if ref.isdigit():
        d = await s.get(Delivery, int(ref))
        message = await s.get(Message, d.message_id) if d is not None else None
    else:
        try:
            message = await s.get(Message, uuid.UUID(ref))
        except ValueError:
            bare = ref.strip("<>")
            message = (await s.execute(select(Message).where(
                Message.message_id_header.in_([bare, f"<{bare}>"])).order_by(
                Message.origin_id.is_not(None), Message.received_at).limit(1))).scalar()
    if message is None:
        raise CliError(f"no message or delivery {ref!r} (a queue id, a delivery id or a "
                       "Message-ID); see `mta queue list --status all`")
    if message.origin_id is not None:
        message = await s.get(Message, message.origin_id) or message
    copies = (await s.execute(select(Message).where(Message.origin_id == message.id)
                              .order_by(Message.received_at))).scalars().all()
    return message, list(copies)


async def _cmd_show(args, settings: Settings) -> int:
    async with open_database(settings) as db, db.session() as s:
        message, copies = await find_messages(s, args.id)
        messages = [message, *copies]
        deliveries = (await s.execute(select(Delivery).where(Delivery.message_id.in_(
            [m.id for m in messages])).order_by(Delivery.id))).scalars().all()
        attempts = (await s.execute(select(DeliveryAttempt).where(
            DeliveryAttempt.delivery_id.in_([d.id for d in deliveries]))
            .order_by(DeliveryAttempt.started_at))).scalars().all()
    by_delivery: dict[int, list[DeliveryAttempt]] = {}
    for a in attempts:
        by_delivery.setdefault(a.delivery_id, []).append(a)
    if args.json:
        print_json({
            **_message_dict(message), "copies": [_message_dict(c) for c in copies],
            "deliveries": [dict(_delivery_dict(d), message_id=d.message_id.hex,
                                attempt_log=[_attempt_dict(a) for a in by_delivery.get(d.id, [])])
                           for d in deliveries]})
        return 0
    now = _now()
    print(f"message {message.id.hex}  {message.direction}/{message.source}, {message.status}")
    print(f"  received  {message.received_at:%Y-%m-%d %H:%M:%S}Z ({_ago(message.received_at, now)})"
          f", {message.size} bytes")
    print(f"  from      <{message.mail_from}>")
    print(f"  to        {', '.join(f'<{r}>' for r in message.rcpt_to)}")
    print(f"  Message-ID {message.message_id_header or '-'}")
    for c in copies:
        print(f"  forwarded copy {c.id.hex} to {', '.join(c.rcpt_to)}")
    if not deliveries:
        print("no deliveries (nothing to send out)")
    for d in deliveries:
        tries = by_delivery.get(d.id, [])
        due = f", next try {_ago(d.next_attempt_at, now)}" if d.status == "queued" else ""
        print(f"\ndelivery {d.id} to <{d.recipient}>: {d.status}, {len(tries)} attempt(s)"
              f"{due}; envelope from <{d.envelope_from}>")
        for a in tries:
            print("  " + _attempt_line(a))
    return 0


async def _cmd_cat(args, settings: Settings) -> int:
    """`postcat -q`: the stored message, headers and body (or one of them)."""
    import sys

    async with open_database(settings) as db, db.session() as s:
        message, copies = await find_messages(s, args.id)
        raw = bytes(message.raw)
        if args.copy:
            # A forward is stored as the received message plus what forwarding put in
            # front of it (deliveries.prefix); only a From-rewritten copy is stored whole.
            prefix = (await s.execute(select(Delivery.prefix).where(
                Delivery.message_id == message.id, Delivery.prefix.is_not(None))
                .order_by(Delivery.id).limit(1))).scalar()
            if prefix is not None:
                raw = bytes(prefix) + raw
            elif copies:
                raw = bytes(copies[0].raw)
            else:
                raise CliError(f"message {message.id.hex} has no forwarded copy")
    cut = raw.find(b"\r\n\r\n")
    head, body = (raw, b"") if cut < 0 else (raw[:cut + 2], raw[cut + 4:])
    out = head if args.headers else body if args.body else raw
    sys.stdout.flush()
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.flush()
    return 0


def _targets(args) -> list[dict]:
    """The operations a command's arguments name: delivery ids together, each message
    (with its forwarded copies) on its own."""
    ids = [int(x) for x in args.ids if x.isdigit()]
    messages = [x for x in args.ids if not x.isdigit()]
    if getattr(args, "message", None):
        messages.append(args.message)
    out = []
    if ids or args.domain:
        out.append({"ids": ids or None, "domain": args.domain, "message_id": None})
    for m in messages:
        try:
            out.append({"ids": None, "domain": None, "message_id": uuid.UUID(m)})
        except ValueError:
            raise CliError(f"{m!r} is neither a delivery id nor a queue id", 2) from None
    return out


async def _cmd_hold(args, settings: Settings) -> int:
    targets = _targets(args)
    if not targets:
        raise CliError("name deliveries (delivery or queue ids, --domain, --message)",
                       exit_code=2)
    held = busy = 0
    async with open_database(settings) as db, db.session() as s:
        for t in targets:
            h, b = await admin.hold(s, now=_now(), **t)
            held, busy = held + h, busy + b
    print(f"{_plural(held)} held; `mta queue release` lets them go"
          + (f" ({_plural(busy)} in flight now finish their attempt first)" if busy else ""))
    return 0


async def _cmd_release(args, settings: Settings) -> int:
    targets = _targets(args)
    if not targets:
        raise CliError("name deliveries (delivery or queue ids, --domain, --message)",
                       exit_code=2)
    async with open_database(settings) as db, db.session() as s:
        n = sum([await admin.release_held(s, now=_now(), **t) for t in targets])
    print(f"{_plural(n)} released, due now")
    return 0


def _plural(n: int) -> str:
    return f"{n} deliver{'y' if n == 1 else 'ies'}"


async def _cmd_retry(args, settings: Settings) -> int:
    targets = _targets(args)
    if not (args.all or targets):
        raise CliError("name deliveries (ids, --domain, --message) or use --all", exit_code=2)
    async with open_database(settings) as db, db.session() as s:
        n = sum([await admin.requeue(s, now=_now(), include_failed=args.failed, **t)
                 for t in targets or [{}]])
    print(f"{_plural(n)} due now")
    return 0


async def _cmd_purge(args, settings: Settings) -> int:
    targets = _targets(args)
    async with open_database(settings) as db, db.session() as s:
        if args.finished_before_days is not None:
            before = _now() - timedelta(days=args.finished_before_days)
            n = sum([await admin.purge(s, now=_now(), finished_before=before, **t)
                     for t in targets or [{}]])
            print(f"{_plural(n)} finished before {before:%F %T} deleted")
            return 0
        if not targets:
            raise CliError("name deliveries (ids, --domain, --message) or "
                           "--finished-before-days", exit_code=2)
        n = sum([await admin.purge(s, now=_now(), **t) for t in targets])
    print(f"{_plural(n)} purged")
    return 0


async def _cmd_stats(args, settings: Settings) -> int:
    async with open_database(settings) as db, db.session() as s:
        stats = await admin.queue_stats(s, now=_now())
    if args.json:
        print_json(stats)
        return 0
    print_table([[k, v] for k, v in stats["depth"].items()], ["STATE", "DELIVERIES"])
    print(f"\noldest due: {stats['oldest_due_seconds']:.0f}s past its attempt time; "
          f"oldest queued: {stats['oldest_queued_seconds']:.0f}s")
    if stats["top_domains"]:
        print()
        print_table([[d["domain"], d["queued"]] for d in stats["top_domains"]],
                    ["DOMAIN", "QUEUED"])
    if stats["finished"]:
        print()
        print_table(sorted(map(list, stats["finished"].items())), ["FINISHED", "DELIVERIES"])
    return 0


def _add_targets(p: argparse.ArgumentParser) -> None:
    p.add_argument("ids", nargs="*", metavar="ID",
                   help="delivery ids, or queue ids (every delivery of that message)")
    p.add_argument("--domain", help="every delivery to this destination domain")
    p.add_argument("--message", help="every delivery of this message (its queue id)")


def register(sub) -> None:
    qs = CommandGroup(sub, "queue", "the outbound delivery queue")

    p = qs.add("list", _cmd_list, "list deliveries (queued ones by default)", json=True)
    p.add_argument("--status", default="queued",
                   help="queued (default), held, delivered, failed, expired, bounced, "
                        "complained, purged or all")
    p.add_argument("--domain")
    p.add_argument("--recipient", help="address (SQL ILIKE pattern)")
    p.add_argument("--limit", type=int, default=100)

    p = qs.add("show", _cmd_show, "a message with its deliveries and every attempt", json=True)
    p.add_argument("id", help="queue id (the 250 reply's), delivery id or Message-ID")

    p = qs.add("cat", _cmd_cat, "print a stored message, headers and body (postcat -q)")
    p.add_argument("id", help="queue id (the 250 reply's), delivery id or Message-ID")
    part = p.add_mutually_exclusive_group()
    part.add_argument("--headers", action="store_true", help="only the header section")
    part.add_argument("--body", action="store_true", help="only the body")
    p.add_argument("--copy", action="store_true",
                   help="the forwarded copy (as signed and sent) instead of the original")

    p = qs.add("hold", _cmd_hold, "stop trying deliveries until released")
    _add_targets(p)

    p = qs.add("release", _cmd_release, "put held deliveries back in the queue, due now")
    _add_targets(p)

    p = qs.add("retry", _cmd_retry,
                   "make deliveries due now (the backoff schedule goes on)")
    _add_targets(p)
    p.add_argument("--all", action="store_true", help="every queued delivery")
    p.add_argument("--failed", action="store_true",
                   help="also revive failed and expired deliveries")

    p = qs.add("purge", _cmd_purge,
                   "remove queued deliveries (kept as 'purged' in the log)")
    _add_targets(p)
    p.add_argument("--finished-before-days", type=float, default=None,
                   help="instead delete finished deliveries older than this many days")

    qs.add("stats", _cmd_stats, "queue depth, age and busiest domains", json=True)

"""SMTP submission: accepted messages per second over implicit TLS + AUTH, DKIM signed.

    .venv/bin/python bench/submission.py [--messages 300] [--concurrency 1,10,50]
                                         [--per-session 10] [--workers N]

A real `mta serve` process (PostgreSQL started by the benchmark, fsync on) with the
submission listener on (implicit TLS as on port 465, a throw-away certificate), sending
domain sender.test (RSA-2048 DKIM) and an `email_sending:send` token. The client
(bench/smtpload.py, its own process) opens TLS, EHLO, `AUTH PLAIN` (username
`api_token`, the token as password), then sends --per-session messages (~2.7 KB MIME,
text + HTML) per session. Each runs the send_raw pipeline (sender check, suppression,
DKIM signature, enqueue, commit) before its 250; as for the send API the message is
only queued (`sending.sync_delivery_timeout: 0s`; delivery workers off or hanging on a
next hop that never answers, see bench/send_api.py). Per level:
messages/s, p50/p99 of one transaction, p50 of session set-up (TCP + TLS + EHLO +
AUTH), CPU ms per message over the serve process tree and every PostgreSQL process.
`limits.max_sessions_per_ip` is raised (every client here is 127.0.0.1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    ACCEPT_ONLY,
    Blackhole,
    Node,
    Postgres,
    Sink,
    World,
    add_common_args,
    free_port,
    node_workers,
    queue_depth,
    smtp_level,
    table,
    workdir,
    write_result,
)


def mime_message() -> bytes:
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid

    m = EmailMessage()
    m["From"] = "Bench <noreply@sender.test>"
    m["To"] = "user@d0.rcpt.test"
    m["Subject"] = "Your receipt"
    m["Date"] = formatdate()
    m["Message-ID"] = make_msgid(domain="sender.test")
    m["List-Unsubscribe"] = "<https://sender.test/u/1>"
    m["X-Campaign-ID"] = "bench"
    m.set_content("Thanks for your order.\n" * 40)
    m.add_alternative("<p>Thanks for your order.</p>" * 40, subtype="html")
    return m.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def main(argv: list[str] | None = None) -> None:
    import trustme

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=300, help="messages per level")
    p.add_argument("--per-session", type=int, default=10)
    add_common_args(p, 500)
    args = p.parse_args(argv)
    wd = workdir("submission")
    world = World(wd)
    sink = Sink()  # receives nothing (no workers); the level API wants one
    pg = Postgres(wd).start()
    hole = Blackhole()
    message = wd / "submission.eml"
    message.write_bytes(mime_message())
    cert = trustme.CA().issue_cert("mx.bench.test")
    cert.private_key_pem.write_to_path(str(wd / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(wd / "cert.pem"))
    overrides = {**ACCEPT_ONLY, "limits": {"max_sessions_per_ip": 1000},
                 "listeners": {"submission": {
        "enabled": True, "address": "127.0.0.1", "port": free_port(),
        "tls_cert": str(wd / "cert.pem"), "tls_key": str(wd / "key.pem")}}}
    rows = []
    try:
        node = Node(wd, pg.create_database("submission"), world, hole, overrides,
                    workers=node_workers(args.workers))
        ids = node.setup(forward_to=None, sending=True)
        node.postgres_pid = pg.pid()
        node.start()
        job = dict(end_to_end=False, mail_from="noreply@sender.test",
                   rcpt="user@d0.rcpt.test", tls=True, auth=["api_token", ids["token"]])
        port = node.port("submission")
        try:
            smtp_level(node.pids, sink, port, message, 5, 30, args.per_session, **job)
            for c in [int(x) for x in args.concurrency.split(",")]:
                r = smtp_level(node.pids, sink, port, message, c, args.messages,
                               args.per_session, **job)
                rows.append(r)
                print(f"  c={c}: {r['accept_per_s']} msg/s, {r['cpu_ms_per_msg']} CPU ms/msg"
                      f"{', first refusal: ' + r['first_refusal'] if r['first_refusal'] else ''}"
                      f"{', first error: ' + r['first_error'] if r['first_error'] else ''}",
                      flush=True)
            depth = queue_depth(node)
        finally:
            node.stop(hole)
    finally:
        sink.stop()
        world.stop()
        pg.stop()
    print()
    print(table(["c", "accepted", "refused+errors", "msg/s", "p50 ms", "p99 ms", "setup ms",
                 "CPU ms/msg"],
                [[r["concurrency"], r["accepted"], r["refused"] + r["errors"],
                  r["accept_per_s"], r["p50_ms"], r["p99_ms"], r["setup_p50_ms"],
                  r["cpu_ms_per_msg"]] for r in rows]))
    print(f"queue after the run: {depth}\n")
    write_result("submission", {"workers": node.workers, "per_session": args.per_session,
                                "message_bytes": len(message.read_bytes()),
                                "queue_depth": depth, "results": rows})


if __name__ == "__main__":
    main()

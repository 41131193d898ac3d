"""`mta reports tls send`: a dry run shows the report and where it would go; a real run
POSTs it; the same day is not sent twice; a bad date is a usage error."""

from __future__ import annotations

import asyncio
import gzip
import json
from datetime import date

from mta.queue.tlsrpt import SessionCounts
from mta.store.db import Database
from mta.store.tlsrpt import add_session_counts
from tests.reports.test_tlsrpt_send import receiver, validate  # noqa: F401 (fixture)
from tests.test_cli import Cli, write_config

DAY = date(2026, 3, 1)


def test_send_dry_run_then_real_then_refused(tmp_path, db_url, dns_server, receiver):  # noqa: F811
    async def fill() -> None:
        db = Database(db_url)
        counts = SessionCounts()
        from datetime import UTC, datetime

        at = datetime(DAY.year, DAY.month, DAY.day, 12, tzinfo=UTC)
        counts.add("dest.test", "no-policy-found", (), "success", now=at)
        counts.add("dest.test", "no-policy-found", (), "starttls-not-supported",
                   receiving_mx="mx.dest.test", receiving_ip="127.0.0.3", now=at)
        await add_session_counts(db, counts.take().items())
        await db.close()

    asyncio.run(fill())
    dns_server.add_txt("_smtp._tls.dest.test", f"v=TLSRPTv1; rua={receiver.url}")
    cli = Cli(write_config(tmp_path / "mta.yaml", db_url,
                           dns={"nameservers": [dns_server.nameserver]},
                           node={"hostname": "mta.src.test"},
                           tls_reports={"allow_private_targets": True}))

    out, _ = cli("reports", "tls", "send", "--date", DAY.isoformat(), "--dry-run", "--json")
    dry = json.loads(out)
    assert [s["status"] for s in dry["sent"]] == ["dry-run"] and receiver.posts == []
    [report] = dry["reports"]
    validate(report)
    assert report["policies"][0]["summary"] == {"total-successful-session-count": 1,
                                                "total-failure-session-count": 1}

    out, _ = cli("reports", "tls", "send", "--date", DAY.isoformat())
    assert "posted" in out and "dest.test" in out
    assert json.loads(gzip.decompress(receiver.posts[0][2])) == report

    _, err = cli("reports", "tls", "send", "--date", DAY.isoformat(), expect=1)
    assert "were sent already" in err and len(receiver.posts) == 1
    cli("reports", "tls", "send", "--date", "yesterday", expect=2)

"""The reply table: classes agree (RFC 3463 §2), and no other module writes replies."""

from __future__ import annotations

import re
from pathlib import Path

from mta import replies

ROOT = Path(__file__).resolve().parents[2]


def test_enhanced_code_class_matches_basic_code() -> None:
    table = replies.all_replies()
    assert len(table) > 40
    for name, reply in table.items():
        assert 200 <= reply.code < 600, name
        if reply.enhanced is None:
            continue
        cls, subject, detail = reply.enhanced.split(".")
        assert int(cls) == reply.code // 100, name
        assert subject.isdigit() and detail.isdigit(), name
        if reply.code >= 400:
            assert reply.code // 100 in (4, 5), name


def test_every_refusal_has_an_enhanced_code() -> None:
    for name, reply in replies.all_replies().items():
        if reply.code >= 400:
            assert reply.enhanced, name


def test_no_reply_literals_outside_the_table() -> None:
    """Only replies.py spells a reply: no "550 5.1.1"-like string anywhere else in mta/."""
    pattern = re.compile(r"""["'][2-5]\d\d[ -]""")
    offenders = []
    for path in (ROOT / "mta" / "smtp").glob("*.py"):
        if path.name == "replies.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert not offenders, offenders


def test_ehlo_lines() -> None:
    assert replies.ehlo_lines("mx.test", "hi", ["PIPELINING", "SIZE 10"]) == [
        "250-mx.test hi", "250-PIPELINING", "250 SIZE 10"]

"""Organizational domains from the bundled Public Suffix List (RFC 7489 §3.2)."""

from __future__ import annotations

import pytest

from mta.checks.psl import BUNDLED_LIST, PublicSuffixList, configure, organizational_domain


@pytest.mark.parametrize(("name", "org"), [
    ("example.com", "example.com"),
    ("mail.example.com", "example.com"),
    ("a.b.c.example.com", "example.com"),
    ("MAIL.Example.COM.", "example.com"),
    ("example.co.uk", "example.co.uk"),
    ("mail.example.co.uk", "example.co.uk"),
    ("co.uk", "co.uk"),  # a public suffix is its own organizational domain
    ("com", "com"),
    # wildcard *.ck with exception !www.ck
    ("foo.bar.ck", "foo.bar.ck"),
    ("a.foo.bar.ck", "foo.bar.ck"),
    ("www.ck", "www.ck"),
    ("mail.www.ck", "www.ck"),
    # a private-section suffix is a separate organization
    ("alice.github.io", "alice.github.io"),
    ("www.alice.github.io", "alice.github.io"),
    # an unlisted TLD: the implicit "*" rule
    ("mail.example.test", "example.test"),
    # IDN TLD listed in Unicode, queried as A-labels
    ("www.example.xn--p1ai", "example.xn--p1ai"),
    ("www.example.рф", "example.xn--p1ai"),
])
def test_organizational_domain(name: str, org: str) -> None:
    assert organizational_domain(name) == org


def test_bundled_list_is_packaged_and_sizeable() -> None:
    text = BUNDLED_LIST.read_text(encoding="utf-8")
    assert "===BEGIN ICANN DOMAINS===" in text
    assert "===BEGIN PRIVATE DOMAINS===" in text
    assert len(PublicSuffixList.from_text(text).rules) > 5000


def test_override_path(tmp_path) -> None:
    custom = tmp_path / "psl.dat"
    custom.write_text("// tiny list\ncom\nexample.com\n", encoding="utf-8")
    try:
        configure(custom)
        # with this list example.com is itself a public suffix
        assert organizational_domain("a.b.example.com") == "b.example.com"
    finally:
        configure(None)
    assert organizational_domain("a.b.example.com") == "example.com"

"""`mta psl update [SOURCE] | check NAME`: the Public Suffix List DMARC reads
organizational domains from (mta/checks/psl.py), refreshed without a release.

`update` fetches the list (default: the publicsuffix.org copy; or an http(s) URL or a
file), checks that it parses and holds the ICANN section, and replaces the state
directory's copy atomically; nodes read it when they start. `check NAME` prints the
public suffix and organizational domain of NAME and which list said so.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import httpx

from mta.checks import psl
from mta.commands._common import CommandGroup
from mta.commands._errors import CliError
from mta.config import Settings

__all__ = ["register"]

OFFICIAL = "https://publicsuffix.org/list/public_suffix_list.dat"


def _fetch(source: str) -> str:
    if source.startswith(("http://", "https://")):
        try:
            response = httpx.get(source, timeout=30, follow_redirects=True)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise CliError(f"cannot fetch {source}: {exc}; give a file instead") from None
        return response.text
    try:
        return Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {source}: {exc.strerror}") from None


def _cmd_update(args, settings: Settings) -> int:
    text = _fetch(args.source)
    if "===BEGIN ICANN DOMAINS===" not in text:
        raise CliError(f"{args.source} is not a Public Suffix List (no ICANN section)")
    rules = psl.PublicSuffixList.from_text(text)
    if ("com",) not in rules.rules:
        raise CliError(f"{args.source} lacks the rule for com; not replacing the list")
    target = settings.state_path / psl.STATE_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".psl-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    count = len(rules.rules) + len(rules.wildcards) + len(rules.exceptions)
    print(f"{target}: {count} rules from {args.source}; nodes use it from their next start")
    return 0


def _cmd_check(args, settings: Settings) -> int:
    print(f"{args.name}: public suffix {psl.public_suffix(args.name)}, organizational "
          f"domain {psl.organizational_domain(args.name)} (list {psl.current_source()})")
    return 0


def register(sub) -> None:
    ps = CommandGroup(sub, "psl", "the Public Suffix List (DMARC organizational domains)")
    c = ps.add("update", _cmd_update, "fetch a fresh list into the state directory")
    c.add_argument("source", nargs="?", default=OFFICIAL,
                   help=f"URL or file (default {OFFICIAL})")
    c = ps.add("check", _cmd_check, "the organizational domain of a name")
    c.add_argument("name")

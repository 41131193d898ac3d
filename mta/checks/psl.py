"""Organizational domain (RFC 7489 §3.2) from the Public Suffix List.

The list used is the first that exists of: `$MTA_PSL_FILE`; `public_suffix_list.dat` in
the state directory, which `mta psl update` fetches from publicsuffix.org (or a given
URL or file) without a release; the system's copy kept current by the Debian
`publicsuffix` package (/usr/share/publicsuffix); the bundled
`mta/data/public_suffix_list.dat` (Debian's copy of 2023-02-09).

Both the ICANN and the private sections are used, as OpenDMARC and most receivers do:
a private suffix (e.g. a hosting provider's customer zone) is a separate organization.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BUNDLED_LIST", "PublicSuffixList", "STATE_FILE", "SYSTEM_LIST", "configure",
           "current_source", "default_list", "organizational_domain", "public_suffix",
           "use_state_dir"]

BUNDLED_LIST = Path(__file__).resolve().parent.parent / "data" / "public_suffix_list.dat"
SYSTEM_LIST = Path("/usr/share/publicsuffix/public_suffix_list.dat")
STATE_FILE = "public_suffix_list.dat"


def _to_ascii(label: str) -> str:
    if label.isascii():
        return label
    try:
        return label.encode("idna").decode("ascii")
    except UnicodeError:
        return label


@dataclass
class PublicSuffixList:
    rules: set[tuple[str, ...]] = field(default_factory=set)
    wildcards: set[tuple[str, ...]] = field(default_factory=set)  # "*.ck" stored as ("ck",)
    exceptions: set[tuple[str, ...]] = field(default_factory=set)  # "!www.ck"

    @classmethod
    def from_text(cls, text: str) -> PublicSuffixList:
        psl = cls()
        for line in text.splitlines():
            rule = line.strip().split()[0] if line.strip() else ""
            if not rule or rule.startswith("//"):
                continue
            rule = rule.lower().rstrip(".")
            target = psl.rules
            if rule.startswith("!"):
                target, rule = psl.exceptions, rule[1:]
            elif rule.startswith("*."):
                target, rule = psl.wildcards, rule[2:]
            # Store each rule reversed (TLD first); IDN rules also in their A-label form,
            # because names on the wire are A-labels.
            labels = tuple(reversed(rule.split(".")))
            target.add(labels)
            ascii_labels = tuple(_to_ascii(lb) for lb in labels)
            if ascii_labels != labels:
                target.add(ascii_labels)
        return psl

    @classmethod
    def from_file(cls, path: str | Path) -> PublicSuffixList:
        return cls.from_text(Path(path).read_text(encoding="utf-8"))

    def suffix_length(self, labels: tuple[str, ...]) -> int:
        """Number of labels of the public suffix of a reversed label tuple."""
        best = 1  # the implicit "*" rule: an unlisted TLD is a public suffix
        for n in range(1, len(labels) + 1):
            prefix = labels[:n]
            if prefix in self.exceptions:
                # An exception rule wins over everything: its suffix is one label shorter.
                return n - 1
            if prefix in self.rules:
                best = max(best, n)
            if n > 1 and prefix[:-1] in self.wildcards:
                best = max(best, n)
        return best

    def public_suffix(self, name: str) -> str:
        labels = _labels(name)
        if not labels:
            return ""
        n = self.suffix_length(labels)
        return ".".join(reversed(labels[:n]))

    def organizational_domain(self, name: str) -> str:
        """The public suffix plus one label; a name that is itself a public suffix (or
        shorter) is its own organizational domain."""
        labels = _labels(name)
        if not labels:
            return ""
        n = min(self.suffix_length(labels) + 1, len(labels))
        return ".".join(reversed(labels[:n]))


def _labels(name: str) -> tuple[str, ...]:
    name = name.strip().lower().rstrip(".")
    if not name:
        return ()
    return tuple(reversed([_to_ascii(lb) for lb in name.split(".")]))


_lock = threading.Lock()
_default: PublicSuffixList | None = None
_state_dir: Path | None = None
_source: Path | None = None


def use_state_dir(state_dir: str | Path) -> None:
    """Where `mta psl update` keeps its copy (read at the next load)."""
    global _state_dir, _default
    with _lock:
        _state_dir, _default = Path(state_dir), None


def _chosen() -> Path:
    env = os.environ.get("MTA_PSL_FILE")
    if env:
        return Path(env)
    for candidate in ((_state_dir / STATE_FILE) if _state_dir else None, SYSTEM_LIST):
        if candidate is not None and candidate.is_file():
            return candidate
    return BUNDLED_LIST


def configure(path: str | Path | None) -> PublicSuffixList:
    """Load the list from `path` (None: the first of $MTA_PSL_FILE, the state
    directory's copy, the system's, the bundled one) and make it the default for
    `organizational_domain`."""
    global _default, _source
    chosen = Path(path) if path else _chosen()
    psl = PublicSuffixList.from_file(chosen)
    with _lock:
        _default, _source = psl, chosen
    return psl


def current_source() -> Path:
    default_list()
    assert _source is not None
    return _source


def default_list() -> PublicSuffixList:
    psl = _default
    if psl is None:
        psl = configure(None)
    return psl


def organizational_domain(name: str, psl: PublicSuffixList | None = None) -> str:
    """RFC 7489 §3.2: lower-cased, A-label form, without a trailing dot."""
    return (psl or default_list()).organizational_domain(name)


def public_suffix(name: str, psl: PublicSuffixList | None = None) -> str:
    return (psl or default_list()).public_suffix(name)

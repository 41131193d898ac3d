"""Organizational domain (RFC 7489 §3.2) from the Public Suffix List.

The bundled list `mta/data/public_suffix_list.dat` is the Debian `publicsuffix` package's
copy dated 2023-02-09 (20230209.2326). It ages: an operator can point at a fresher file
with the `MTA_PSL_FILE` environment variable or by calling `configure(path)` at start-up.

Both the ICANN and the private sections are used, as OpenDMARC and most receivers do:
a private suffix (e.g. a hosting provider's customer zone) is a separate organization.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BUNDLED_LIST", "PublicSuffixList", "configure", "default_list",
           "organizational_domain", "public_suffix"]

BUNDLED_LIST = Path(__file__).resolve().parent.parent / "data" / "public_suffix_list.dat"


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


def configure(path: str | Path | None) -> PublicSuffixList:
    """Load the list from `path` (None: `MTA_PSL_FILE` or the bundled list) and make it
    the default for `organizational_domain`."""
    global _default
    chosen = Path(path) if path else Path(os.environ.get("MTA_PSL_FILE") or BUNDLED_LIST)
    psl = PublicSuffixList.from_file(chosen)
    with _lock:
        _default = psl
    return psl


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

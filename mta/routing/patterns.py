"""Pattern rules: a recipient matched by a wildcard or a bounded regular expression.

Two kinds, both matched against the whole normalised recipient (lower-case local part,
A-label domain), like a literal rule:

- `wildcard`: `sales-*@example.com`. `*` matches any run of characters but `@` (none
  included), `?` exactly one such character; everything else is literal. The domain part
  is a plain domain name (no wildcard), so a wildcard rule belongs to one domain.
- `regex`: RE2 syntax, matched in full (implicitly anchored at both ends) and
  case-insensitively, e.g. `ticket-[0-9]+@support\\.example\\.com`.

Why RE2 (the `google-re2` wheel) and not Python's `re`: `re` backtracks, so a rule such as
`(a+)+$` would let one RCPT command spin a CPU for minutes. RE2 compiles to automata and
matches in time linear in the address, whatever the pattern, and it refuses the
constructs that need backtracking (back-references, look-around) at compile time. What
is left to bound is the size of the compiled program, and the length of the text:

- MAX_PATTERN_LENGTH characters of pattern text;
- MAX_PROGRAM_SIZE instructions of compiled program (RE2's own measure; `[a-z]{1000}`
  is 6,004, a typical address pattern under 100), and MAX_MEMORY bytes for RE2 to build it.

Both kinds compile to one RE2 program when a `Pattern` is made (as the routing data of a
domain is loaded), and `compiled` keeps programs per pattern text, so reloading the rules
does not recompile them; an RCPT costs one linear-time match per pattern rule it reaches
and never compiles anything.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal

import re2

from mta.routing.address import normalize_domain
from mta.text import is_utf8

__all__ = ["KINDS", "MAX_PATTERN_LENGTH", "MAX_PROGRAM_SIZE", "Pattern", "PatternError",
           "compiled"]

PatternKind = Literal["wildcard", "regex"]
KINDS: tuple[str, ...] = ("wildcard", "regex")

MAX_PATTERN_LENGTH = 256
MAX_PROGRAM_SIZE = 2000
MAX_MEMORY = 1 << 20


class PatternError(ValueError):
    """A pattern refused at creation; `code` is an error code of mta/errors.py."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _options() -> re2.Options:
    options = re2.Options()
    options.case_sensitive = False
    options.never_capture = True  # we only ask "does it match": no submatch bookkeeping
    options.max_mem = MAX_MEMORY
    options.log_errors = False  # RE2 would print refused patterns on stderr
    return options


def _wildcard_regex(value: str) -> str:
    out = []
    for ch in value:
        if ch == "*":
            out.append("[^@]*")
        elif ch == "?":
            out.append("[^@]")
        else:
            out.append(re2.escape(ch))
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def compiled(kind: str, value: str) -> re2._Regexp:
    """The RE2 program of a valid pattern (raises PatternError for an invalid one)."""
    source = _wildcard_regex(value) if kind == "wildcard" else value
    try:
        program = re2.compile(source, _options())
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        if "pattern too large" in str(detail):
            raise PatternError("E_PATTERN_TOO_COMPLEX",
                               f"the pattern compiles to more than {MAX_MEMORY} bytes") from None
        raise PatternError("E_PATTERN_INVALID",
                           f"not a supported regular expression: {detail} (RE2 syntax; "
                           "back-references and look-around are not supported)") from None
    if program.programsize > MAX_PROGRAM_SIZE:
        raise PatternError("E_PATTERN_TOO_COMPLEX",
                           f"the pattern compiles to {program.programsize} instructions; "
                           f"the limit is {MAX_PROGRAM_SIZE} (simplify its repetitions)")
    return program


@dataclass(frozen=True)
class Pattern:
    """A validated pattern of a rule: `kind` wildcard|regex, `value` as stored."""

    kind: str
    value: str
    # The program travels with the rule, so matching never depends on the cache's size.
    program: re2._Regexp = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "program", compiled(self.kind, self.value))

    @classmethod
    def parse(cls, kind: object, value: object) -> Pattern:
        """Validate and normalise a pattern given by a user (API, YAML, CLI)."""
        if kind not in KINDS:
            raise PatternError("E_PATTERN_INVALID", "pattern type must be wildcard or regex")
        if not isinstance(value, str) or not value.strip():
            raise PatternError("E_PATTERN_INVALID", "a pattern needs a value")
        value = value.strip()
        if not is_utf8(value):
            raise PatternError("E_PATTERN_INVALID", "the pattern is not valid Unicode text")
        if len(value) > MAX_PATTERN_LENGTH:
            raise PatternError("E_PATTERN_TOO_LONG",
                               f"the pattern has {len(value)} characters; the limit is "
                               f"{MAX_PATTERN_LENGTH}")
        if kind == "wildcard":
            value = _normal_wildcard(value)
        return cls(str(kind), value)  # compiling refuses what does not fit the bounds

    @property
    def domain(self) -> str | None:
        """The one domain a wildcard applies to; None for a regex (any of the zone's)."""
        return self.value.rpartition("@")[2] if self.kind == "wildcard" else None

    def matches(self, address: str) -> bool:
        """Whether the normalised `address` matches, in time linear in its length."""
        try:
            return self.program.fullmatch(address) is not None
        except UnicodeEncodeError:  # an undecodable byte kept as a surrogate: no match
            return False


def _normal_wildcard(value: str) -> str:
    local, sep, domain = value.rpartition("@")
    if not sep or not local or "@" in local:
        raise PatternError("E_PATTERN_INVALID",
                           "a wildcard is local-part@domain with one @, e.g. sales-*@example.com")
    if "*" in domain or "?" in domain:
        raise PatternError("E_PATTERN_INVALID",
                           "wildcards go in the local part; the domain is written out")
    return f"{local.lower()}@{normalize_domain(domain)}"

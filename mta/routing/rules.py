"""The one rule matcher: which routing rule handles a recipient address.

A pure function over values (no database, no I/O), used by the MX listener at RCPT
time and by the routing pipeline after acceptance, so both always agree.

Semantics (MISSION R4, docs "Email routing rules and addresses"):
- a rule has matchers (`{"type": "literal", "field": "to", "value": addr}` or
  `{"type": "all"}`) or, instead, a pattern (`wildcard` or `regex`, mta/routing/patterns.py),
  actions (`forward` with destination addresses, `worker`, `drop`), `enabled`,
  `priority` (lower first; ties keep the order given) and `name`;
- literal and pattern rules are one list in priority order: the first that matches the
  recipient wins, whichever its kind (a literal rule of higher priority beats a pattern
  that also matches, and the other way round). Each costs one comparison or one
  linear-time match of a program compiled once, so a look-up is O(rules);
- matching is case-insensitive; `.` is an ordinary character (no Gmail-style folding);
- subaddressing (RFC 5233, per domain): with it on, `user+detail@d` falls back to the
  rule for `user@d`; a rule for exactly `user+detail@d` wins. The recipient itself keeps
  its `+detail` (the match reports both). Patterns take part in both steps: a
  pattern that matches `user+detail@d` itself is an exact match;
- the catch-all (a rule with `is_catch_all`, or whose matcher is `all`) applies only when
  no other rule matches, and only when enabled;
- a rule is inactive when disabled, or when it forwards and none of its destinations
  is a verified destination address (and it has no other action).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mta.routing.address import normalize_address, normalize_domain
from mta.routing.patterns import Pattern

__all__ = [
    "Action",
    "Rule",
    "RuleMatch",
    "match_rule",
    "normalize_address",
    "normalize_domain",
    "rule_is_active",
]

MatchKind = Literal["exact", "pattern", "subaddress", "catch_all"]


@dataclass(frozen=True)
class Action:
    type: str  # forward | worker | drop
    value: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    id: str
    name: str = ""
    priority: int = 0
    enabled: bool = True
    matchers: tuple[Mapping[str, Any], ...] = ()
    actions: tuple[Action, ...] = ()
    is_catch_all: bool = False
    zone_id: str | None = field(default=None, compare=False)
    pattern: Pattern | None = None

    @classmethod
    def from_row(cls, row: Any) -> Rule:
        """Build from a `RoutingRule` model (or anything with the same attributes)."""
        return cls(
            id=row.id, name=row.name or "", priority=row.priority, enabled=row.enabled,
            matchers=tuple(dict(m) for m in (row.matchers or ())),
            actions=tuple(Action(str(a.get("type", "")), _values(a.get("value")))
                          for a in (row.actions or ())),
            is_catch_all=row.is_catch_all, zone_id=getattr(row, "zone_id", None),
            pattern=Pattern(row.pattern_type, row.pattern) if getattr(
                row, "pattern_type", None) else None)

    @property
    def catch_all(self) -> bool:
        return self.is_catch_all or any(m.get("type") == "all" for m in self.matchers)

    def literal_targets(self) -> list[str]:
        """The normalised `to` addresses of this rule's literal matchers."""
        return [normalize_address(str(m.get("value", "")))
                for m in self.matchers
                if m.get("type") == "literal" and m.get("field", "to") == "to"]


@dataclass(frozen=True)
class RuleMatch:
    rule: Rule
    address: str  # the recipient as received (normalised), +detail kept
    matched: str  # the address the rule matched: the recipient or its base address
    kind: MatchKind


def _values(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def rule_is_active(rule: Rule, verified: Collection[str]) -> bool:
    """Enabled, and not a rule that only forwards to unverified destinations."""
    if not rule.enabled or not rule.actions:
        return False
    for action in rule.actions:
        if action.type != "forward":
            return True
        if any(normalize_address(dest) in verified for dest in action.value):
            return True
    return False


def _ordered(rules: Iterable[Rule]) -> list[Rule]:
    indexed = list(enumerate(rules))
    indexed.sort(key=lambda pair: (pair[1].priority, pair[0]))
    return [r for _, r in indexed]


def match_rule(rules: Sequence[Rule], address: str, *, subaddressing: bool,
               verified: Collection[str] = frozenset()) -> RuleMatch | None:
    """The rule that handles `address` among one domain's `rules`, or None.

    `verified` holds the normalised verified destination addresses of the account.
    """
    verified_set = {normalize_address(v) for v in verified}
    addr = normalize_address(address)
    active = [r for r in _ordered(rules) if rule_is_active(r, verified_set)]
    literal = [r for r in active if not r.catch_all]

    def first_for(target: str) -> Rule | None:
        for rule in literal:
            if rule.pattern is not None:
                if rule.pattern.matches(target):
                    return rule
                continue
            targets = rule.literal_targets()
            if targets and all(t == target for t in targets):
                return rule
        return None

    rule = first_for(addr)
    if rule is not None:
        return RuleMatch(rule, addr, addr, "exact" if rule.pattern is None else "pattern")
    local, _, domain = addr.rpartition("@")
    if subaddressing and "+" in local:
        base_local = local.split("+", 1)[0]
        if base_local:
            base = f"{base_local}@{domain}"
            rule = first_for(base)
            if rule is not None:
                return RuleMatch(rule, addr, base, "subaddress")
    for rule in active:
        if rule.catch_all:
            return RuleMatch(rule, addr, addr, "catch_all")
    return None

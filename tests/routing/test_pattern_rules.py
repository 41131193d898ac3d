"""Pattern rules in the one rule matcher (mta/routing/rules.py, mta/routing/patterns.py):
their order among literal rules, subaddressing, and the bounds on what is accepted."""

from __future__ import annotations

import time

import pytest

from mta.routing.patterns import MAX_PATTERN_LENGTH, Pattern, PatternError, compiled
from mta.routing.rules import Action, Rule, match_rule

VERIFIED = {"dest@inbox.test"}
DROP = (Action("drop"),)


def lit(rule_id: str, to: str, priority: int = 0, enabled: bool = True) -> Rule:
    return Rule(id=rule_id, name=rule_id, priority=priority, enabled=enabled,
                matchers=({"type": "literal", "field": "to", "value": to},), actions=DROP)


def pat(rule_id: str, kind: str, value: str, priority: int = 0, *,
        dest: str | None = None) -> Rule:
    actions = (Action("forward", (dest,)),) if dest else DROP
    return Rule(id=rule_id, name=rule_id, priority=priority,
                pattern=Pattern.parse(kind, value), actions=actions)


CATCH_ALL = Rule(id="catchall", is_catch_all=True, matchers=({"type": "all"},), actions=DROP)
SALES = pat("sales", "wildcard", "sales-*@example.test", 5)
TICKET = pat("ticket", "regex", r"ticket-[0-9]{1,6}@example\.test", 5)

CASES = [
    # (id, rules, address, subaddressing, expected rule id or None, kind)
    ("wildcard", [SALES], "sales-eu@example.test", True, "sales", "pattern"),
    ("wildcard-empty-run", [SALES], "sales-@example.test", True, "sales", "pattern"),
    ("wildcard-case", [SALES], "SALES-EU@Example.Test", True, "sales", "pattern"),
    ("wildcard-no-prefix-match", [SALES], "presales-eu@example.test", True, None, None),
    ("wildcard-other-domain", [SALES], "sales-eu@other.test", True, None, None),
    ("wildcard-star-not-at", [SALES], "sales-a@b@example.test", True, None, None),
    ("wildcard-question", [pat("q", "wildcard", "team?@example.test")], "team7@example.test",
     True, "q", "pattern"),
    ("wildcard-question-one", [pat("q", "wildcard", "team?@example.test")],
     "team77@example.test", True, None, None),
    ("regex", [TICKET], "ticket-42@example.test", True, "ticket", "pattern"),
    ("regex-anchored-end", [TICKET], "ticket-42@example.test.evil", True, None, None),
    ("regex-anchored-start", [TICKET], "xticket-42@example.test", True, None, None),
    ("regex-case", [TICKET], "Ticket-42@EXAMPLE.test", True, "ticket", "pattern"),
    # order by priority, whichever the kind
    ("literal-higher-priority-wins", [SALES, lit("eu", "sales-eu@example.test", 1)],
     "sales-eu@example.test", True, "eu", "exact"),
    ("pattern-higher-priority-wins", [lit("eu", "sales-eu@example.test", 9), SALES],
     "sales-eu@example.test", True, "sales", "pattern"),
    ("tie-keeps-order-pattern-first", [pat("s0", "wildcard", "sales-*@example.test"),
                                       lit("eu", "sales-eu@example.test")],
     "sales-eu@example.test", True, "s0", "pattern"),
    ("tie-keeps-order-literal-first", [lit("eu", "sales-eu@example.test"),
                                       pat("s0", "wildcard", "sales-*@example.test")],
     "sales-eu@example.test", True, "eu", "exact"),
    ("two-patterns-priority", [SALES, pat("all-s", "regex", "s.*@example.test", 1)],
     "sales-eu@example.test", True, "all-s", "pattern"),
    ("literal-other-address-no-effect", [lit("eu", "sales-eu@example.test", 1), SALES],
     "sales-us@example.test", True, "sales", "pattern"),
    ("pattern-beats-catch-all", [CATCH_ALL, SALES], "sales-x@example.test", True, "sales",
     "pattern"),
    ("no-match-catch-all", [SALES, CATCH_ALL], "info@example.test", True, "catchall",
     "catch_all"),
    # subaddressing: the pattern sees the recipient first, then its base address
    ("subaddress-to-pattern", [pat("t", "regex", r"ticket-[0-9]+@example\.test")],
     "ticket-7+x@example.test", True, "t", "subaddress"),
    ("subaddress-off", [pat("t", "regex", r"ticket-[0-9]+@example\.test")],
     "ticket-7+x@example.test", False, None, None),
    ("pattern-matching-plus-is-exact", [lit("base", "sales-1@example.test", 1), SALES],
     "sales-1+x@example.test", True, "sales", "pattern"),
    # an unverified-only forward leaves a pattern rule inactive, like a literal one
    ("inactive-unverified", [pat("u", "wildcard", "u-*@example.test", dest="no@inbox.test")],
     "u-1@example.test", True, None, None),
    ("active-verified", [pat("v", "wildcard", "v-*@example.test", dest="dest@inbox.test")],
     "v-1@example.test", True, "v", "pattern"),
]


@pytest.mark.parametrize(("rules", "address", "sub", "expected", "kind"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_pattern_rules(rules, address, sub, expected, kind) -> None:
    match = match_rule(rules, address, subaddressing=sub, verified=VERIFIED)
    if expected is None:
        assert match is None
    else:
        assert match is not None
        assert (match.rule.id, match.kind) == (expected, kind)


@pytest.mark.parametrize(("kind", "value", "code"), [
    ("regex", "x" * (MAX_PATTERN_LENGTH + 1), "E_PATTERN_TOO_LONG"),
    ("regex", "[a-z]{1000}@example.test", "E_PATTERN_TOO_COMPLEX"),
    ("regex", r"(a)\1@example.test", "E_PATTERN_INVALID"),  # back-reference
    ("regex", r"(?=a)a@example.test", "E_PATTERN_INVALID"),  # look-ahead
    ("regex", "(unclosed@example.test", "E_PATTERN_INVALID"),
    ("wildcard", "sales-*", "E_PATTERN_INVALID"),  # no domain
    ("wildcard", "*@*.example.test", "E_PATTERN_INVALID"),  # wildcard in the domain
    ("glob", "a*@example.test", "E_PATTERN_INVALID"),
    ("regex", "", "E_PATTERN_INVALID"),
])
def test_refused_patterns(kind, value, code) -> None:
    with pytest.raises(PatternError) as err:
        Pattern.parse(kind, value)
    assert err.value.code == code


def test_backtracking_pattern_is_bounded() -> None:
    """`(a+)+$` takes Python's re exponential time on 'aaaa…!'; RE2 stays linear."""
    rule = pat("evil", "regex", "(a+)+$")
    address = "a" * 60 + "!@example.test"
    started = time.perf_counter()
    for _ in range(100):
        assert match_rule([rule], address, subaddressing=True) is None
    assert time.perf_counter() - started < 0.5


def test_wildcard_stores_the_normal_form() -> None:
    assert Pattern.parse("wildcard", " Sales-*@Piñata.ES ").value == "sales-*@xn--piata-pta.es"


def test_patterns_compile_once_not_per_lookup() -> None:
    """Loading the rules compiles a pattern (once per text); matching never does."""
    value = r"compile-once-[0-9]+@example\.test"
    before = compiled.cache_info().misses
    rules = [Rule(id=f"r{i}", pattern=Pattern("regex", value), actions=DROP)
             for i in range(3)]  # the same rule loaded three times (three TTL reloads)
    assert compiled.cache_info().misses == before + 1
    hits = compiled.cache_info().hits
    for n in range(200):
        assert match_rule(rules, f"compile-once-{n}@example.test", subaddressing=True)
    assert compiled.cache_info().misses == before + 1
    assert compiled.cache_info().hits == hits

"""Table-driven tests of the one rule matcher (mta/routing/rules.py)."""

from __future__ import annotations

import pytest

from mta.routing.rules import Action, Rule, match_rule, normalize_address

VERIFIED = {"dest@inbox.test", "other@inbox.test"}


def lit(rule_id: str, to: str, *, dest: str = "dest@inbox.test", priority: int = 0,
        enabled: bool = True, action: str = "forward") -> Rule:
    actions = (Action(action, (dest,) if action == "forward" else ()),)
    return Rule(id=rule_id, name=rule_id, priority=priority, enabled=enabled,
                matchers=({"type": "literal", "field": "to", "value": to},), actions=actions)


def catch_all(enabled: bool = True, action: str = "drop") -> Rule:
    return Rule(id="catchall", name="catch-all", enabled=enabled, is_catch_all=True,
                matchers=({"type": "all"},), actions=(Action(action, ()),))


USER = lit("user", "user@example.test")
PLUS = lit("plus", "user+news@example.test")
DOTTED = lit("dotted", "first.last@example.test")
UNVERIFIED = lit("unverified", "bob@example.test", dest="nobody@inbox.test")
DISABLED = lit("disabled", "carol@example.test", enabled=False)
WORKER = lit("worker", "hook@example.test", action="worker")
LOW = lit("low", "prio@example.test", priority=10, dest="dest@inbox.test")
HIGH = lit("high", "prio@example.test", priority=1, dest="other@inbox.test")

CASES = [
    # (id, rules, address, subaddressing, expected rule id or None, kind)
    ("exact", [USER], "user@example.test", True, "user", "exact"),
    ("plus-falls-back", [USER], "user+detail@example.test", True, "user", "subaddress"),
    ("plus-multi", [USER], "user+a+b@example.test", True, "user", "subaddress"),
    ("exact-plus-wins", [USER, PLUS], "user+news@example.test", True, "plus", "exact"),
    ("exact-plus-wins-any-order", [PLUS, USER], "user+news@example.test", True, "plus", "exact"),
    ("other-plus-falls-back", [USER, PLUS], "user+other@example.test", True, "user",
     "subaddress"),
    ("subaddressing-off", [USER], "user+detail@example.test", False, None, None),
    ("subaddressing-off-exact-plus", [PLUS], "user+news@example.test", False, "plus", "exact"),
    ("subaddressing-off-catch-all", [USER, catch_all()], "user+x@example.test", False,
     "catchall", "catch_all"),
    ("empty-base", [USER], "+detail@example.test", True, None, None),
    ("catch-all-on", [USER, catch_all()], "nobody@example.test", True, "catchall",
     "catch_all"),
    ("catch-all-off", [USER, catch_all(enabled=False)], "nobody@example.test", True, None,
     None),
    ("catch-all-loses-to-rule", [catch_all(), USER], "user@example.test", True, "user", "exact"),
    ("catch-all-loses-to-subaddress", [catch_all(), USER], "user+x@example.test", True, "user",
     "subaddress"),
    ("disabled-rule", [DISABLED], "carol@example.test", True, None, None),
    ("disabled-rule-catch-all", [DISABLED, catch_all()], "carol@example.test", True,
     "catchall", "catch_all"),
    ("unverified-destination", [UNVERIFIED], "bob@example.test", True, None, None),
    ("unverified-catch-all", [UNVERIFIED, catch_all()], "bob@example.test", True, "catchall",
     "catch_all"),
    ("unverified-catch-all-forward",
     [catch_all(action="forward")], "x@example.test", True, None, None),
    ("worker-needs-no-verification", [WORKER], "hook@example.test", True, "worker", "exact"),
    ("priority", [LOW, HIGH], "prio@example.test", True, "high", "exact"),
    ("priority-tie-keeps-order", [lit("a", "t@example.test"), lit("b", "t@example.test")],
     "t@example.test", True, "a", "exact"),
    ("case-address", [USER], "USER@Example.TEST", True, "user", "exact"),
    ("case-rule", [lit("caps", "MiXeD@EXAMPLE.test")], "mixed@example.test", True, "caps",
     "exact"),
    ("case-plus", [USER], "User+Detail@EXAMPLE.TEST", True, "user", "subaddress"),
    ("dots-literal", [DOTTED], "first.last@example.test", True, "dotted", "exact"),
    ("dots-not-removed", [DOTTED], "firstlast@example.test", True, None, None),
    ("dots-not-added", [lit("nodot", "firstlast@example.test")], "first.last@example.test",
     True, None, None),
    ("other-domain", [USER], "user@other.test", True, None, None),
    ("idna-domain", [lit("idn", "info@piñata.es")], "INFO@xn--piata-pta.es", True, "idn",
     "exact"),
]


@pytest.mark.parametrize(("rules", "address", "sub", "expected", "kind"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_match_rule(rules, address, sub, expected, kind) -> None:
    match = match_rule(rules, address, subaddressing=sub, verified=VERIFIED)
    if expected is None:
        assert match is None
    else:
        assert match is not None
        assert (match.rule.id, match.kind) == (expected, kind)
        # The recipient keeps its +detail; the base address is reported apart.
        assert match.address == normalize_address(address)


def test_verified_forward_to_several_destinations_is_active() -> None:
    rule = Rule(id="multi", matchers=({"type": "literal", "field": "to",
                                       "value": "m@example.test"},),
                actions=(Action("forward", ("nobody@inbox.test", "dest@inbox.test")),))
    assert match_rule([rule], "m@example.test", subaddressing=True, verified=VERIFIED)

"""Rules and the catch-all of one zone, for apply.py's Reconciler.

A rule is identified by its name within the zone, or by `id:` when names cannot say
which one; its matchers and actions go through the admin API's own validation
(mta/api/rules.py), and the shorthand keys (`to`, `forward`, `worker`, `drop`) are
only another spelling of the API's `matchers` / `actions`; `wildcard` and `regex` are the
API's `pattern` ({type: wildcard|regex, value}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from mta.api import rules as api_rules
from mta.config import ConfigError, Settings
from mta.declarative.spec import ActionSpec, CatchAllSpec, RouteActions, RuleSpec
from mta.errors import MtaError
from mta.observe import audit
from mta.store.models import RoutingRule, Zone

__all__ = ["RULE_FIELDS", "RuleReconciler"]

RULE_FIELDS = api_rules.AUDIT_FIELDS


class RuleReconciler:
    """The rule half of the Reconciler (which provides what is declared here)."""

    s: AsyncSession
    settings: Settings
    prune: bool

    # Provided by the Reconciler: errors pointing into the file, and audit + diff.
    err: Callable[[str, str], ConfigError]
    _api: Callable[..., ConfigError]
    record: Callable[..., None]

    def _one_key(self, spec: object, path: str, keys: tuple[str, ...]) -> str:
        """The one of `keys` that `spec` sets; an error naming them unless exactly one is."""
        given = [k for k in keys if getattr(spec, k) is not None]
        if len(given) != 1:
            raise self.err(path, f"give exactly one of {', '.join(keys[:-1])} or {keys[-1]}"
                           + (f" (got {', '.join(given)})" if given else ""))
        return given[0]

    def _raw_actions(self, spec: RouteActions, path: str) -> tuple[list, str | None]:
        """The API form of a rule's actions, and the shorthand key used (for errors)."""
        kind = self._one_key(spec, path, ("forward", "worker", "drop", "actions"))
        if kind == "drop":
            if spec.drop is not True:
                raise self.err(f"{path}.drop", "drop takes true (or leave it out)")
            return [{"type": "drop"}], "drop"
        if kind in ("forward", "worker"):
            return [{"type": kind, "value": getattr(spec, kind)}], kind
        return [_action_dict(a) for a in spec.actions or []], None

    async def _actions(self, zone: Zone, spec: RouteActions, path: str,
                       targets: set[str] | None) -> list[dict]:
        raw, shorthand = self._raw_actions(spec, path)
        try:
            actions = await api_rules.actions(self.s, zone.account_id, raw)
        except MtaError as exc:
            raise self._api(exc, path, {"actions": shorthand} if shorthand else None) from None
        if targets is not None:  # --prune with declared addresses: nothing may dangle
            forwards = [v for a in actions if a["type"] == "forward" for v in a["value"]]
            for v in forwards:
                if v.strip().lower() not in targets:
                    raise self.err(f"{path}.{shorthand or 'actions'}",
                                   f"{v} is not in destination_addresses, so --prune "
                                   "would delete it")
        return actions

    async def _catch_all(self, zone: Zone, spec: CatchAllSpec, path: str,
                         targets: set[str] | None) -> None:
        matchers = api_rules.matchers(zone, [{"type": "all"}], catch_all=True)
        fields = {"matchers": matchers, "enabled": spec.enabled,
                  "actions": await self._actions(zone, spec, path, targets)}
        rule = (await self.s.execute(select(RoutingRule).where(
            RoutingRule.zone_id == zone.id, RoutingRule.is_catch_all.is_(True))
            .with_for_update())).scalar_one_or_none()
        key = f"zone {zone.name} catch-all"
        if rule is None:
            rule = RoutingRule(zone_id=zone.id, name="", is_catch_all=True, **fields)
            self.s.add(rule)
            await self.s.flush()
            self.record("create", "routing_catch_all", key, rule.id, zone.account_id, None,
                        audit.snapshot(rule, RULE_FIELDS))
            return
        await self._update_rule(rule, fields, "routing_catch_all", key, zone)

    async def _update_rule(self, rule: RoutingRule, fields: dict[str, Any], resource: str,
                           key: str, zone: Zone) -> None:
        if all(getattr(rule, k) == v for k, v in fields.items()):
            return
        before = audit.snapshot(rule, RULE_FIELDS)
        for k, v in fields.items():
            setattr(rule, k, v)
        await self.s.flush()
        self.record("update", resource, key, rule.id, zone.account_id, before,
                    audit.snapshot(rule, RULE_FIELDS))

    def _raw_matchers(self, spec: RuleSpec, path: str) -> tuple[list, str | None]:
        self._one_key(spec, path, ("to", "matchers", "wildcard", "regex"))
        if spec.to is not None:
            return [{"type": "literal", "field": "to", "value": spec.to}], "to"
        return [{k: v for k, v in vars(m).items() if v is not None}
                for m in spec.matchers or []], None

    async def _rule_fields(self, zone: Zone, spec: RuleSpec, path: str,
                           targets: set[str] | None) -> dict[str, Any]:
        if len(spec.name) > 256:
            raise self.err(f"{path}.name", "at most 256 characters")
        raw, shorthand = self._raw_matchers(spec, path)
        kind = "wildcard" if spec.wildcard is not None else \
            "regex" if spec.regex is not None else None
        try:
            if kind is not None:
                pattern = api_rules.pattern(zone, {"type": kind, "value": getattr(spec, kind)})
                match: dict[str, Any] = {"matchers": [], "pattern_type": pattern.kind,
                                         "pattern": pattern.value}
            else:
                match = {"matchers": api_rules.matchers(zone, raw, catch_all=False),
                         "pattern_type": None, "pattern": None}
        except MtaError as exc:
            moved = {"matchers": shorthand} if shorthand else {"pattern": kind} if kind else None
            raise self._api(exc, path, moved) from None
        return {"name": spec.name, "priority": spec.priority, "enabled": spec.enabled,
                **match,
                "actions": await self._actions(zone, spec, path, targets)}

    async def _rules(self, zone: Zone, specs: list[RuleSpec], path: str,
                     targets: set[str] | None) -> None:
        rows = list((await self.s.execute(select(RoutingRule).where(
            RoutingRule.zone_id == zone.id, RoutingRule.is_catch_all.is_(False))
            .order_by(RoutingRule.priority, RoutingRule.created_at, RoutingRule.id)
            .with_for_update())).scalars())
        by_id = {r.id: r for r in rows}
        plan: list[tuple[RuleSpec, str, RoutingRule | None]] = []
        taken: set[str] = set()
        for k, spec in enumerate(specs):
            where = f"{path}[{k}]"
            if spec.id is not None:
                row = by_id.get(spec.id)
                if row is None:
                    raise self.err(f"{where}.id", f"zone {zone.name} has no rule {spec.id}")
            else:
                if not spec.name.strip():
                    raise self.err(where, "a rule needs a name (or the id of an unnamed rule)")
                same = [r for r in rows if r.name == spec.name and r.id not in taken]
                if len(same) > 1:
                    raise self.err(f"{where}.name", f"zone {zone.name} has {len(same)} rules "
                                   f"named {spec.name!r}; add id: to say which one")
                row = same[0] if same else None
                if any(s.id is None and s.name == spec.name for s, _, _ in plan):
                    raise self.err(f"{where}.name", f"rule {spec.name!r} is declared twice")
            if row is not None:
                if row.id in taken:
                    raise self.err(where, f"rule {row.id} is declared twice")
                taken.add(row.id)
            plan.append((spec, where, row))
        if self.prune:
            for row in rows:
                if row.id not in taken:
                    self.record("delete", "routing_rule", _rule_key(zone, row), row.id,
                                zone.account_id, audit.snapshot(row, RULE_FIELDS), None)
                    await self.s.delete(row)
            await self.s.flush()
        kept = len(taken) if self.prune else len(rows)
        new = sum(1 for _, _, row in plan if row is None)
        limit = self.settings.limits.rules_per_zone
        if kept + new > limit:
            raise self.err(path, f"zone {zone.name} would have {kept + new} rules; the limit "
                           f"is {limit} (limits.rules_per_zone)")
        for spec, where, row in plan:
            fields = await self._rule_fields(zone, spec, where, targets)
            if row is None:
                # Rules of equal priority are tried oldest first; the transaction's now()
                # would give every rule of this file the same age, and their order would
                # fall to their random ids. clock_timestamp() keeps the file's order.
                row = RoutingRule(zone_id=zone.id, is_catch_all=False,
                                  created_at=func.clock_timestamp(), **fields)
                self.s.add(row)
                await self.s.flush()
                self.record("create", "routing_rule", _rule_key(zone, row), row.id,
                            zone.account_id, None, audit.snapshot(row, RULE_FIELDS))
            else:
                await self._update_rule(row, fields, "routing_rule", _rule_key(zone, row), zone)


def _rule_key(zone: Zone, row: RoutingRule) -> str:
    return f"zone {zone.name} rule {row.name or row.id}"


def _action_dict(a: ActionSpec) -> dict:
    return {"type": a.type, **({"value": a.value} if a.value is not None else {})}

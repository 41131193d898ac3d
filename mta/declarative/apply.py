"""Make the database match a routing document, in one transaction, with a diff.

Resources are matched by identity, never by position: an account by id or name, a
destination address by its lower-cased email, a zone, routing subdomain or sending
domain by its name, a rule by its name within its zone (or by `id:` when the database
holds several rules with one name, or one without a name). Everything declared is
created or updated; with `prune`, what a managed collection does not declare is
deleted. Zones are never deleted: a zone the file does not list is not managed.

Validation and limits are the admin API's own functions (mta/api/*), so a rule the API
refuses is refused here too, with the YAML key and line instead of a JSON field. Every
change writes one audit row (actor `cli:<user>`) and one `Change` for the printed diff,
from the same before/after snapshots. A dry run does all of it, then rolls back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from mta.api import addresses as api_addresses
from mta.api import routing_settings as api_routing
from mta.api import sending_subdomains as api_sending
from mta.config import ConfigError, Settings
from mta.declarative.rules import RuleReconciler
from mta.declarative.spec import Loaded, ZoneSpec
from mta.errors import MtaError
from mta.observe import audit
from mta.routing import destinations
from mta.sending.domains import DomainError, onboard_sending_domain
from mta.store import dkimkeys
from mta.store.accounts import resolve_account
from mta.store.db import Database
from mta.store.dkimkeys import SENDING
from mta.store.models import (
    Account,
    DestinationAddress,
    DkimKey,
    RoutingDomain,
    SendingDomain,
    Zone,
)
from mta.store.zones import zone_domain_count, zone_name

__all__ = ["Change", "apply_document"]

# The audit snapshots of the admin API, so API and YAML rows read alike.
ZONE_FIELDS = api_routing.AUDIT_FIELDS
ADDRESS_FIELDS = destinations.AUDIT_FIELDS
SENDING_FIELDS = (*api_sending.AUDIT_FIELDS, "ed25519")
# Snapshot fields that identify rather than describe: left out of the printed diff.
_QUIET = {"zone_id", "is_catch_all", "account_id"}
_QUIET_FOR = {"routing_catch_all": {"name", "priority"}}  # a catch-all has neither


@dataclass
class Change:
    action: str  # create | update | delete
    resource: str  # the audit resource_type
    key: str  # what a reader recognises: "example.com rule ops"
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # name: (before, after)


class _Sending:
    """A sending domain row plus whether it has an Ed25519 key, for snapshots."""

    def __init__(self, row: SendingDomain, ed25519: bool) -> None:
        self.row, self.ed25519 = row, ed25519

    def __getattr__(self, name: str) -> Any:
        return getattr(self.row, name)


class Reconciler(RuleReconciler):
    def __init__(self, session: AsyncSession, settings: Settings, loaded: Loaded, *,
                 prune: bool, actor: str) -> None:
        self.s, self.settings, self.loaded = session, settings, loaded
        self.prune, self.actor = prune, actor
        self.changes: list[Change] = []

    # --- bookkeeping -----------------------------------------------------------------

    def err(self, path: str, message: str) -> ConfigError:
        return self.loaded.error(path, message)

    def _api(self, exc: MtaError, path: str, fields: dict[str, str] | None = None) -> ConfigError:
        """An admin-API validation error, moved to the YAML key it came from."""
        where = path
        if exc.field:
            head = exc.field.split("[", 1)[0].split(".", 1)[0]
            where = f"{path}.{fields[head]}" if fields and head in fields else \
                f"{path}.{exc.field}"
        return self.err(where, exc.message)

    def record(self, action: str, resource: str, key: str, resource_id: str | None,
               account_id: str | None, before: dict | None, after: dict | None) -> None:
        audit.record(self.s, actor=self.actor, action=action, resource_type=resource,
                     resource_id=resource_id, account_id=account_id, before=before, after=after)
        b, a = before or {}, after or {}
        quiet = _QUIET | _QUIET_FOR.get(resource, set())
        shown = {k: (b.get(k), a.get(k)) for k in {**b, **a}
                 if k not in quiet and b.get(k) != a.get(k)}
        self.changes.append(Change(action, resource, key, shown))

    # --- the document ----------------------------------------------------------------

    async def run(self) -> list[Change]:
        seen: set[str] = set()
        for i, spec in enumerate(self.loaded.doc.accounts):
            path = f"accounts[{i}]"
            account = await resolve_account(self.s, spec.account.strip())
            if account is None:
                raise self.err(f"{path}.account", f"no single account has the id or name "
                               f"{spec.account!r} (mta accounts list)")
            if account.id in seen:
                raise self.err(f"{path}.account", f"account {account.name} is declared twice")
            seen.add(account.id)
            await self._account(account, spec, path)
        return self.changes

    async def _account(self, account: Account, spec, path: str) -> None:
        # The admin API's lock: address creates and limits serialise per account.
        await self.s.execute(select(func.pg_advisory_xact_lock(
            func.hashtext(f"addr:{account.id}"))))
        declared = await self._addresses(account, spec.destination_addresses, path)
        zone_names: set[str] = set()
        for j, zspec in enumerate(spec.zones):
            zpath = f"{path}.zones[{j}]"
            zone = await self._zone(account, zspec, zpath, zone_names)
            await self._subdomains(zone, zspec.subdomains, f"{zpath}.subdomains")
            await self._sending_domains(zone, zspec, f"{zpath}.sending_domains")
            targets = declared if self.prune else None
            if zspec.catch_all is not None:
                await self._catch_all(zone, zspec.catch_all, f"{zpath}.catch_all", targets)
            if zspec.rules is not None:
                await self._rules(zone, zspec.rules, f"{zpath}.rules", targets)
        if self.prune and declared is not None:
            await self._prune_addresses(account, declared)

    # --- destination addresses -------------------------------------------------------

    async def _addresses(self, account: Account, emails: list[str] | None,
                         path: str) -> set[str] | None:
        if emails is None:
            return None
        key = f"{path}.destination_addresses"
        wanted: dict[str, str] = {}
        for k, raw in enumerate(emails):
            try:
                email = api_addresses.normalize_email(raw)
            except MtaError as exc:
                raise self.err(f"{key}[{k}]", exc.message) from None
            if email in wanted:
                raise self.err(f"{key}[{k}]", f"{email} is listed twice")
            wanted[email] = f"{key}[{k}]"
        rows = (await self.s.execute(select(DestinationAddress).where(
            DestinationAddress.account_id == account.id))).scalars().all()
        have = {r.email.lower() for r in rows}
        new = [e for e in wanted if e not in have]
        kept = len(have & wanted.keys()) if self.prune else len(have)
        limit = self.settings.limits.addresses_per_account
        if kept + len(new) > limit:
            raise self.err(key, f"account {account.name} would have {kept + len(new)} "
                           f"destination addresses; the limit is {limit} "
                           "(limits.addresses_per_account)")
        for email in new:
            row = DestinationAddress(account_id=account.id, email=email)
            self.s.add(row)
            await self.s.flush()
            token = destinations.verification_token(self.settings, row.id, email)
            if token:
                row.verification_token_hash = destinations.token_hash(token)
            await self.s.flush()
            await self.s.refresh(row)
            self.record("create", "destination_address", f"{account.name} address {email}",
                        row.id, account.id, None, audit.snapshot(row, ADDRESS_FIELDS))
        return set(wanted)

    async def _prune_addresses(self, account: Account, declared: set[str]) -> None:
        rows = (await self.s.execute(select(DestinationAddress).where(
            DestinationAddress.account_id == account.id)
            .order_by(DestinationAddress.email))).scalars().all()
        for row in rows:
            if row.email.lower() in declared:
                continue
            for rule_id in await destinations.disable_rules_forwarding_to(
                    self.s, account.id, row.email, self.actor):
                # audited by disable_rules_forwarding_to itself
                self.changes.append(Change("update", "routing_rule", f"rule {rule_id}",
                                           {"enabled": (True, False)}))
            self.record("delete", "destination_address", f"{account.name} address {row.email}",
                        row.id, account.id, audit.snapshot(row, ADDRESS_FIELDS), None)
            await self.s.delete(row)
        await self.s.flush()

    # --- zones, routing settings, subdomains ------------------------------------------

    async def _zone(self, account: Account, spec: ZoneSpec, path: str, seen: set[str]) -> Zone:
        name = zone_name(spec.name)
        if name is None:
            raise self.err(f"{path}.name", f"{spec.name!r} is not a domain name")
        if name in seen:
            raise self.err(f"{path}.name", f"zone {name} is declared twice")
        seen.add(name)
        zone = (await self.s.execute(select(Zone).where(Zone.name == name)
                                     .with_for_update())).scalar_one_or_none()
        if zone is not None and zone.account_id != account.id:
            raise self.err(f"{path}.name", f"zone {name} belongs to another account")
        if zone is None:
            zone = Zone(account_id=account.id, name=name, routing_enabled=False,
                        support_subaddress=True, routing_status="unconfigured")
            self.s.add(zone)
            await self.s.flush()
            self.s.add(RoutingDomain(zone_id=zone.id, name=name, enabled=True))
            self._routing(zone, spec)
            await self.s.flush()
            await self.s.refresh(zone)
            self.record("create", "zone", f"zone {name}", zone.id, account.id, None,
                        {**audit.snapshot(zone, ZONE_FIELDS), "account_id": account.id})
            return zone
        before = audit.snapshot(zone, ZONE_FIELDS)
        if self._routing(zone, spec):
            await self._apex(zone)
            await self.s.flush()
            await self.s.refresh(zone)
            self.record("update", "routing_settings", f"zone {name}", zone.id, account.id,
                        before, audit.snapshot(zone, ZONE_FIELDS))
        return zone

    def _routing(self, zone: Zone, spec: ZoneSpec) -> bool:
        """Set routing on/off and subaddressing as declared; whether anything changed."""
        changed = False
        if spec.subaddressing is not None and spec.subaddressing != zone.support_subaddress:
            zone.support_subaddress = spec.subaddressing
            changed = True
        if spec.routing is not None and spec.routing != zone.routing_enabled:
            zone.routing_enabled = spec.routing
            # As POST .../email/routing/enable: records locked; live DNS decides on the
            # next settings read, so this never waits for a resolver inside the transaction.
            zone.routing_status = api_routing.routing_status(True, True, None, zone.routing_status) \
                if spec.routing else "unconfigured"
            changed = True
        return changed

    async def _apex(self, zone: Zone) -> None:
        if not zone.routing_enabled:
            return
        row = (await self.s.execute(select(RoutingDomain).where(
            RoutingDomain.name == zone.name))).scalar_one_or_none()
        if row is None:
            self.s.add(RoutingDomain(zone_id=zone.id, name=zone.name, enabled=True))
        else:
            row.enabled = True

    async def _subdomains(self, zone: Zone, names: list[str] | None, path: str) -> None:
        if names is None:
            return
        wanted: dict[str, str] = {}
        for k, raw in enumerate(names):
            try:
                name = api_routing.domain_name(zone, raw)
            except MtaError as exc:
                raise self.err(f"{path}[{k}]", exc.message) from None
            if name in wanted:
                raise self.err(f"{path}[{k}]", f"{name} is listed twice")
            if name != zone.name:
                wanted[name] = f"{path}[{k}]"
        rows = {r.name: r for r in (await self.s.execute(select(RoutingDomain).where(
            RoutingDomain.zone_id == zone.id, RoutingDomain.name != zone.name))).scalars()}
        if self.prune:
            for name in sorted(rows.keys() - wanted.keys()):
                row = rows[name]
                self.record("delete", "routing_domain", f"zone {zone.name} subdomain {name}",
                            row.id, zone.account_id, {"name": name, "enabled": row.enabled}, None)
                await self.s.delete(row)
            await self.s.flush()
        limit = self.settings.limits.domains_per_zone
        for name, where in wanted.items():
            row = rows.get(name)
            if row is not None:
                if not row.enabled:
                    row.enabled = True
                    self.record("update", "routing_domain", f"zone {zone.name} subdomain {name}",
                                row.id, zone.account_id, {"enabled": False}, {"enabled": True})
                continue
            other = (await self.s.execute(select(RoutingDomain.id).where(
                RoutingDomain.name == name))).first()
            if other:
                raise self.err(where, f"{name} is a routing domain of another zone")
            sending = (await self.s.execute(select(SendingDomain.id).where(
                SendingDomain.name == name, SendingDomain.zone_id == zone.id))).first()
            if not sending and await zone_domain_count(self.s, zone.id) >= limit:
                raise self.err(where, f"zone {zone.name} already has {limit} domains "
                               "(limits.domains_per_zone)")
            row = RoutingDomain(zone_id=zone.id, name=name, enabled=True)
            self.s.add(row)
            await self.s.flush()
            self.record("create", "routing_domain", f"zone {zone.name} subdomain {name}",
                        row.id, zone.account_id, None, {"name": name, "enabled": True})

    # --- sending domains --------------------------------------------------------------

    async def _sending_snapshot(self, row: SendingDomain) -> dict[str, Any]:
        ed = any(k.algorithm == "ed25519" for k in await dkimkeys.published(
            self.s, row.name, SENDING, datetime.now(UTC)))
        return audit.snapshot(_Sending(row, ed), SENDING_FIELDS)

    async def _sending_domains(self, zone: Zone, spec: ZoneSpec, path: str) -> None:
        if spec.sending_domains is None:
            return
        wanted: dict[str, int] = {}
        for k, d in enumerate(spec.sending_domains):
            try:
                name = api_sending.subdomain_name(zone, d.name)
            except MtaError as exc:
                raise self.err(f"{path}[{k}].name", exc.message) from None
            if name in wanted:
                raise self.err(f"{path}[{k}].name", f"{name} is listed twice")
            wanted[name] = k
        rows = {r.name: r for r in (await self.s.execute(select(SendingDomain).where(
            SendingDomain.zone_id == zone.id))).scalars()}
        if self.prune:
            for name in sorted(rows.keys() - wanted.keys()):
                row = rows[name]
                self.record("delete", "sending_subdomain", f"sending domain {name}", row.id,
                            zone.account_id, await self._sending_snapshot(row), None)
                await self.s.execute(delete(DkimKey).where(
                    DkimKey.domain == name, DkimKey.purpose == SENDING))
                await self.s.delete(row)
            await self.s.flush()
        for name, k in wanted.items():
            d = spec.sending_domains[k]
            row = rows.get(name)
            before = await self._sending_snapshot(row) if row is not None else None
            if row is None or (d.ed25519 and not before["ed25519"]):
                try:
                    row = await onboard_sending_domain(self.s, self.settings, name,
                                                       zone_id=zone.id, ed25519=d.ed25519)
                except DomainError as exc:
                    raise self.err(f"{path}[{k}]", str(exc)) from None
                if before is not None:
                    row.enabled = before["enabled"]  # onboarding re-enables; keep the state
            for attr in ("enabled", "drop_suppressed_recipients", "preview_enabled"):
                value = getattr(d, attr)
                if value is not None and getattr(row, attr) != value:
                    setattr(row, attr, value)
            await self.s.flush()
            await self.s.refresh(row)
            after = await self._sending_snapshot(row)
            if before is None:
                self.record("create", "sending_subdomain", f"sending domain {name}", row.id,
                            zone.account_id, None, after)
            elif after != before:
                self.record("update", "sending_subdomain", f"sending domain {name}", row.id,
                            zone.account_id, before, after)


async def apply_document(db: Database, settings: Settings, loaded: Loaded, *, prune: bool,
                         dry_run: bool, actor: str) -> list[Change]:
    """Reconcile in one transaction; committed unless `dry_run` (or an error)."""
    async with db.sessions() as session:
        try:
            changes = await Reconciler(session, settings, loaded, prune=prune,
                                       actor=actor).run()
            await session.flush()
        except BaseException:
            await session.rollback()
            raise
        if dry_run:
            await session.rollback()
        else:
            await session.commit()
    return changes

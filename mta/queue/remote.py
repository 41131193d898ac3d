"""Remote delivery: one message, one destination domain, an outcome for every recipient.

Job: find where mail for a domain goes (MX with implicit-MX fallback, null MX per
RFC 7505, or a configured smart host), connect (IPv6 addresses of a host first, then
IPv4), negotiate TLS (STARTTLS whenever offered; DANE per RFC 7672 where an MX host
publishes DNSSEC-authenticated TLSA records — `dane.py` looks them up and matches them —
and then MTA-STS is not consulted for that host, RFC 8461 §2; the destination's other
hosts get MTA-STS per RFC 8461 when the domain publishes a policy), and run the SMTP transaction (`session.DeliverySession`
over `smtpclient.SmtpClient`: MAIL, RCPT and DATA pipelined when the server offers
PIPELINING). The result is a `RecipientOutcome` per recipient: 2xx delivered, 4xx /
connection trouble / timeouts deferred, 5xx failed. Side effects: network only. This
module never touches the database and never decides about retries or bounces;
`delivery.py` applies the failure policy.

When to try the next MX host or address: the connection could not be made, the greeting
or EHLO was refused, TLS required by DANE or an enforce policy failed (a certificate
that matches no TLSA record included), or the session was lost
(421, disconnect, timeout) before the message body was sent. A recipient refused with
4xx/5xx at RCPT is settled by that server, as is a reply to the end of DATA.

Connections are kept for the next message to the same next hop (`pool.ConnectionPool`,
shared by every caller of one RemoteDelivery: queue workers and in-session forwards): a
connection goes back to the pool only after a clean transaction, with nothing unread;
one that failed is closed. A pooled connection the server closed while it sat idle is
noticed when it is taken (or at the first reply) and replaced without blaming the host.

Settings read (constructor arguments): EHLO name, port (the same for every MX, so tests
can use loopback sinks), connect / command / data timeouts, the TLS context that verifies
certificates under MTA-STS (and for a smart host), whether to use IPv6, an MtaSts
instance, a DanePolicy (mode per destination domain; None = no DANE), a SmartHost, and a
cap on connection attempts per delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from mta.dnscache import DnsError, DnsResolver
from mta.observe import metrics
from mta.queue import dane
from mta.queue.dane import DanePolicy, HostTlsa
from mta.queue.dsnparams import Dsn
from mta.queue.mtasts import MtaSts, Policy
from mta.queue.outcome import RecipientOutcome, Reply
from mta.queue.pool import ConnectionPool
from mta.queue.session import (
    DeliverySession,
    _ConnectError,
    _Connection,
    _Route,
    normalize_line_endings,
)
from mta.queue.smtpclient import SmtpClient, SmtpClientError
from mta.queue.tlsrpt import (
    SUCCESS,
    SessionCounts,
    classify_tls_error,
    sts_policy_strings,
    tlsa_policy_strings,
)

__all__ = ["DeliverySession", "RemoteDelivery", "SmartHost", "normalize_line_endings"]

NULL_MX_REPLY = Reply(556, "5.1.10", "Recipient address has null MX")
NO_ROUTE_REPLY = Reply(550, "5.1.2", "Destination domain has no MX or address records")


@dataclass(frozen=True)
class SmartHost:
    """Relay every message through another MTA instead of the destination's MX."""

    host: str  # a name (resolved through our resolver) or an IP literal
    port: int = 587
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    verify: bool = True  # a relay we hand credentials to must prove who it is


class RemoteDelivery:
    def __init__(self, resolver: DnsResolver, ehlo_name: str, *, port: int = 25,
                 connect_timeout: float = 30.0, command_timeout: float = 300.0,
                 data_timeout: float = 600.0, verify_context: ssl.SSLContext | None = None,
                 ca_bundle: str | None = None, mtasts: MtaSts | None = None,
                 smart_host: SmartHost | None = None, ipv6: bool = True,
                 max_connect_attempts: int = 10, pool: ConnectionPool | None = None,
                 dane: DanePolicy | None = None,
                 tls_counts: SessionCounts | None = None) -> None:
        self._resolver = resolver
        self._ehlo = ehlo_name
        self._port = port
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._data_timeout = data_timeout
        self._verify = verify_context or ssl.create_default_context(cafile=ca_bundle)
        # Opportunistic STARTTLS (RFC 3207 without a policy) encrypts against passive
        # eavesdroppers only; refusing self-signed certificates would just push the
        # mail into clear text, so this context accepts any certificate.
        self._opportunistic = ssl.create_default_context()
        self._opportunistic.check_hostname = False
        self._opportunistic.verify_mode = ssl.CERT_NONE
        self.mtasts = mtasts
        self.dane = dane
        self.smart_host = smart_host
        self._ipv6 = ipv6
        self._max_attempts = max_connect_attempts
        self.pool = pool if pool is not None else ConnectionPool()
        self.connections_opened = 0  # so tests and callers can see reuse
        self.tls_counts = tls_counts  # RFC 8460 session counters (None: not counted)

    async def deliver(self, domain: str, envelope_from: str, recipients: list[str],
                      raw: bytes, *, dsn: Dsn | None = None) -> list[RecipientOutcome]:
        """Deliver one message to `recipients` (all at `domain`); one outcome each.
        `dsn`: the sender's DSN request, passed on when the next hop offers DSN."""
        async with self.open_session(domain) as session:
            return await session.send(envelope_from, recipients, raw, dsn=dsn)

    @contextlib.asynccontextmanager
    async def open_session(self, domain: str) -> AsyncIterator[DeliverySession]:
        """A session to `domain` that sends several messages over one connection."""
        session = DeliverySession(self, await self._route(domain))
        try:
            yield session
        finally:
            session.close()

    def close(self) -> None:
        """Close the idle connections (node shutdown)."""
        self.pool.close()

    def _pool_key(self, host: str, policy: Policy | None, tlsa: HostTlsa | None = None) -> tuple:
        relay = self.smart_host
        # A connection checked against TLSA records serves only while they are the same.
        pinned = tlsa.records if tlsa is not None and tlsa.enforced else ()
        return (host, relay.port if relay else self._port, tuple(self._levels(policy, tlsa)),
                relay.username if relay else None, pinned)

    # -- where to connect ------------------------------------------------------------------

    async def _route(self, domain: str) -> _Route:
        if self.smart_host is not None:
            # The relay decides about MX and MTA-STS for the final destination.
            return _Route(hosts=[self.smart_host.host])
        try:
            domain = domain.rstrip(".").encode("idna").decode("ascii").lower()
        except UnicodeError:
            return _Route([], failure=("failed", Reply(550, "5.1.2", "Bad destination domain"),
                                       f"{domain!r} is not a valid domain name"))
        try:
            mx = await self._resolver.mx(domain)
        except DnsError as exc:
            return _Route([], failure=("deferred", None, f"MX lookup failed: {exc}"))
        if mx is None:
            # RFC 5321 §5.1: the domain itself is the implicit MX, if it has an address.
            try:
                if not await self._addresses(domain):
                    return _Route([], failure=("failed", NO_ROUTE_REPLY,
                                               f"{domain} has no MX and no A/AAAA records"))
            except DnsError as exc:
                return _Route([], failure=("deferred", None, f"address lookup failed: {exc}"))
            hosts = [domain]
        else:
            real = [(pref, host) for pref, host in mx if host not in (".", "")]
            if not real:
                return _Route([], failure=("failed", NULL_MX_REPLY,
                                           f"{domain} publishes a null MX (RFC 7505)"))
            hosts = _order(real)
        route = _Route(hosts=hosts, domain=domain)
        mode = self.dane.mode_for(domain) if self.dane is not None else "off"
        if mode != "off":
            failure = await self._dane_route(route, domain, mode)
            if failure is not None:
                return failure
        # RFC 8461 §2 / RFC 7672: DANE takes precedence *per host*. A host with usable
        # authenticated TLSA records is verified by DANE alone; every other host of the
        # destination stays under MTA-STS, or blocking the DANE host would let an
        # attacker strip TLS on the rest despite an enforce policy.
        by_dane = [h for h in route.hosts
                   if h in route.dane and route.dane[h].state == "dane"]
        others = [h for h in route.hosts if h not in by_dane]
        if not others:
            return route  # every host is DANE's: the policy is not even fetched
        policy = await self.mtasts.policy(domain) if self.mtasts is not None else None
        if policy is None and self.mtasts is not None:
            failure = self.mtasts.fetch_failure(domain)
            if failure is not None:  # a policy announced but not fetched: say so
                self.record_tls(route, "", failure, policy_type="sts")
        if policy is None or policy.mode == "none":
            return route
        route.policy = policy  # `_levels` gives a DANE host "dane" whatever the policy
        allowed = [h for h in others if policy.matches(h)]
        skipped = [h for h in others if h not in allowed]
        if policy.mode == "enforce":
            if not allowed and not by_dane:
                self.record_tls(route, "", "validation-failure")  # no MX the policy names
                return _Route([], policy, failure=(
                    "deferred", None, f"MTA-STS enforce: no MX of {domain} matches the "
                    f"policy ({', '.join(others)} vs {', '.join(policy.mx)})"))
            # RFC 8461 §5: never deliver to an MX outside the policy (DANE hosts aside).
            route.hosts = [h for h in route.hosts if h in by_dane or h in allowed]
        elif skipped:
            route.notes.append(f"MTA-STS testing: MX {', '.join(skipped)} not in policy")
        return route

    async def _dane_route(self, route: _Route, domain: str, mode: str) -> _Route | None:
        """Look up every MX host's TLSA records; drop the hosts DANE forbids now (a failed
        look-up; in required mode any host without usable authenticated records). A
        route that fails when no host is left, else None."""
        # With authenticated MX records the destination domain is a name the server's
        # certificate may carry too (RFC 7672 §3.2.2); with forged ones it must not be.
        try:
            mx, mx_secure = await self._resolver.authenticated(domain, "MX")
        except DnsError:
            mx, mx_secure = None, False
        next_hop = domain if mx is not None and mx_secure else None
        found = await asyncio.gather(*(dane.lookup(self._resolver, h, self._port, self._ipv6,
                                                   next_hop) for h in route.hosts))
        route.dane = {t.host: t for t in found}
        for t in found:
            metrics.DANE_TLSA_LOOKUPS.labels(t.state).inc()
        allowed = [t for t in found if t.state != "error"
                   and (mode != "required" or t.state == "dane")]
        if not allowed:
            why = "; ".join(f"{t.host}: {t.detail}" for t in found)
            # RFC 8460 §4.3.2: required without usable records; a failed look-up of
            # records DNSSEC says exist is the resolver's validation trouble.
            self.record_tls(route, "", "dane-required" if mode == "required"
                            else "dnssec-invalid", policy_type="tlsa")
            if mode == "required":
                metrics.DANE_OUTCOMES.labels("required_unmet").inc()
                detail = (f"DANE required for {domain}, but no MX host has usable "
                          f"DNSSEC-authenticated TLSA records ({why})")
            else:
                metrics.DANE_OUTCOMES.labels("lookup_failed").inc()
                detail = f"DANE: no MX host of {domain} can be used now ({why})"
            return _Route([], failure=("deferred", None, detail))
        skipped = [t for t in found if t not in allowed]
        if skipped:
            route.notes.append("DANE: skipped " + "; ".join(f"{t.host} ({t.detail})"
                                                           for t in skipped))
        route.hosts = [t.host for t in allowed]
        return None

    # -- TLS reporting (RFC 8460) -----------------------------------------------------

    def record_tls(self, route: _Route, host: str, failure: str | None, ip: str = "",
                   local_ip: str = "", policy_type: str | None = None) -> None:
        """Count one session's TLS outcome (failure None: TLS as the policy asked) under
        the policy that applied to `host`. Nothing is counted through a smart host: the
        report is about the destination domain's MX hosts, which the relay reaches."""
        if self.tls_counts is None or route.domain is None:
            return
        tlsa = route.dane.get(host)
        if policy_type == "tlsa" or (tlsa is not None and tlsa.enforced):
            kind, strings = "tlsa", tlsa_policy_strings(tlsa.records if tlsa else ())
        elif route.policy is not None or policy_type == "sts":
            kind = "sts"
            strings = sts_policy_strings(route.policy) if route.policy is not None else ()
        else:
            kind, strings = "no-policy-found", ()
        self.tls_counts.add(route.domain, kind, strings, failure or SUCCESS,
                            sending_ip=local_ip, receiving_mx=host, receiving_ip=ip)

    async def _addresses(self, host: str) -> list[str]:
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        v6 = await self._resolver.addresses(host, "AAAA") if self._ipv6 else []
        return v6 + await self._resolver.addresses(host, "A")

    # -- connecting --------------------------------------------------------------------

    async def _establish(self, host: str, ip: str, policy: Policy | None,
                         notes: list[str], tlsa: HostTlsa | None = None) -> _Connection:
        """A ready session (greeted, EHLO done, TLS as required, AUTH for a smart host)."""
        levels = self._levels(policy, tlsa)
        first_failure = None  # what went wrong at the strongest level, for TLS reporting
        for i, level in enumerate(levels):
            try:
                conn = await self._open(host, ip, level, policy, notes, tlsa)
                conn.key = self._pool_key(host, policy, tlsa)
                self.connections_opened += 1
                if level != "none" and conn.tls_version is None:
                    first_failure = first_failure or "starttls-not-supported"
                conn.tls_failure = first_failure
                return conn
            except _ConnectError as exc:
                first_failure = first_failure or exc.result_type
                if not exc.tls or i == len(levels) - 1:
                    if exc.result_type is not None:
                        exc.result_type = first_failure
                    raise
                # A TLS failure when TLS is not mandatory: reconnect one level weaker,
                # and say so on the outcome.
                notes.append(f"{level} TLS to {host} failed ({exc}), retried weaker")
        raise AssertionError("unreachable")

    def _levels(self, policy: Policy | None, tlsa: HostTlsa | None = None) -> list[str]:
        """TLS levels to try, strongest first."""
        relay = self.smart_host
        if relay is not None:
            return ["none"] if relay.tls == "none" else [
                "verify" if relay.verify else "opportunistic"]
        if tlsa is not None and tlsa.state == "dane":
            return ["dane"]  # RFC 7672 §2.2: TLS, and a chain that matches the TLSA records
        if policy is not None and policy.mode == "enforce":
            return ["verify"]  # RFC 8461 §5.1: never in clear, never unverified
        if tlsa is not None and tlsa.state == "unusable":
            return ["encrypt"]  # RFC 7672 §3.1.3: TLS is still mandatory
        if policy is not None:
            return ["verify", "opportunistic", "none"]
        return ["opportunistic", "none"]

    async def _open(self, host: str, ip: str, level: str, policy: Policy | None,
                    notes: list[str], tlsa: HostTlsa | None = None) -> _Connection:
        relay = self.smart_host
        port = relay.port if relay is not None else self._port
        implicit = relay is not None and relay.tls == "implicit"
        context = self._verify if level == "verify" else self._opportunistic
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (ip, port)),
                                   self._connect_timeout)
        except (OSError, TimeoutError) as exc:
            sock.close()
            raise _ConnectError(f"{host} [{ip}]:{port}: {exc or 'connect timeout'}") from None
        # We connect the socket ourselves (choosing the address) and let TLS check the
        # host *name* (SNI and certificate).
        timeout = self._connect_timeout
        try:
            local_ip = sock.getsockname()[0]
        except OSError:
            local_ip = ""
        try:
            client, greeting = await SmtpClient.connect(
                sock, host, timeout=timeout, tls=context if implicit else None)
        except SmtpClientError as exc:
            raise _ConnectError(f"{host} [{ip}]: {exc}", tls=False) from None
        client.timeout = self._command_timeout
        try:
            if greeting.code != 220:
                raise _ConnectError(f"{host} [{ip}] refused the session: {greeting.code} "
                                    f"{greeting.message}")
            await self._ehlo_or_helo(client, host, ip)
            if not implicit:
                await self._starttls(client, host, level, policy, notes, timeout, tlsa)
            if relay is not None and relay.username:
                if relay.tls != "none" and not client.encrypted:
                    raise _ConnectError(f"smart host {host} without TLS: AUTH refused")
                r = await client.auth(relay.username, relay.password or "")
                if r.code != 235:
                    raise _ConnectError(f"smart host AUTH failed: {r.code} {r.message}")
        except _ConnectError as exc:
            client.close()
            exc.local_ip = local_ip
            raise
        except SmtpClientError as exc:
            client.close()
            raise _ConnectError(f"{host} [{ip}]: {exc}") from None
        return _Connection(client, host, ip, client.tls_version, notes,
                           created=time.monotonic(), local_ip=local_ip)

    async def _ehlo_or_helo(self, client: SmtpClient, host: str, ip: str) -> None:
        r = await client.ehlo(self._ehlo)
        if r.code == 250:
            return
        if r.code != 421:
            r = await client.helo(self._ehlo)  # RFC 5321 §3.2: pre-ESMTP servers
            if r.code == 250:
                return
        raise _ConnectError(f"{host} [{ip}] refused the session: {r.code} {r.message}")

    async def _starttls(self, client: SmtpClient, host: str, level: str,
                        policy: Policy | None, notes: list[str], timeout: float,
                        tlsa: HostTlsa | None = None) -> None:
        enforce = policy is not None and policy.mode == "enforce"
        by_dane = level in ("dane", "encrypt")
        required = (enforce or by_dane
                    or (self.smart_host is not None and self.smart_host.tls == "starttls"))
        if level == "none":
            return
        why = (f"DANE (TLSA records at {tlsa.owner})" if by_dane and tlsa is not None
               else "MTA-STS enforce" if enforce else "the relay")
        if not client.supports("STARTTLS"):
            if by_dane:
                metrics.DANE_OUTCOMES.labels("no_starttls").inc()
            if required:
                raise _ConnectError(f"{host} does not offer STARTTLS, which {why} requires",
                                    result_type="starttls-not-supported")
            if policy is not None:
                notes.append(f"MTA-STS testing: {host} does not offer STARTTLS")
            return
        # DANE checks the chain itself after the handshake, so it takes any certificate.
        context = self._verify if level == "verify" else self._opportunistic
        try:
            r = await client.starttls(context, timeout)
        except SmtpClientError as exc:
            if by_dane:
                metrics.DANE_OUTCOMES.labels("tls_failed").inc()
            # A certificate that fails verification lands here too.
            raise _ConnectError(f"TLS with {host} failed ({why} requires it): {exc}"
                                if by_dane else f"TLS with {host} failed: {exc}",
                                tls=not required,
                                result_type=classify_tls_error(exc.__cause__ or exc)
                                ) from None
        if r.code != 220:
            if by_dane:
                metrics.DANE_OUTCOMES.labels("tls_failed").inc()
            raise _ConnectError(f"STARTTLS refused by {host}: {r.code} {r.message}",
                                tls=not required, result_type="starttls-not-supported")
        if level == "dane" and tlsa is not None:
            verdict = dane.verify(tlsa.records, client.peer_chain, tlsa.names or [host])
            if not verdict.ok:
                metrics.DANE_OUTCOMES.labels("mismatch").inc()
                raise _ConnectError(f"DANE: the certificate of {host} does not match the "
                                    f"TLSA records at {tlsa.owner}: {verdict.reason}",
                                    result_type="tlsa-invalid")
            metrics.DANE_OUTCOMES.labels("verified").inc()
            notes.append(f"DANE: {verdict.reason} of {host}")
        elif level == "encrypt":
            metrics.DANE_OUTCOMES.labels("encrypted").inc()
            notes.append(f"DANE: {tlsa.detail if tlsa else 'no usable TLSA record'}, "
                         f"TLS without authentication")
        r = await client.ehlo(self._ehlo)  # RFC 3207 §4.2: forget what was said before TLS
        if r.code != 250:
            raise _ConnectError(f"{host} refused EHLO after STARTTLS: {r.code} {r.message}")


def _order(mx: list[tuple[int, str]]) -> list[str]:
    """Hosts by preference, equal preferences in random order (RFC 5321 §5.1)."""
    groups: dict[int, list[str]] = {}
    for pref, host in mx:
        groups.setdefault(pref, []).append(host)
    hosts: list[str] = []
    for pref in sorted(groups):
        group = list(dict.fromkeys(groups[pref]))
        random.shuffle(group)
        hosts.extend(h for h in group if h not in hosts)
    return hosts


def remote_delivery_from_settings(settings, resolver, **overrides) -> RemoteDelivery:
    """The node's transport as configured: MX port, EHLO name, MTA-STS and the optional
    smart host. `overrides` go to RemoteDelivery (e.g. a shorter connect timeout for
    in-session forwards)."""
    from mta.queue.mtasts import MtaSts

    relay = settings.delivery.smart_host
    smart_host = None
    if relay.host:
        smart_host = SmartHost(relay.host, relay.port, relay.tls, relay.username,
                               relay.password, relay.verify)
    from mta.queue.tlsrpt import SESSIONS

    kwargs = {"port": settings.delivery.port, "mtasts": MtaSts(resolver),
              "smart_host": smart_host, "dane": dane_policy_from_settings(settings),
              "tls_counts": SESSIONS if settings.tls_reports.enabled else None,
              **overrides}
    return RemoteDelivery(resolver, settings.node.hostname, **kwargs)


def dane_policy_from_settings(settings) -> DanePolicy | None:
    """`delivery.dane` as a DanePolicy; None when DANE is off for every destination."""
    conf = settings.delivery.dane
    default = conf.mode or ("opportunistic" if settings.dns.dnssec == "trust_ad" else "off")
    domains = {}
    for d in conf.destinations:
        name = d.domain.strip().rstrip(".").lower()
        try:
            name = name.encode("idna").decode("ascii")  # routes compare A-labels
        except UnicodeError:
            pass
        domains[name] = d.mode
    if default == "off" and all(m == "off" for m in domains.values()):
        return None
    return DanePolicy(default, domains)

"""Remote delivery: one message, one destination domain, an outcome for every recipient.

Job: find where mail for a domain goes (MX with implicit-MX fallback, null MX per
RFC 7505, or a configured smart host), connect (IPv6 addresses of a host first, then
IPv4), negotiate TLS (STARTTLS whenever offered; MTA-STS per RFC 8461 when the domain
publishes a policy), and run the SMTP transaction with aiosmtplib. The result is a
`RecipientOutcome` per recipient: 2xx delivered, 4xx / connection trouble / timeouts
deferred, 5xx failed. Side effects: network only. This module never touches the database
and never decides about retries or bounces; `delivery.py` applies the failure policy.

When to try the next MX host or address: the connection could not be made, the greeting
or EHLO was refused, TLS required by an enforce policy failed, or the session was lost
(421, disconnect, timeout) before the message body was sent. A recipient refused with
4xx/5xx at RCPT is settled by that server, as is a reply to the end of DATA.

Settings read (constructor arguments): EHLO name, port (the same for every MX, so tests
can use loopback sinks), connect / command / data timeouts, the TLS context that verifies
certificates under MTA-STS (and for a smart host), whether to use IPv6, an MtaSts
instance, a SmartHost, and a cap on connection attempts per delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import re
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

import aiosmtplib

from mta.dnscache import DnsError, DnsResolver
from mta.queue.mtasts import MtaSts, Policy
from mta.queue.outcome import RecipientOutcome, Reply, Result

__all__ = ["DeliverySession", "RemoteDelivery", "SmartHost", "normalize_line_endings"]

_ENHANCED_RE = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")
_LINE_END_RE = re.compile(rb"\r\n|\r|\n")
NULL_MX_REPLY = Reply(556, "5.1.10", "Recipient address has null MX")
NO_ROUTE_REPLY = Reply(550, "5.1.2", "Destination domain has no MX or address records")
# Smuggling-safe and transport-agnostic: SMTP only knows CRLF, and a bare CR or LF that
# a laxer next hop reads as a line end can split one message into two.


def normalize_line_endings(raw: bytes) -> bytes:
    """Every bare CR and bare LF becomes CRLF; the message ends with CRLF."""
    out = _LINE_END_RE.sub(b"\r\n", raw)
    return out if out.endswith(b"\r\n") else out + b"\r\n"


@dataclass(frozen=True)
class SmartHost:
    """Relay every message through another MTA instead of the destination's MX."""

    host: str  # a name (resolved through our resolver) or an IP literal
    port: int = 587
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    verify: bool = True  # a relay we hand credentials to must prove who it is


class _ConnectError(Exception):
    """This host/address is unusable now; try the next one."""

    def __init__(self, detail: str, tls: bool = False) -> None:
        super().__init__(detail)
        self.tls = tls  # a TLS handshake failure: a weaker TLS level may still work


class _Stale(Exception):
    """A reused connection died while idle; reconnect without blaming the host."""


class _SessionLost(Exception):
    """The session broke before the message body was sent: retry elsewhere."""

    def __init__(self, detail: str, settled: dict[str, RecipientOutcome]) -> None:
        super().__init__(detail)
        self.settled = settled


@dataclass
class _Route:
    hosts: list[str]
    policy: Policy | None = None
    notes: list[str] = field(default_factory=list)  # MTA-STS testing findings
    failure: tuple[Result, Reply | None, str] | None = None


@dataclass
class _Connection:
    smtp: aiosmtplib.SMTP
    host: str
    ip: str
    tls_version: str | None
    notes: list[str]
    used: bool = False

    def outcome(self, rcpt: str, result: Result, reply: Reply | None) -> RecipientOutcome:
        return RecipientOutcome(rcpt, result, reply, mx_host=self.host, ip=self.ip,
                                tls_version=self.tls_version,
                                detail="; ".join(self.notes) or None)


def _reply(code: int, message: str) -> Reply:
    """Split an aiosmtplib reply into basic code, enhanced code and one-line text."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()] or [""]
    enhanced = None
    m = _ENHANCED_RE.match(lines[0])
    if m and m.group(1) == str(code)[0]:
        enhanced = f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
    texts = [_ENHANCED_RE.sub("", ln, count=1) if enhanced else ln for ln in lines]
    return Reply(code, enhanced, " ".join(t for t in texts if t))


def _result_for(code: int) -> Result:
    if 200 <= code < 300:
        return "delivered"
    return "failed" if 500 <= code < 600 else "deferred"  # unknown means temporary


class RemoteDelivery:
    def __init__(self, resolver: DnsResolver, ehlo_name: str, *, port: int = 25,
                 connect_timeout: float = 30.0, command_timeout: float = 300.0,
                 data_timeout: float = 600.0, verify_context: ssl.SSLContext | None = None,
                 ca_bundle: str | None = None, mtasts: MtaSts | None = None,
                 smart_host: SmartHost | None = None, ipv6: bool = True,
                 max_connect_attempts: int = 10) -> None:
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
        self.smart_host = smart_host
        self._ipv6 = ipv6
        self._max_attempts = max_connect_attempts

    async def deliver(self, domain: str, envelope_from: str, recipients: list[str],
                      raw: bytes) -> list[RecipientOutcome]:
        """Deliver one message to `recipients` (all at `domain`); one outcome each."""
        async with self.open_session(domain) as session:
            return await session.send(envelope_from, recipients, raw)

    @contextlib.asynccontextmanager
    async def open_session(self, domain: str) -> AsyncIterator[DeliverySession]:
        """A session to `domain` that sends several messages over one connection."""
        session = DeliverySession(self, await self._route(domain))
        try:
            yield session
        finally:
            await session.close()

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
        route = _Route(hosts=hosts)
        policy = await self.mtasts.policy(domain) if self.mtasts is not None else None
        if policy is None or policy.mode == "none":
            return route
        route.policy = policy
        allowed = [h for h in hosts if policy.matches(h)]
        skipped = [h for h in hosts if h not in allowed]
        if policy.mode == "enforce":
            if not allowed:
                return _Route([], policy, failure=(
                    "deferred", None, f"MTA-STS enforce: no MX of {domain} matches the "
                    f"policy ({', '.join(hosts)} vs {', '.join(policy.mx)})"))
            route.hosts = allowed  # RFC 8461 §5: never deliver to an MX outside the policy
        elif skipped:
            route.notes.append(f"MTA-STS testing: MX {', '.join(skipped)} not in policy")
        return route

    async def _addresses(self, host: str) -> list[str]:
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        v6 = await self._resolver.addresses(host, "AAAA") if self._ipv6 else []
        return v6 + await self._resolver.addresses(host, "A")

    # -- connecting --------------------------------------------------------------------

    async def _establish(self, host: str, ip: str, policy: Policy | None,
                       notes: list[str]) -> _Connection:
        """A ready session (greeted, EHLO done, TLS as required, AUTH for a smart host)."""
        relay = self.smart_host
        if relay is not None:
            levels = ["verify" if relay.verify else "opportunistic"]
            if relay.tls == "none":
                levels = ["none"]
        elif policy is not None and policy.mode == "enforce":
            levels = ["verify"]  # RFC 8461 §5.1: never in clear, never unverified
        elif policy is not None:
            levels = ["verify", "opportunistic", "none"]
        else:
            levels = ["opportunistic", "none"]
        for i, level in enumerate(levels):
            try:
                return await self._open(host, ip, level, policy, notes)
            except _ConnectError as exc:
                if not exc.tls or i == len(levels) - 1:
                    raise
                # A TLS failure when TLS is not mandatory: reconnect one level weaker,
                # and say so on the outcome.
                notes.append(f"{level} TLS to {host} failed ({exc}), retried weaker")
        raise AssertionError("unreachable")

    async def _open(self, host: str, ip: str, level: str, policy: Policy | None,
                    notes: list[str]) -> _Connection:
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
        # Handing aiosmtplib a connected socket lets TLS check the host *name* (SNI and
        # certificate) while we choose the address; its own connect would use the IP.
        smtp = aiosmtplib.SMTP(hostname=host, sock=sock, local_hostname=self._ehlo,
                               timeout=self._command_timeout, use_tls=implicit,
                               start_tls=False, tls_context=context)
        try:
            await smtp.connect(timeout=self._connect_timeout)
            await self._ehlo_or_helo(smtp)
            if not implicit:
                await self._starttls(smtp, host, level, policy, notes)
            if relay is not None and relay.username:
                if relay.tls != "none" and smtp.get_transport_info("sslcontext") is None:
                    raise _ConnectError(f"smart host {host} without TLS: AUTH refused")
                try:
                    await _authenticate(smtp, relay.username, relay.password or "")
                except aiosmtplib.SMTPAuthenticationError as exc:
                    raise _ConnectError(
                        f"smart host AUTH failed: {exc.code} {exc.message}") from None
        except _ConnectError:
            smtp.close()
            raise
        except aiosmtplib.SMTPResponseException as exc:
            smtp.close()
            raise _ConnectError(f"{host} [{ip}] refused the session: {exc.code} "
                                f"{exc.message}") from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            smtp.close()
            tls = isinstance(exc, ssl.SSLError) or "ssl" in type(exc).__name__.lower()
            raise _ConnectError(f"{host} [{ip}]: {exc}", tls=tls and not implicit) from None
        ssl_object = smtp.get_transport_info("ssl_object")
        version = ssl_object.version() if ssl_object is not None else None
        return _Connection(smtp, host, ip, version, notes)

    async def _ehlo_or_helo(self, smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.ehlo()
        except aiosmtplib.SMTPHeloError as exc:
            if exc.code == 421:
                raise
            await smtp.helo()  # RFC 5321 §3.2: fall back for pre-ESMTP servers

    async def _starttls(self, smtp: aiosmtplib.SMTP, host: str, level: str,
                        policy: Policy | None, notes: list[str]) -> None:
        enforce = policy is not None and policy.mode == "enforce"
        required = enforce or (self.smart_host is not None and self.smart_host.tls == "starttls")
        if level == "none":
            return
        if not smtp.supports_extension("starttls"):
            if required:
                raise _ConnectError(f"{host} does not offer STARTTLS, which "
                                    f"{'MTA-STS enforce' if enforce else 'the relay'} requires")
            if policy is not None:
                notes.append(f"MTA-STS testing: {host} does not offer STARTTLS")
            return
        try:
            await smtp.starttls(server_hostname=host, timeout=self._connect_timeout)
        except aiosmtplib.SMTPResponseException as exc:
            raise _ConnectError(f"STARTTLS refused by {host}: {exc.code} {exc.message}",
                                tls=not required) from None
        except (ssl.SSLError, OSError, aiosmtplib.SMTPException, TimeoutError) as exc:
            # A certificate that fails verification lands here too.
            raise _ConnectError(f"TLS with {host} failed: {exc}", tls=not required) from None
        await smtp.ehlo()  # RFC 3207 §4.2: forget what the server said before TLS


class DeliverySession:
    """Sends messages to one destination, reusing one connection (RSET between them)."""

    def __init__(self, engine: RemoteDelivery, route: _Route) -> None:
        self._engine = engine
        self._route = route
        self._conn: _Connection | None = None
        self._bad: set[tuple[str, str]] = set()  # (host, ip) that failed in this session
        self.connections = 0  # sessions opened, so callers and tests can see reuse

    async def send(self, envelope_from: str, recipients: list[str],
                   raw: bytes) -> list[RecipientOutcome]:
        unique = list(dict.fromkeys(recipients))
        if self._route.failure is not None:
            result, reply, detail = self._route.failure
            return [RecipientOutcome(r, result, reply, detail=detail) for r in recipients]
        raw = normalize_line_endings(raw)
        settled: dict[str, RecipientOutcome] = {}
        errors: list[str] = []
        pending = unique
        while pending:
            if self._conn is None:
                try:
                    self._conn = await self._connect(errors)
                except _ConnectError:
                    break
            conn = self._conn
            try:
                settled.update(await self._transaction(conn, envelope_from, pending, raw))
                pending = []
            except _Stale:
                await self._drop()
            except _SessionLost as exc:
                settled.update(exc.settled)
                pending = [r for r in pending if r not in settled]
                errors.append(str(exc))
                self._bad.add((conn.host, conn.ip))
                await self._drop()
        if pending:
            # No reply on these: a 5xx greeting from one MX says nothing about the
            # recipient, and the failure policy must not read it as a hard bounce.
            detail = "; ".join(errors[-6:]) or "no MX host could be reached"
            for r in pending:
                settled[r] = RecipientOutcome(r, "deferred", None, detail=detail)
        return [settled[r] for r in recipients]

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await self._conn.smtp.quit(timeout=5)
            await self._drop()

    async def _drop(self) -> None:
        if self._conn is not None:
            self._conn.smtp.close()
            self._conn = None

    async def _connect(self, errors: list[str]) -> _Connection:
        """Try hosts in order and each host's addresses, IPv6 first."""
        engine, route = self._engine, self._route
        attempts = 0
        last: _ConnectError | None = None
        for host in route.hosts:
            try:
                addresses = await engine._addresses(host)
            except DnsError as exc:
                errors.append(f"{host}: address lookup failed: {exc}")
                continue
            if not addresses:
                errors.append(f"{host}: no A/AAAA records")
                continue
            for ip in addresses:
                if (host, ip) in self._bad:
                    continue
                if attempts >= engine._max_attempts:
                    raise last or _ConnectError("connection attempt limit reached")
                attempts += 1
                try:
                    conn = await engine._establish(host, ip, route.policy, list(route.notes))
                except _ConnectError as exc:
                    errors.append(str(exc))
                    self._bad.add((host, ip))
                    last = exc
                    continue
                self.connections += 1
                return conn
        raise last or _ConnectError("no MX host could be reached")

    async def _transaction(self, conn: _Connection, envelope_from: str,
                           recipients: list[str], raw: bytes) -> dict[str, RecipientOutcome]:
        smtp = conn.smtp
        out: dict[str, RecipientOutcome] = {}
        timeout = self._engine._command_timeout
        try:
            if conn.used:
                try:
                    reply = await smtp.execute_command(b"RSET", timeout=timeout)
                except (aiosmtplib.SMTPException, OSError, TimeoutError):
                    raise _Stale() from None
                if reply.code != 250:
                    raise _Stale()
            conn.used = True
            utf8 = not all(a.isascii() for a in [envelope_from, *recipients])
            if utf8 and not smtp.supports_extension("smtputf8"):
                r = Reply(553, "5.6.7", "Non-ASCII address and no SMTPUTF8 at the server")
                return {a: conn.outcome(a, "failed", r) for a in recipients}
            options = [b"SMTPUTF8"] if utf8 else []
            if smtp.supports_extension("size"):
                options.append(b"SIZE=%d" % len(raw))
            if not raw.isascii() and smtp.supports_extension("8bitmime"):
                options.append(b"BODY=8BITMIME")
            enc = "utf-8" if utf8 else "ascii"
            mail = await smtp.execute_command(
                b"MAIL", b"FROM:<" + envelope_from.encode(enc) + b">", *options,
                timeout=timeout)
            if mail.code == 421:
                raise _SessionLost(f"{conn.host}: MAIL: {mail.code} {mail.message}", out)
            if mail.code != 250:
                r = _reply(mail.code, mail.message)
                return {a: conn.outcome(a, _result_for(mail.code), r) for a in recipients}
            accepted: list[str] = []
            for rcpt in recipients:
                resp = await smtp.execute_command(b"RCPT", b"TO:<" + rcpt.encode(enc) + b">",
                                                  timeout=timeout)
                if resp.code == 421:
                    raise _SessionLost(f"{conn.host}: RCPT: {resp.code} {resp.message}",
                                       {a: o for a, o in out.items() if o.result == "failed"})
                if resp.code in (250, 251):
                    accepted.append(rcpt)
                else:
                    out[rcpt] = conn.outcome(rcpt, _result_for(resp.code),
                                             _reply(resp.code, resp.message))
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError,
                OSError, TimeoutError) as exc:
            raise _SessionLost(f"{conn.host} [{conn.ip}]: {exc or type(exc).__name__}",
                               {a: o for a, o in out.items() if o.result == "failed"}) from None
        if not accepted:
            return out
        try:
            resp = await smtp.data(raw, timeout=self._engine._data_timeout)
            code, reply = resp.code, _reply(resp.code, resp.message)
        except aiosmtplib.SMTPDataError as exc:
            code, reply = exc.code, _reply(exc.code, exc.message)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # The body may have reached the server: deferring risks a duplicate, which is
            # better than a loss (delivery is at-least-once).
            await self._drop()
            detail = f"{conn.host} [{conn.ip}] during DATA: {exc or type(exc).__name__}"
            for a in accepted:
                out[a] = RecipientOutcome(a, "deferred", None, conn.host, conn.ip,
                                          conn.tls_version, detail)
            return out
        if not smtp.is_connected:  # e.g. 421 at DATA: the server is gone
            self._conn = None
        for a in accepted:
            out[a] = conn.outcome(a, _result_for(code), reply)
        return out


async def _authenticate(smtp: aiosmtplib.SMTP, username: str, password: str) -> None:
    """One AUTH attempt, PLAIN preferred: aiosmtplib's login() retries every offered
    mechanism with the same wrong password, which can trip a relay's lockout."""
    methods = smtp.server_auth_methods
    if "plain" in methods:
        await smtp.auth_plain(username, password)
    elif "login" in methods:
        await smtp.auth_login(username, password)
    else:
        raise aiosmtplib.SMTPAuthenticationError(
            504, f"no supported AUTH mechanism among {' '.join(methods) or 'none'}")


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
    kwargs = {"port": settings.delivery.port, "mtasts": MtaSts(resolver),
              "smart_host": smart_host, **overrides}
    return RemoteDelivery(resolver, settings.node.hostname, **kwargs)

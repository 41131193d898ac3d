"""One delivery session: messages to one destination over one connection.

Job: run the SMTP transactions of `DeliverySession` (MAIL, RCPT and DATA or BDAT,
pipelined when the server offers PIPELINING; SMTPUTF8 when the message needs it; the
sender's DSN request passed on to a next hop that offers DSN) on a connection taken from
the pool or opened by the `RemoteDelivery` that created the session (`remote.py`: where
mail for a domain goes and how to connect, TLS, DANE, MTA-STS), move on to the next
host or address when the session is lost before the body was sent, and turn every
server reply into a `RecipientOutcome`. Side effects: network only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from mta.dnscache import DnsError
from mta.observe import metrics
from mta.queue.dane import HostTlsa
from mta.queue.dsnparams import Dsn, mail_params, rcpt_params
from mta.queue.intl import NO_SMTPUTF8_REPLY, needs_smtputf8
from mta.queue.mtasts import Policy
from mta.queue.outcome import RecipientOutcome, Reply, Result
from mta.queue.smtpclient import ClientReply, SmtpClient, SmtpClientError

__all__ = ["DeliverySession", "normalize_line_endings"]

_ENHANCED_RE = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")
_LINE_END_RE = re.compile(rb"\r\n|\r|\n")
# Smuggling-safe and transport-agnostic: SMTP only knows CRLF, and a bare CR or LF that
# a laxer next hop reads as a line end can split one message into two.


def normalize_line_endings(raw: bytes) -> bytes:
    """Every bare CR and bare LF becomes CRLF; the message ends with CRLF."""
    crlf = raw.count(b"\r\n")
    bare = raw.count(b"\r") != crlf or raw.count(b"\n") != crlf
    out = _LINE_END_RE.sub(b"\r\n", raw) if bare else raw  # usually nothing to rewrite
    return out if out.endswith(b"\r\n") else out + b"\r\n"


class _ConnectError(Exception):
    """This host/address is unusable now; try the next one."""

    def __init__(self, detail: str, tls: bool = False, result_type: str | None = None) -> None:
        super().__init__(detail)
        self.tls = tls  # a TLS handshake failure: a weaker TLS level may still work
        self.result_type = result_type  # RFC 8460 failure type, when TLS was the trouble
        self.local_ip = ""  # our end of the connection, when one was made


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
    dane: dict[str, HostTlsa] = field(default_factory=dict)  # per MX host, when DANE is on
    domain: str | None = None  # the destination domain (None through a smart host)


@dataclass(eq=False)  # pooled by identity
class _Connection:
    client: SmtpClient
    host: str
    ip: str
    tls_version: str | None
    notes: list[str]  # how TLS went (fallbacks, MTA-STS testing findings)
    key: tuple = ()
    created: float = 0.0
    uses: int = 0  # transactions started on it
    dirty: bool = False  # a transaction may be open: RSET before the next MAIL
    local_ip: str = ""  # our end, the TLS report's sending-mta-ip
    tls_failure: str | None = None  # RFC 8460 type when TLS fell short (weaker, or none)

    def outcome(self, rcpt: str, result: Result, reply: Reply | None,
                route_notes: list[str] = ()) -> RecipientOutcome:
        notes = list(dict.fromkeys([*route_notes, *self.notes]))
        return RecipientOutcome(rcpt, result, reply, mx_host=self.host, ip=self.ip,
                                tls_version=self.tls_version,
                                detail="; ".join(notes) or None)


def _reply(code: int, message: str) -> Reply:
    """Split a server reply into basic code, enhanced code and one-line text."""
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


class DeliverySession:
    """Sends messages to one destination over one connection, taken from the pool (or
    opened) for the first message and given back to the pool at `close()`."""

    def __init__(self, engine, route: _Route) -> None:
        # `engine` is the remote.RemoteDelivery that opened the session (its pool, its
        # resolver, how it connects); not imported here, because remote imports this.
        self._engine = engine
        self._route = route
        self._conn: _Connection | None = None
        self._bad: set[tuple[str, str]] = set()  # (host, ip) that failed in this session
        self.connections = 0  # sessions opened, so callers and tests can see reuse

    async def send(self, envelope_from: str, recipients: list[str],
                   raw: bytes, *, dsn: Dsn | None = None) -> list[RecipientOutcome]:
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
                self._conn = self._from_pool()
            if self._conn is None:
                try:
                    self._conn = await self._connect(errors)
                except _ConnectError:
                    break
            conn = self._conn
            try:
                settled.update(await self._transaction(conn, envelope_from, pending, raw,
                                                       dsn))
                pending = []
            except _Stale:
                self._drop()
            except _SessionLost as exc:
                settled.update(exc.settled)
                pending = [r for r in pending if r not in settled]
                errors.append(str(exc))
                self._bad.add((conn.host, conn.ip))
                self._drop()
        if pending:
            # No reply on these: a 5xx greeting from one MX says nothing about the
            # recipient, and the failure policy must not read it as a hard bounce.
            detail = "; ".join(errors[-6:]) or "no MX host could be reached"
            for r in pending:
                settled[r] = RecipientOutcome(r, "deferred", None, detail=detail)
        return [settled[r] for r in recipients]

    def close(self) -> None:
        """Hand the connection back for the next message to this next hop."""
        if self._conn is not None:
            self._engine.pool.give(self._conn.key, self._conn)
            self._conn = None

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.client.close()
            self._conn = None

    def _from_pool(self) -> _Connection | None:
        """An idle connection to the most preferred host that has one."""
        engine, route = self._engine, self._route
        for host in route.hosts:
            conn = engine.pool.take(engine._pool_key(host, route.policy, route.dane.get(host)))
            if conn is not None:
                if (conn.host, conn.ip) in self._bad:
                    conn.client.close()
                    continue
                metrics.OUTBOUND_CONNECTIONS.labels("reused").inc()
                return conn
        return None

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
                    conn = await engine._establish(host, ip, route.policy, [],
                                                   route.dane.get(host))
                except _ConnectError as exc:
                    if exc.result_type is not None:
                        engine.record_tls(route, host, exc.result_type, ip, exc.local_ip)
                    errors.append(str(exc))
                    self._bad.add((host, ip))
                    last = exc
                    continue
                engine.record_tls(route, host, conn.tls_failure, ip, conn.local_ip)
                self.connections += 1
                metrics.OUTBOUND_CONNECTIONS.labels("new").inc()
                return conn
        raise last or _ConnectError("no MX host could be reached")

    async def _transaction(self, conn: _Connection, envelope_from: str,
                           recipients: list[str], raw: bytes,
                           dsn: Dsn | None = None) -> dict[str, RecipientOutcome]:
        """One mail transaction. With PIPELINING, RSET (when the previous transaction was
        left open), MAIL, every RCPT and DATA go out in one write and their replies
        are read in order; without it, one command at a time, stopping early. A server
        offering CHUNKING gets the message in BDAT chunks (after the RCPT replies, so
        a refused transaction costs no body) instead of DATA."""
        client = conn.client
        notes = self._route.notes
        out: dict[str, RecipientOutcome] = {}

        # RFC 3461 §5.2.1: a next hop that offers DSN gets the sender's request and,
        # on success, its responsibility (§5.2.2 otherwise: see dsnparams.success_dsn_due).
        passed = dsn is not None and client.supports("DSN")

        def outcome(rcpt: str, result: Result, reply: Reply | None) -> RecipientOutcome:
            return replace(conn.outcome(rcpt, result, reply, notes), dsn_passed=passed)

        utf8 = needs_smtputf8(envelope_from, recipients, raw)
        if utf8 and not client.supports("SMTPUTF8"):
            return {a: outcome(a, "failed", NO_SMTPUTF8_REPLY) for a in recipients}
        options = [b"SMTPUTF8"] if utf8 else []
        if client.supports("SIZE"):
            options.append(b"SIZE=%d" % len(raw))
        if not raw.isascii() and client.supports("8BITMIME"):
            options.append(b"BODY=8BITMIME")
        enc = "utf-8" if utf8 else "ascii"
        if passed:
            options += mail_params(dsn)
        mail = b" ".join([b"MAIL FROM:<" + envelope_from.encode(enc) + b">", *options])
        rcpts = [b" ".join([b"RCPT TO:<" + r.encode(enc) + b">",
                            *(rcpt_params(dsn, r) if passed else [])]) for r in recipients]
        reused = conn.uses > 0
        rset = conn.dirty
        conn.uses += 1
        conn.dirty = True  # until the end of DATA says otherwise
        pipelined = client.supports("PIPELINING")
        chunking = client.supports("CHUNKING")
        timeout = self._engine._command_timeout
        try:
            if pipelined:
                client.send(([b"RSET"] if rset else []) + [mail, *rcpts]
                            + ([] if chunking else [b"DATA"]))

            async def ask(command: bytes) -> ClientReply:
                if not pipelined:
                    client.send([command])
                return await client.reply(timeout)

            if rset or reused:
                # The first reply on a reused connection tells whether it still lives.
                try:
                    first = await ask(b"RSET" if rset else mail)
                except SmtpClientError:
                    raise _Stale() from None
                if first.code == 421 or (rset and first.code != 250):
                    raise _Stale()
                mail_reply = await ask(mail) if rset else first
            else:
                mail_reply = await ask(mail)
            if mail_reply.code == 421:
                raise _SessionLost(f"{conn.host}: MAIL: {mail_reply}", out)
            if mail_reply.code != 250:
                r = _reply(mail_reply.code, mail_reply.message)
                if pipelined:  # the RCPTs and DATA were refused too; read them off
                    for _ in range(len(rcpts) + (0 if chunking else 1)):
                        if (await client.reply(timeout)).code == 354:
                            raise _SessionLost(f"{conn.host}: DATA accepted without MAIL",
                                               out)
                return {a: outcome(a, _result_for(mail_reply.code), r) for a in recipients}
            accepted: list[str] = []
            for rcpt, command in zip(recipients, rcpts, strict=True):
                resp = await ask(command)
                if resp.code == 421:
                    raise _SessionLost(f"{conn.host}: RCPT: {resp}",
                                       {a: o for a, o in out.items() if o.result == "failed"})
                if resp.code in (250, 251):
                    accepted.append(rcpt)
                else:
                    out[rcpt] = outcome(rcpt, _result_for(resp.code),
                                        _reply(resp.code, resp.message))
            if not accepted and (chunking or not pipelined):
                return out  # the transaction stays open: RSET next time
            data = None if chunking else await ask(b"DATA")
            if not accepted:
                if data is not None and data.code == 354:  # DATA without recipients
                    self._drop()
                return out
        except (SmtpClientError, OSError) as exc:
            raise _SessionLost(f"{conn.host} [{conn.ip}]: {exc or type(exc).__name__}",
                               {a: o for a, o in out.items() if o.result == "failed"}) from None
        if data is not None and data.code != 354:
            if data.code == 421:
                self._drop()
            reply = _reply(data.code, data.message)
            for a in accepted:
                out[a] = outcome(a, _result_for(data.code), reply)
            return out
        try:
            if chunking:
                final = await client.send_chunked(raw, self._engine._data_timeout,
                                                  pipelined=pipelined)
            else:
                final = await client.send_body(raw, self._engine._data_timeout)
        except (SmtpClientError, OSError) as exc:
            # The body may have reached the server: deferring risks a duplicate, which is
            # better than a loss (delivery is at-least-once).
            self._drop()
            detail = f"{conn.host} [{conn.ip}] during DATA: {exc or type(exc).__name__}"
            for a in accepted:
                out[a] = RecipientOutcome(a, "deferred", None, conn.host, conn.ip,
                                          conn.tls_version, detail)
            return out
        # The reply to the end of DATA or to BDAT LAST ends the transaction; after a
        # refused earlier chunk it may still be open.
        conn.dirty = chunking and final.code != 250
        if final.code == 421:  # the server is going away
            self._drop()
        reply = _reply(final.code, final.message)
        for a in accepted:
            out[a] = outcome(a, _result_for(final.code), reply)
        return out

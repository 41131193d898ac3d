"""SPF (RFC 7208) evaluated asynchronously over the product's DnsResolver.

Our own evaluator rather than pyspf: pyspf resolves synchronously (it would stall every
other SMTP session on the event loop) and it turns one broken PTR name into temperror
for the whole check, where RFC 7208 §5.5 says to skip that name. The check reports a
value; deciding what to answer over SMTP is the caller's business.

Errors travel as two private exceptions so that any depth of include/redirect can stop
the whole evaluation at once.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import time
import urllib.parse
from dataclasses import dataclass

from mta.dnscache import DnsPermError, DnsResolver, DnsTempError

__all__ = ["SPF_RESULTS", "SpfResult", "check_spf"]

SPF_RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")

# RFC 7208 §4.6.4 processing limits.
MAX_DNS_TERMS = 10
MAX_VOID_LOOKUPS = 2
MAX_MX_NAMES = 10
MAX_PTR_NAMES = 10

_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_LOOKUP_MECHANISMS = frozenset({"include", "a", "mx", "ptr", "exists"})
_MECHANISMS = _LOOKUP_MECHANISMS | {"all", "ip4", "ip6"}

_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9_.\-]*)=(.*)\Z", re.S)
_MECHANISM = re.compile(r"([+\-~?]?)([A-Za-z][A-Za-z0-9]*)(.*)\Z", re.S)
_CIDR_NUM = r"(0|[1-9][0-9]*)"
_DUAL_CIDR = re.compile(r"(.*?)(?:/" + _CIDR_NUM + r")?(?://" + _CIDR_NUM + r")?\Z", re.S)
_SINGLE_CIDR = re.compile(r"(.*?)(?:/" + _CIDR_NUM + r")?\Z", re.S)
_QNUM = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_IP4 = re.compile(r"\.".join([_QNUM] * 4) + r"\Z")
_IP6_CHARS = re.compile(r"[0-9A-Fa-f:.]+\Z")
# domain-end = "." toplabel ["."], toplabel has a letter or is dash-joined alphanumerics.
_DOMAIN_END = re.compile(
    r"\.(?:[0-9A-Za-z]*[A-Za-z][0-9A-Za-z]*|[0-9A-Za-z]+-[0-9A-Za-z\-]*[0-9A-Za-z])\.?\Z")
_MACRO = re.compile(r"%\{([A-Za-z])([0-9]*)([Rr]?)([.\-+,/_=]*)\}")
_DOMAIN_MACROS = frozenset("slodiphv")
_EXP_MACROS = _DOMAIN_MACROS | frozenset("crt")


class _PermError(Exception):
    """permerror: a syntax error, a processing limit, a missing include/redirect target."""


class _TempError(Exception):
    """temperror: SERVFAIL or timeout of a lookup the result depends on."""


@dataclass(frozen=True)
class SpfResult:
    result: str  # one of SPF_RESULTS
    identity: str  # "mailfrom", or "helo" for the null sender
    domain: str  # the domain whose policy was checked
    sender: str  # the <sender> of check_host(): the MAIL FROM or postmaster@<helo>
    explanation: str | None = None  # the domain's exp= text, only with "fail"
    reason: str = ""  # short diagnostic: the matching term or the error


# -- parsing ---------------------------------------------------------------------------

# A macro-string as tokens: literal text, or (letter, digits, reverse, delimiters).
_Token = str | tuple[str, int, bool, str]


def _parse_macro_string(text: str, *, explanation: bool = False) -> list[_Token]:
    """Tokenise per RFC 7208 §7.1; any malformed '%' is a syntax error (permerror)."""
    return _tokenise(text, explanation)[0]


def _tokenise(text: str, explanation: bool) -> tuple[list[_Token], bool]:
    """(tokens, whether the string ends with a macro-expand, escapes included)."""
    allowed = _EXP_MACROS if explanation else _DOMAIN_MACROS
    tokens: list[_Token] = []
    pos = 0
    literal: list[str] = []
    ends_with_macro = False
    while pos < len(text):
        ch = text[pos]
        ends_with_macro = ch == "%"
        if ch == "%":
            nxt = text[pos + 1:pos + 2]
            if nxt in ("%", "_", "-"):
                literal.append({"%": "%", "_": " ", "-": "%20"}[nxt])
                pos += 2
                continue
            m = _MACRO.match(text, pos)
            if m is None:
                raise _PermError(f"invalid macro at {text[pos:pos + 8]!r}")
            letter, digits, reverse, delims = m.groups()
            if letter.lower() not in allowed:
                raise _PermError(f"macro letter {letter!r} not allowed here")
            if digits and int(digits) == 0:
                raise _PermError("macro digit transformer must be nonzero")
            if literal:
                tokens.append("".join(literal))
                literal = []
            tokens.append((letter, int(digits or 0), bool(reverse), delims or "."))
            pos = m.end()
            continue
        # macro-literal is visible ASCII; explanations may also hold spaces.
        if not ("\x21" <= ch <= "\x7e" or (explanation and ch == " ")):
            raise _PermError(f"invalid character {ch!r}")
        literal.append(ch)
        pos += 1
    if literal:
        tokens.append("".join(literal))
    return tokens, ends_with_macro


def _parse_domain_spec(text: str) -> list[_Token]:
    tokens, ends_with_macro = _tokenise(text, False)
    if not tokens:
        raise _PermError("empty domain-spec")
    # Checked before expansion (RFC 7208 §7.1): must end in a macro or "." toplabel;
    # the %%/%_/%- escapes count as macro-expand in the ABNF.
    if not ends_with_macro and not _DOMAIN_END.search(text):
        raise _PermError(f"domain-spec {text!r} does not end in a valid top label")
    return tokens


@dataclass(frozen=True)
class _Directive:
    text: str
    qualifier: str
    mechanism: str
    domain: list[_Token] | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    cidr4: int = 32
    cidr6: int = 128


@dataclass(frozen=True)
class _Record:
    directives: list[_Directive]
    redirect: list[_Token] | None
    exp: list[_Token] | None


def _is_spf_record(text: str) -> bool:
    return text[:6].lower() == "v=spf1" and (len(text) == 6 or text[6] == " ")


@functools.lru_cache(maxsize=1024)  # the same popular records come back all day
def _parse_record(text: str) -> _Record:
    """The whole record is parsed before anything is evaluated: RFC 7208 §4.6 wants a
    syntax error anywhere to give permerror even behind a matching term."""
    directives: list[_Directive] = []
    redirect: list[_Token] | None = None
    exp: list[_Token] | None = None
    for term in text[6:].split(" "):
        if not term:
            continue  # terms are separated by one or more spaces
        if any(not "\x21" <= ch <= "\x7e" for ch in term):
            raise _PermError(f"invalid character in term {term!r}")
        mod = _MODIFIER.match(term)
        if mod:
            name, value = mod.group(1).lower(), mod.group(2)
            if (name == "redirect" and redirect) or (name == "exp" and exp):
                raise _PermError(f"{name}= appears more than once")
            if name == "redirect":
                redirect = _parse_domain_spec(value)
            elif name == "exp":
                exp = _parse_domain_spec(value)
            else:
                _parse_macro_string(value)  # unknown modifiers are ignored but must parse
            continue
        directives.append(_parse_directive(term))
    return _Record(directives, redirect, exp)


def _parse_directive(term: str) -> _Directive:
    m = _MECHANISM.match(term)
    if m is None:
        raise _PermError(f"unknown term {term!r}")
    qualifier, name, rest = m.group(1) or "+", m.group(2).lower(), m.group(3)
    if name not in _MECHANISMS or (rest and rest[0] not in ":/"):
        raise _PermError(f"unknown mechanism {term!r}")
    if name == "all":
        if rest:
            raise _PermError(f"'all' takes no argument: {term!r}")
        return _Directive(term, qualifier, name)
    if name in ("ip4", "ip6"):
        return _parse_ip_directive(term, qualifier, name, rest)
    cidr4, cidr6 = 32, 128
    if name in ("a", "mx"):
        cm = _DUAL_CIDR.match(rest)
        assert cm is not None  # the pattern matches any string
        rest, c4, c6 = cm.groups()
        cidr4, cidr6 = int(c4 or 32), int(c6 or 128)
        if cidr4 > 32 or cidr6 > 128:
            raise _PermError(f"invalid CIDR length in {term!r}")
    if not rest:
        if name in ("include", "exists"):
            raise _PermError(f"{name} needs a domain: {term!r}")
        return _Directive(term, qualifier, name, None, None, cidr4, cidr6)
    if rest[0] != ":":
        raise _PermError(f"malformed mechanism {term!r}")
    return _Directive(term, qualifier, name, _parse_domain_spec(rest[1:]), None, cidr4, cidr6)


def _parse_ip_directive(term: str, qualifier: str, name: str, rest: str) -> _Directive:
    cm = _SINGLE_CIDR.match(rest)
    assert cm is not None
    addr, prefix = cm.group(1), cm.group(2)
    if not addr.startswith(":"):
        raise _PermError(f"{name} needs an address: {term!r}")
    addr = addr[1:]
    try:
        if name == "ip4":
            if not _IP4.match(addr) or (prefix is not None and int(prefix) > 32):
                raise ValueError(addr)
            net: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.IPv4Network(
                f"{addr}/{prefix or 32}", strict=False)
        else:
            if not _IP6_CHARS.match(addr) or (prefix is not None and int(prefix) > 128):
                raise ValueError(addr)
            net = ipaddress.IPv6Network(f"{addr}/{prefix or 128}", strict=False)
    except ValueError:
        raise _PermError(f"invalid {name} network {term!r}") from None
    return _Directive(term, qualifier, name, network=net)


# -- domain names ----------------------------------------------------------------------

def _normalise_domain(name: str) -> str | None:
    """The domain as an SPF identity, or None when malformed (RFC 7208 §4.3 → none)."""
    name = name[:-1] if name.endswith(".") else name
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or name.startswith("[") or labels[-1].isdigit():
        return None  # too long, not multi-label, or an address rather than a domain
    if any(not 0 < len(lb) <= 63 or not lb.isprintable() or " " in lb for lb in labels):
        return None
    return name.lower()


def _query_name(name: str) -> str | None:
    """A macro-expanded target made fit to query, or None if it can never exist."""
    name = name[:-1] if name.endswith(".") else name
    if not name.isascii():
        return None  # e.g. an SMTPUTF8 local-part through %{l}: no such DNS name
    # RFC 7208 §7.3: drop labels from the left until the name fits in 253 characters.
    while len(name) > 253 and "." in name:
        name = name.split(".", 1)[1]
    labels = name.split(".")
    if not name or len(name) > 253 or any(not 0 < len(lb) <= 63 for lb in labels):
        return None
    return name


def _in_domain(name: str, domain: str) -> bool:
    name, domain = name.lower().rstrip("."), domain.lower().rstrip(".")
    return name == domain or name.endswith("." + domain)


# -- evaluation ------------------------------------------------------------------------

class _Evaluation:
    """State shared by every level of include/redirect of one check_host() run."""

    def __init__(self, resolver: DnsResolver, ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
                 sender: str, helo: str, receiver: str) -> None:
        self.resolver = resolver
        self.ip = ip
        self.sender = sender
        self.local, _, self.sender_domain = sender.rpartition("@")
        self.helo = helo
        self.receiver = receiver
        self.address_type = "A" if ip.version == 4 else "AAAA"
        self.dns_terms = 0
        self.void_lookups = 0

    def count_term(self, what: str) -> None:
        self.dns_terms += 1
        if self.dns_terms > MAX_DNS_TERMS:
            raise _PermError(f"more than {MAX_DNS_TERMS} DNS-querying terms ({what})")

    def _void(self, counted: bool) -> None:
        if counted:
            self.void_lookups += 1
            if self.void_lookups > MAX_VOID_LOOKUPS:
                raise _PermError(f"more than {MAX_VOID_LOOKUPS} void lookups")

    async def lookup(self, name: str | None, rdtype: str, *, void: bool = True) -> list:
        """Records of `name`; an empty answer or NXDOMAIN counts as a void lookup."""
        if name is None:
            self._void(void)
            return []
        try:
            if rdtype == "TXT":
                found: list = await self.resolver.txt(name)
            elif rdtype == "MX":
                found = [host for _, host in await self.resolver.mx(name) or []]
            else:
                found = await self.resolver.addresses(name, rdtype)
        except DnsTempError:
            raise _TempError(f"temporary DNS error looking up {name}/{rdtype}") from None
        except DnsPermError:
            found = []
        if not found:
            self._void(void)
        return found

    async def ptr_names(self) -> list[str]:
        try:
            names = await self.resolver.ptr(str(self.ip))
        except (DnsTempError, DnsPermError):
            return []  # RFC 7208 §5.5: a PTR lookup error means no match, not an error
        return names[:MAX_PTR_NAMES]

    async def validated(self, names: list[str]) -> list[str]:
        """Names whose forward lookup gives back <ip>; a name whose lookup fails is
        skipped (RFC 7208 §5.5), never an error for the whole check."""
        async def check(name: str) -> bool:
            try:
                addrs = await self.resolver.addresses(name, self.address_type)
            except (DnsTempError, DnsPermError):
                return False
            return any(ipaddress.ip_address(a) == self.ip for a in addrs)
        oks = await asyncio.gather(*(check(n) for n in names))
        return [n for n, ok in zip(names, oks, strict=True) if ok]

    async def validated_name(self, domain: str) -> str:
        """The %{p} macro: a validated PTR name, preferring one inside <domain>."""
        names = await self.validated(await self.ptr_names())
        for name in names:
            if _in_domain(name, domain):
                return name
        return names[0] if names else "unknown"

    async def expand(self, tokens: list[_Token], domain: str) -> str:
        out: list[str] = []
        for tok in tokens:
            if isinstance(tok, str):
                out.append(tok)
                continue
            letter, digits, reverse, delims = tok
            value = await self._macro_value(letter.lower(), domain)
            parts = re.split("[" + re.escape(delims) + "]", value)
            if reverse:
                parts.reverse()
            if digits:
                parts = parts[-digits:]
            text = ".".join(parts)
            if letter.isupper():
                text = urllib.parse.quote(text, safe="")  # leaves RFC 3986 unreserved
            out.append(text)
        return "".join(out)

    async def _macro_value(self, letter: str, domain: str) -> str:
        ip = self.ip
        if letter == "i":
            if ip.version == 4:
                return str(ip)
            return ".".join(ip.exploded.replace(":", "").upper())
        values = {"s": self.sender, "l": self.local, "o": self.sender_domain, "d": domain,
                  "h": self.helo, "c": str(ip), "r": self.receiver,
                  "v": "in-addr" if ip.version == 4 else "ip6"}
        if letter in values:
            return values[letter]
        if letter == "t":
            return str(int(time.time()))
        return await self.validated_name(domain)  # "p", the only letter left

    async def target(self, tokens: list[_Token] | None, domain: str) -> str | None:
        if tokens is None:
            return domain
        return _query_name(await self.expand(tokens, domain))

    # -- check_host() --------------------------------------------------------------

    async def check_host(self, domain: str, *, top: bool, want_exp: bool
                         ) -> tuple[str, str | None, str]:
        """(result, explanation, reason) for `domain`; raises _PermError/_TempError."""
        records = [t for t in await self.lookup(domain, "TXT", void=not top)
                   if _is_spf_record(t)]
        if not records:
            return "none", None, f"no SPF record at {domain}"
        if len(records) > 1:
            raise _PermError(f"{len(records)} SPF records at {domain}")
        record = _parse_record(records[0])
        for d in record.directives:
            if d.mechanism in _LOOKUP_MECHANISMS:
                self.count_term(d.text)
            if await self._matches(d, domain):
                result = _QUALIFIERS[d.qualifier]
                exp = None
                if result == "fail" and want_exp and record.exp is not None:
                    exp = await self._explanation(record.exp, domain)
                return result, exp, f"{d.text} matched at {domain}"
        if record.redirect is None:
            return "neutral", None, f"no term matched at {domain}"
        self.count_term("redirect")
        target = await self.target(record.redirect, domain)
        if target is None:
            raise _PermError(f"redirect from {domain} to an invalid name")
        # The target's exp= replaces ours (RFC 7208 §6.2), so it is passed want_exp.
        result, exp, reason = await self.check_host(target, top=False, want_exp=want_exp)
        if result == "none":
            raise _PermError(f"redirect target {target} has no SPF record")
        return result, exp, reason

    async def _matches(self, d: _Directive, domain: str) -> bool:
        kind = d.mechanism
        if kind == "all":
            return True
        if kind in ("ip4", "ip6"):
            assert d.network is not None
            return self.ip.version == d.network.version and self.ip in d.network
        target = await self.target(d.domain, domain)
        if kind == "include":
            if target is None:
                raise _PermError(f"include of an invalid name: {d.text}")
            result, _, reason = await self.check_host(target, top=False, want_exp=False)
            if result in ("none", "permerror"):
                raise _PermError(f"include:{target} has no usable SPF record ({reason})")
            return result == "pass"
        if kind == "exists":
            return bool(await self.lookup(target, "A"))  # always A, whatever <ip> is
        if kind == "a":
            return self._in_any(await self.lookup(target, self.address_type), d)
        if kind == "mx":
            hosts = await self.lookup(target, "MX")
            hosts = [h for h in hosts if h not in ("", ".")]  # a null MX names no host
            if len(hosts) > MAX_MX_NAMES:
                raise _PermError(f"more than {MAX_MX_NAMES} MX names for {target}")
            answers = await asyncio.gather(
                *(self.lookup(h, self.address_type, void=False) for h in hosts),
                return_exceptions=True)
            for answer in answers:
                if isinstance(answer, BaseException):
                    raise answer
            return any(self._in_any(a, d) for a in answers)  # type: ignore[arg-type]
        # ptr: only names inside the target domain can match, so only those are validated.
        if target is None:
            return False
        names = [n for n in await self.ptr_names() if _in_domain(n, target)]
        return bool(await self.validated(names))

    def _in_any(self, addresses: list[str], d: _Directive) -> bool:
        prefix = d.cidr4 if self.ip.version == 4 else d.cidr6
        for addr in addresses:
            net = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
            if net.version == self.ip.version and self.ip in net:
                return True
        return False

    async def _explanation(self, spec: list[_Token], domain: str) -> str | None:
        """exp= text; any trouble fetching or expanding it means no explanation
        (RFC 7208 §6.2), never a different result."""
        try:
            name = _query_name(await self.expand(spec, domain))
            if name is None:
                return None
            texts = await self.resolver.txt(name)
            if len(texts) != 1 or not texts[0].isascii():
                return None
            tokens = _parse_macro_string(texts[0], explanation=True)
            return await self.expand(tokens, domain)
        except (_PermError, DnsTempError, DnsPermError):
            return None


async def check_spf(resolver: DnsResolver, ip: str, mail_from: str, helo: str, *,
                    receiver: str = "unknown", timeout: float = 20.0) -> SpfResult:
    """Evaluate SPF for MAIL FROM (or, for the null sender, postmaster@<helo>).

    `receiver` is the %{r} macro (our host name); `timeout` bounds the whole check,
    RFC 7208 §4.6.4 allowing an overall limit: running out is temperror.
    """
    mail_from = mail_from.strip().strip("<>")
    if mail_from:
        identity = "mailfrom"
        local, at, raw_domain = mail_from.rpartition("@")
        if not at:
            local, raw_domain = "", mail_from
    else:
        identity, local, raw_domain = "helo", "", helo
    # RFC 7208 §4.3: a sender without a local-part is treated as postmaster.
    local = local or "postmaster"
    domain = _normalise_domain(raw_domain)
    sender = f"{local}@{domain or raw_domain}"

    def done(result: str, explanation: str | None = None, reason: str = "") -> SpfResult:
        return SpfResult(result, identity, domain or raw_domain, sender, explanation, reason)

    try:
        addr = ipaddress.ip_address(ip.strip().strip("[]"))
    except ValueError:
        return done("permerror", reason=f"invalid client address {ip!r}")
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # an IPv4 client seen through an IPv6 socket (§5)
    if domain is None:
        return done("none", reason=f"malformed domain {raw_domain!r}")

    evaluation = _Evaluation(resolver, addr, sender, helo, receiver)
    try:
        async with asyncio.timeout(timeout):
            result, explanation, reason = await evaluation.check_host(
                domain, top=True, want_exp=True)
    except _PermError as exc:
        return done("permerror", reason=str(exc))
    except (_TempError, TimeoutError) as exc:
        return done("temperror", reason=str(exc) or "SPF evaluation timed out")
    return done(result, explanation, reason)

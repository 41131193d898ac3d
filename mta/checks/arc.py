"""ARC chain validation (RFC 8617 §5.2).

dkimpy's `ARC.verify` does the signature work; around it we add what it gets wrong or
cannot know:
- the newest ARC-Seal saying cv=fail makes the chain `fail` (dkimpy returns no result);
- keys are fetched beforehand through our `DnsResolver` and handed to dkimpy through its
  `dnsfunc`, so a SERVFAIL/timeout on a key that decides the outcome gives `temperror`
  rather than a `fail` that policy could turn into a 5xx;
- the latest instance's ARC-Authentication-Results is parsed, so policy can ask whether a
  trusted sealer recorded a pass.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from mta.canon import relaxed_headers
from mta.checks.dkim import parse_header_section
from mta.cpuwork import run_cpu
from mta.dnscache import DnsError, DnsResolver, DnsTempError

__all__ = ["ArcResult", "ArcSet", "AuthResultsHeader", "MethodResult", "strip_comments",
           "parse_authentication_results", "verify_arc"]

MAX_INSTANCES = 50  # RFC 8617 §4.2.1
_ARC_NAMES = (b"arc-seal", b"arc-message-signature", b"arc-authentication-results")
_quiet = logging.getLogger("mta.checks.arc.dkimpy")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


# -- Authentication-Results parsing (RFC 8601 §2.2), shared with results.py -------------

@dataclass
class MethodResult:
    method: str
    result: str
    reason: str = ""
    props: dict[str, str] = field(default_factory=dict)  # "smtp.mailfrom" -> value


@dataclass
class AuthResultsHeader:
    authserv_id: str
    results: list[MethodResult] = field(default_factory=list)

    def result_of(self, method: str) -> str | None:
        """The first result recorded for `method` ("dmarc", "dkim", "spf", "arc")."""
        for r in self.results:
            if r.method == method.lower():
                return r.result
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"authserv_id": self.authserv_id,
                "results": [{"method": r.method, "result": r.result, "reason": r.reason,
                             "props": dict(r.props)} for r in self.results]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuthResultsHeader:
        return cls(data["authserv_id"], [MethodResult(r["method"], r["result"],
                                                      r.get("reason", ""),
                                                      dict(r.get("props", {})))
                                         for r in data.get("results", [])])


def strip_comments(text: str) -> str:
    out: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    for ch in text:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(ch)
            continue
        if ch == "\\":
            escaped = True
            if depth == 0:
                out.append(ch)
            continue
        if quoted:
            out.append(ch)
            if ch == '"':
                quoted = False
            continue
        if ch == "(":
            depth += 1
            continue
        if ch == ")" and depth:
            depth -= 1
            out.append(" ")
            continue
        if depth == 0:
            if ch == '"':
                quoted = True
            out.append(ch)
    return "".join(out)


def _split_semicolons(text: str) -> list[str]:
    parts, cur, quoted, escaped = [], [], False, False
    for ch in text:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            cur.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            cur.append(ch)
        elif ch == ";" and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


_PAIR = re.compile(r'([A-Za-z0-9_.-]+(?:/[0-9]+)?)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s";]+)')


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_authentication_results(value: str) -> AuthResultsHeader | None:
    """Parse an Authentication-Results value (or an ARC-Authentication-Results value
    without its leading "i=N;"). None when there is no authserv-id."""
    parts = _split_semicolons(strip_comments(value.replace("\r", " ").replace("\n", " ")))
    head = parts[0].split()
    if not head:
        return None
    header = AuthResultsHeader(head[0].strip().lower())
    for part in parts[1:]:
        pairs = _PAIR.findall(part)
        if not pairs:
            continue  # "none", or junk we cannot read
        method, result = pairs[0]
        entry = MethodResult(method.split("/")[0].lower(), _unquote(result).lower())
        for key, val in pairs[1:]:
            if key.lower() == "reason":
                entry.reason = _unquote(val)
            elif "." in key:
                entry.props.setdefault(key.lower(), _unquote(val))
        header.results.append(entry)
    return header


# -- chain validation -------------------------------------------------------------------

@dataclass
class ArcSet:
    instance: int
    seal_domain: str  # ARC-Seal d=: the sealer of this hop
    seal_selector: str
    ams_domain: str
    cv: str  # the cv= the sealer wrote

    def to_dict(self) -> dict[str, Any]:
        return {"instance": self.instance, "seal_domain": self.seal_domain,
                "seal_selector": self.seal_selector, "ams_domain": self.ams_domain,
                "cv": self.cv}


@dataclass
class ArcResult:
    cv: str  # none | pass | fail | temperror (a key lookup failed: neither pass nor fail)
    instances: int = 0
    sets: list[ArcSet] = field(default_factory=list)  # by instance, oldest first
    oldest_pass: int | None = None  # RFC 8617 arc.oldest-pass; 0 = every AMS verified
    aar: AuthResultsHeader | None = None  # latest instance's ARC-Authentication-Results
    reason: str = ""

    @property
    def sealing_domains(self) -> list[str]:
        return [s.seal_domain for s in self.sets]

    @property
    def latest_sealer(self) -> str | None:
        return self.sets[-1].seal_domain if self.sets else None

    def trusted_pass(self, trusted_sealers: set[str] | frozenset[str],
                     method: str = "dmarc") -> bool:
        """The chain validates, its newest sealer is trusted and recorded `method`=pass."""
        return (self.cv == "pass" and self.latest_sealer is not None
                and self.latest_sealer.lower() in {s.lower() for s in trusted_sealers}
                and self.aar is not None and self.aar.result_of(method) == "pass")

    def to_dict(self) -> dict[str, Any]:
        return {"cv": self.cv, "instances": self.instances,
                "sets": [s.to_dict() for s in self.sets], "oldest_pass": self.oldest_pass,
                "aar": self.aar.to_dict() if self.aar else None, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArcResult:
        return cls(data["cv"], data.get("instances", 0),
                   [ArcSet(**s) for s in data.get("sets", [])], data.get("oldest_pass"),
                   AuthResultsHeader.from_dict(data["aar"]) if data.get("aar") else None,
                   data.get("reason", ""))


@dataclass
class _Header:
    instance: int
    name: bytes
    value: bytes
    tags: dict[bytes, bytes]


def _arc_headers(raw: bytes) -> list[_Header]:
    headers, _ = parse_header_section(raw)
    found = []
    for name, value in relaxed_headers([(n.rstrip(), v) for n, v in headers]):
        lname = name.lower()
        if lname not in _ARC_NAMES:
            continue
        m = dkim.ARC.INSTANCE_RE.search(value)
        if m is None:
            continue
        tags: dict[bytes, bytes] = {}
        if lname != b"arc-authentication-results":
            try:
                tags = parse_tag_value(value)
            except InvalidTagValueList:
                tags = {}
        found.append(_Header(int(m.group(1)), lname, value, tags))
    return found


def _key_name(tags: dict[bytes, bytes]) -> str | None:
    s, d = tags.get(b"s"), tags.get(b"d")
    if not s or not d:
        return None
    name = f"{s.decode('utf-8', 'replace').strip()}._domainkey." \
           f"{d.decode('utf-8', 'replace').strip()}"
    return name.lower().rstrip(".")


def _describe(headers: list[_Header]) -> tuple[list[ArcSet], AuthResultsHeader | None]:
    by_instance: dict[int, dict[bytes, _Header]] = {}
    for h in headers:
        by_instance.setdefault(h.instance, {}).setdefault(h.name, h)
    sets = []
    for i in sorted(by_instance):
        seal = by_instance[i].get(b"arc-seal")
        ams = by_instance[i].get(b"arc-message-signature")

        def tag(h: _Header | None, t: bytes) -> str:
            return h.tags.get(t, b"").decode("utf-8", "replace").strip().lower() if h else ""
        sets.append(ArcSet(i, tag(seal, b"d"), tag(seal, b"s"), tag(ams, b"d"), tag(seal, b"cv")))
    aar = None
    if by_instance:
        latest = by_instance[max(by_instance)].get(b"arc-authentication-results")
        if latest is not None:
            text = latest.value.decode("utf-8", "replace")
            aar = parse_authentication_results(re.sub(r"^\s*i\s*=\s*\d+\s*;", "", text))
    return sets, aar


_AMS_FIELD = re.compile(rb"^(ARC-Message-Signature[ \t]*:)(.*(?:\r?\n[ \t].*)*)",
                        re.IGNORECASE | re.MULTILINE)


def _tabs_to_spaces(match: re.Match[bytes]) -> bytes:
    """dkimpy finds an AMS's own header by looking for b" i=N;" in its raw text, and
    crashes when a tab precedes i=. Under relaxed header canonicalisation (which every
    ARC-Seal uses, and most AMS) a tab and a space hash the same, so those AMS fields are
    handed to dkimpy with spaces."""
    value = match.group(2)
    try:
        c_value = parse_tag_value(value).get(b"c", b"relaxed")
    except InvalidTagValueList:
        return match.group(0)
    if not c_value.strip().lower().startswith(b"relaxed"):
        return match.group(0)
    return match.group(1) + value.replace(b"\t", b" ")


def _dkimpy_verify(raw: bytes, keys: dict[str, str | None]) -> tuple[bytes | None, list, str]:
    def dnsfunc(name: bytes | str, timeout: float = 5) -> str | None:
        text = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        return keys.get(text.lower().rstrip("."))

    end = _header_end(raw)
    message = _AMS_FIELD.sub(_tabs_to_spaces, raw[:end]) + raw[end:]
    try:
        return dkim.ARC(message, logger=_quiet).verify(dnsfunc=dnsfunc)
    except dkim.DKIMException as exc:
        return dkim.CV_Fail, [], str(exc)
    except (IndexError, KeyError, ValueError, TypeError) as exc:
        # dkimpy trips over some hostile or unusual ARC sets; that is not a valid chain.
        return dkim.CV_Fail, [], f"unverifiable ARC set: {exc!r}"


def _oldest_pass(data: list[dict]) -> int | None:
    """Walking from the newest AMS down, the lowest instance before the first failure;
    0 when every AMS verified (RFC 8617 §5.2 step 5)."""
    ordered = sorted(data, key=lambda r: -r["instance"])
    if not ordered or not ordered[0].get("ams-valid"):
        return None
    oldest = ordered[0]["instance"]
    for r in ordered[1:]:
        if not r.get("ams-valid"):
            return oldest
        oldest = r["instance"]
    return 0 if oldest == 1 else oldest


async def verify_arc(resolver: DnsResolver, raw: bytes) -> ArcResult:
    if b"arc-" not in raw[: _header_end(raw)].lower():
        return ArcResult("none", reason="message is not ARC signed")
    headers = await run_cpu(len(raw), _arc_headers, raw)
    if not headers:
        return ArcResult("none", reason="message is not ARC signed")
    sets, aar = _describe(headers)
    newest = max(h.instance for h in headers)
    result = ArcResult("fail", newest, sets, None, aar)
    if newest > MAX_INSTANCES:
        result.reason = f"more than {MAX_INSTANCES} ARC sets"
        return result
    newest_seal = next((h for h in headers if h.instance == newest and h.name == b"arc-seal"),
                       None)
    if newest_seal is not None and newest_seal.tags.get(b"cv", b"").strip().lower() == b"fail":
        # RFC 8617 §5.2 step 2: a sealer already judged the chain broken.
        result.reason = f"ARC-Seal i={newest} says cv=fail"
        return result

    names = {n for h in headers if h.name != b"arc-authentication-results"
             if (n := _key_name(h.tags)) is not None}
    keys: dict[str, str | None] = {}
    temp_failed: set[str] = set()

    async def fetch(name: str) -> None:
        try:
            records = await resolver.txt(name)
        except DnsTempError:
            temp_failed.add(name)
            records = []
        except DnsError:
            records = []
        keys[name] = records[0] if records else None

    await asyncio.gather(*(fetch(n) for n in names))
    cv, data, reason = await run_cpu(len(raw), _dkimpy_verify, raw, keys)
    result.oldest_pass = _oldest_pass(data)
    if cv is None:  # dkimpy: an older seal says cv=fail; RFC 8617 makes that fail too
        cv = dkim.CV_Fail
    result.cv = cv.decode()
    result.reason = reason
    if result.cv == "pass":
        return result
    result.oldest_pass = None
    # Keys that decide the outcome: every ARC-Seal and the newest AMS.
    deciding = {n for h in headers
                if h.name == b"arc-seal" or (h.name == b"arc-message-signature"
                                             and h.instance == newest)
                if (n := _key_name(h.tags)) is not None}
    if result.cv == "fail" and deciding & temp_failed:
        result.cv = "temperror"
        result.reason = "key lookup failed: " + ", ".join(sorted(deciding & temp_failed))
    return result


def _header_end(raw: bytes) -> int:
    ends = [e for e in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if e >= 0]
    return min(ends) if ends else len(raw)

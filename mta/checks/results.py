"""The one authentication value per received message.

`AuthResults` gathers what the checks reported (SPF, every DKIM signature, DMARC, ARC,
optionally iprev). It renders the RFC 8601 Authentication-Results header value we add,
round-trips through JSON for `messages.auth_results`, and gives the one-word summaries
stored on activity events. Deciding what to do with the message is not its job.

`strip_our_auth_results` removes incoming Authentication-Results fields that claim our
authserv-id (RFC 8601 §5): otherwise a sender could forge "dmarc=pass" in our name for
anything downstream that trusts our header.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from mta.checks.arc import ArcResult, parse_authentication_results, strip_comments
from mta.checks.dkim import DkimSignatureResult
from mta.checks.dmarc import DmarcResult
from mta.checks.spf import SpfResult

__all__ = ["AuthResults", "IprevResult", "authserv_id_of", "strip_our_auth_results"]


@dataclass(frozen=True)
class IprevResult:
    result: str  # pass | fail | temperror | permerror
    ip: str
    hostname: str = ""


_TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~/@]+$")


def _value(text: str) -> str:
    """A property value or reason: a bare token when it can be, else a quoted string."""
    if text and _TOKEN.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    safe = re.sub(r"[()\\\r\n]", " ", text).strip()
    return f" ({safe})" if safe else ""


def _summary(results: list[str]) -> str:
    if not results:
        return "none"
    for wanted in ("pass", "temperror", "fail"):
        if wanted in results:
            return wanted
    return results[0]


@dataclass
class AuthResults:
    spf: SpfResult | None = None
    dkim: list[DkimSignatureResult] = field(default_factory=list)
    dmarc: DmarcResult | None = None
    arc: ArcResult | None = None
    iprev: IprevResult | None = None

    # -- one-word summaries (activity events, metrics labels) --------------------------

    @property
    def spf_result(self) -> str:
        return self.spf.result if self.spf else "none"

    @property
    def dkim_result(self) -> str:
        """pass when any signature passed; else temperror, fail, or the first result."""
        return _summary([d.result for d in self.dkim])

    @property
    def dmarc_result(self) -> str:
        return self.dmarc.result if self.dmarc else "none"

    @property
    def arc_result(self) -> str:
        return self.arc.cv if self.arc else "none"

    # -- RFC 8601 header ----------------------------------------------------------------

    def to_header(self, authserv_id: str, fold: bool = False) -> str:
        """The Authentication-Results value (without the field name). With `fold`, each
        method goes on its own continuation line."""
        parts: list[str] = []
        if self.iprev is not None:
            parts.append(f"iprev={self.iprev.result} policy.iprev={_value(self.iprev.ip)}"
                         + _comment(self.iprev.hostname))
        if self.spf is not None:
            ptype = "smtp.helo" if self.spf.identity == "helo" else "smtp.mailfrom"
            spf = f"spf={self.spf.result}"
            if self.spf.result != "pass" and self.spf.reason:
                spf += _comment(self.spf.reason)
            if self.spf.domain:
                spf += f" {ptype}={_value(self.spf.domain)}"
            parts.append(spf)
        if self.dkim:
            for sig in self.dkim:
                text = f"dkim={sig.result}"
                if sig.reason:
                    text += f" reason={_value(sig.reason)}"
                if sig.domain:
                    text += f" header.d={_value(sig.domain)}"
                if sig.selector:
                    text += f" header.s={_value(sig.selector)}"
                if sig.algorithm:
                    text += f" header.a={_value(sig.algorithm)}"
                if sig.header_b:
                    text += f" header.b={_value(sig.header_b)}"
                parts.append(text)
        elif self.spf is not None or self.dmarc is not None:
            parts.append("dkim=none")
        if self.dmarc is not None:
            d = self.dmarc
            text = f"dmarc={d.result}"
            if d.policy:
                text += f" (p={d.policy} dis={d.disposition})"
            elif d.reason and d.result != "none":
                text += _comment(d.reason)
            if d.from_domain:
                text += f" header.from={_value(d.from_domain)}"
            parts.append(text)
        if self.arc is not None:
            parts.append(f"arc={self.arc.cv}" + (_comment(self.arc.reason)
                                                 if self.arc.cv not in ("pass", "none")
                                                 else ""))
        if not parts:
            parts.append("none")
        sep = ";\r\n\t" if fold else "; "
        return authserv_id + sep + sep.join(parts)

    # -- storage ------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the JSONB column takes it as is)."""
        return {
            "spf": asdict(self.spf) if self.spf else None,
            "dkim": [d.to_dict() for d in self.dkim],
            "dmarc": self.dmarc.to_dict() if self.dmarc else None,
            "arc": self.arc.to_dict() if self.arc else None,
            "iprev": asdict(self.iprev) if self.iprev else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | str | bytes) -> AuthResults:
        if isinstance(data, str | bytes):
            data = json.loads(data)
        spf = data.get("spf")
        iprev = data.get("iprev")
        return cls(
            spf=SpfResult(**{k: spf[k] for k in SpfResult.__dataclass_fields__ if k in spf})
            if spf else None,
            dkim=[DkimSignatureResult.from_dict(d) for d in data.get("dkim") or []],
            dmarc=DmarcResult.from_dict(data["dmarc"]) if data.get("dmarc") else None,
            arc=ArcResult.from_dict(data["arc"]) if data.get("arc") else None,
            iprev=IprevResult(**iprev) if iprev else None,
        )


def authserv_id_of(value: str) -> str:
    """The authserv-id of an Authentication-Results value, lower-cased ("" if none)."""
    parsed = parse_authentication_results(value)
    if parsed is not None:
        return parsed.authserv_id
    head = strip_comments(value).split(";")[0].split()
    return head[0].lower() if head else ""


def strip_our_auth_results(raw: bytes, authserv_id: str) -> bytes:
    """Remove every Authentication-Results header field whose authserv-id is ours
    (compared case-insensitively); everything else is kept byte for byte."""
    ours = authserv_id.strip().lower()
    out: list[bytes] = []
    lines = raw.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i]
        if line in (b"\r\n", b"\n"):
            break  # end of the header section
        field_lines = [line]
        i += 1
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            field_lines.append(lines[i])
            i += 1
        name, colon, value = b"".join(field_lines).partition(b":")
        if colon and name.strip().lower() == b"authentication-results":
            text = value.decode("utf-8", "replace").replace("\r", "").replace("\n", "")
            if authserv_id_of(text) == ours:
                continue
        out.extend(field_lines)
    return b"".join(out) + b"".join(lines[i:])

"""The RFC 7208 test suite (../shared/conformance/spf), each test its own case.

Every scenario's zone data is served by a real DNS server on loopback and the product's
`check_spf` runs through `DnsResolver` against it. The zone data is translated the way
the suite's own driver (pyspf's test/testspf.py) reads it:
- an SPF entry is served as type SPF (99), and also as TXT when the name has no TXT entry;
- `TXT: NONE` means "no TXT record" (and stops that copying);
- `TIMEOUT` means queries get no answer, except for record types listed before it.
"""

from __future__ import annotations

import dns.message
import dns.name
import dns.rdatatype
import pytest
import yaml

from mta.checks.spf import check_spf
from mta.dnscache import DnsResolver
from tests.conftest import CONFORMANCE, conformance_file
from tests.harness import dns_server as harness_dns

SUITE = CONFORMANCE / "spf" / "rfc7208-tests.yml"
# Short, so the TIMEOUT vectors cost little; loopback answers take well under 1 ms.
DNS_TIMEOUT = 0.3


class _SuiteDnsServer(harness_dns.TestDnsServer):
    """The test DNS server plus the suite's per-type TIMEOUT: a name can answer some
    record types and leave the others unanswered (`spftimeout` needs exactly that)."""

    def __init__(self) -> None:
        super().__init__()
        self._answering: dict[dns.name.Name, set[int]] = {}

    def time_out_except(self, name: str, rdtypes: set[str]) -> None:
        self._answering[dns.name.from_text(_absolute(name))] = {
            dns.rdatatype.from_text(t) for t in rdtypes}

    def clear(self) -> None:
        super().clear()
        self._answering.clear()

    def answer(self, wire: bytes) -> bytes | None:
        try:
            q = dns.message.from_wire(wire).question[0]
        except Exception:
            return super().answer(wire)
        allowed = self._answering.get(q.name)
        if allowed is not None and q.rdtype not in allowed:
            self.queries.append((q.name.to_text(), dns.rdatatype.to_text(q.rdtype)))
            return None
        return super().answer(wire)


def _absolute(name: str) -> str:
    return name if name.endswith(".") else name + "."


def _zone_name(name: str) -> str:
    """A domain name in zone-file syntax; the suite has names with spaces in them."""
    out = []
    for ch in name:
        out.append(ch if ch.isascii() and (ch.isalnum() or ch in "-_.*") else f"\\{ord(ch):03d}")
    return _absolute("".join(out))


def _txt_rdata(value: str | list[str]) -> str:
    """TXT/SPF presentation text; every byte outside plain ASCII is a \\DDD escape so that
    control characters and 8-bit bytes reach the wire as the suite wrote them."""
    strings = value if isinstance(value, list) else [value]
    if not strings:
        return '""'  # an empty record: not an SPF record either way
    quoted = []
    for s in strings:
        try:
            data = s.encode("latin-1")  # "\xEF" in the YAML means the byte 0xEF
        except UnicodeEncodeError:
            data = s.encode("utf-8")
        chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
        for chunk in chunks:
            quoted.append('"' + "".join(
                chr(b) if 0x20 <= b < 0x7f and chr(b) not in '"\\' else f"\\{b:03d}"
                for b in chunk) + '"')
    return " ".join(quoted)


def load_scenario(server: _SuiteDnsServer, zonedata: dict) -> None:
    server.clear()
    for raw_name, entries in zonedata.items():
        name = _zone_name(raw_name)
        has_txt = any(isinstance(e, dict) and "TXT" in e for e in entries)
        answering: set[str] = set()
        timed_out = False
        for entry in entries:
            if entry == "TIMEOUT":
                timed_out = True
                break
            ((rdtype, value),) = entry.items()
            if value == "NONE":
                continue
            answering.add(rdtype)
            if rdtype in ("TXT", "SPF"):
                server.add(name, rdtype, _txt_rdata(value))
                if rdtype == "SPF" and not has_txt:
                    server.add(name, "TXT", _txt_rdata(value))
            elif rdtype == "MX":
                pref, host = value
                server.add(name, "MX", f"{pref} {_zone_name(host)}")
            elif rdtype in ("PTR", "CNAME"):
                server.add(name, rdtype, _zone_name(value))
            else:
                server.add(name, rdtype, str(value))
        if timed_out:
            # Copied TXT records come after TIMEOUT in the driver, so they time out too.
            server.time_out_except(name, answering)


def _cases() -> list:
    if not SUITE.exists():
        # Collected as one case that skips with the reason, never silently empty.
        return [pytest.param(-1, "suite-missing", {}, id="suite-missing")]
    cases = []
    with open(SUITE, encoding="utf-8") as fh:
        for index, scenario in enumerate(yaml.safe_load_all(fh)):
            for name, test in scenario["tests"].items():
                cases.append(pytest.param(index, name, test, id=name))
    return cases


@pytest.fixture(scope="module")
def suite_dns():
    server = _SuiteDnsServer().start()
    state = {"loaded": None, "scenarios": None}

    def use(index: int) -> _SuiteDnsServer:
        if state["scenarios"] is None:
            with open(conformance_file("spf", "rfc7208-tests.yml"), encoding="utf-8") as fh:
                state["scenarios"] = list(yaml.safe_load_all(fh))
        if state["loaded"] != index:
            load_scenario(server, state["scenarios"][index]["zonedata"])
            state["loaded"] = index
        return server

    yield use
    server.stop()


@pytest.mark.parametrize(("scenario", "name", "test"), _cases())
async def test_rfc7208(suite_dns, scenario: int, name: str, test: dict) -> None:
    conformance_file("spf", "rfc7208-tests.yml")  # skips, with the reason, when absent
    server = suite_dns(scenario)
    resolver = DnsResolver([server.nameserver], timeout=DNS_TIMEOUT, cache_size=0)
    result = await check_spf(resolver, str(test["host"]), test["mailfrom"], test["helo"])
    expected = test["result"] if isinstance(test["result"], list) else [test["result"]]
    assert result.result in expected, (
        f"{name} ({test.get('spec')}): got {result.result} ({result.reason}), "
        f"want {expected}: {test.get('description', '')}")
    if "explanation" in test:
        # "DEFAULT" is the driver's placeholder for "no exp= text": our None.
        want = None if test["explanation"] == "DEFAULT" else test["explanation"]
        assert result.explanation == want, f"{name}: reason {result.reason}"

"""Property-based fuzzing (hypothesis) of the parsers that read what strangers send: the
SMTP command reader and path parser, the DATA and BDAT decoders, MIME composition and
validation, DSN and ARF parsing, SRS decoding.

In the default suite each target runs a few hundred examples (seconds). The long run,
`bash scripts/fuzz.sh`, feeds each target's `hypothesis.fuzz_one_input` with random
buffers (at least 1,000,000 per target) and keeps every failing input. Every crash it
finds becomes an `@example` here (see `test_regressions` at the end).

The properties are what the rest of the code relies on: a parser refuses with its own
error (never another exception), and what it lets through can be written into a header,
a next hop's DATA or a reply without harm.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mta.errors import MtaError
from mta.queue.dsn import parse_arf, parse_bounce, parse_dsn
from mta.queue.dsnparams import (
    DsnParamError,
    orcpt_param,
    parse_envid,
    parse_notify,
    parse_orcpt,
    parse_ret,
    xtext_encode,
)
from mta.sending.compose import compose_message
from mta.sending.validate import parse_send_request, validate_send
from mta.signing.srs import Srs, SrsError
from mta.smtp.address import PathError, parse_path
from mta.smtp.limits import AUTH_LINE, DOMAIN, LOCAL_PART, TEXT_LINE
from mta.smtp.wire import END, Wire, check_content, chunked_result, decode_data, find_data_end

settings.register_profile("default", max_examples=100, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("default")

NOW = datetime(2026, 1, 1, tzinfo=UTC)
# Bytes SMTP parsers meet: line ends, dots, NUL, 8-bit, and plain text.
_WIRE_BYTES = st.binary(max_size=400) | st.lists(
    st.sampled_from([b"\r\n", b"\r", b"\n", b".", b"..", b"\x00", b"\xff", b"MAIL FROM:<a@b>",
                     b"DATA", b"BDAT 3 LAST", b"x" * 600, b" ", b"\r\n.\r\n"]),
    max_size=40).map(b"".join)


def _lines_ok(content: bytes) -> bool:
    """Every line ends with CRLF, no NUL, none over 998 octets."""
    if b"\x00" in content or (content and not content.endswith(b"\r\n")):
        return False
    lines = content.split(b"\r\n")[:-1]
    return all(b"\r" not in ln and b"\n" not in ln and len(ln) + 2 <= TEXT_LINE
               for ln in lines)


# -- the SMTP command reader and path parser ----------------------------------------------


async def _read_all(data: bytes, cuts: list[int]) -> list:
    reader = asyncio.StreamReader()
    pos = 0
    for cut in sorted(set(c % (len(data) + 1) for c in cuts)) + [len(data)]:
        reader.feed_data(data[pos:cut])
        pos = cut
    reader.feed_eof()
    wire = Wire(reader)
    lines = []
    while (line := await wire.read_command()) is not None:
        lines.append(line)
    return lines


@given(_WIRE_BYTES, st.lists(st.integers(0, 10_000), max_size=5))
def test_command_reader(data: bytes, cuts: list[int]) -> None:
    lines = asyncio.run(_read_all(data, cuts))
    assert len(lines) <= data.count(b"\n")  # only a LF ends a line
    for line in lines:
        if line.ok:
            assert b"\r" not in line.text and b"\n" not in line.text
            assert b"\x00" not in line.text and len(line.text) + 2 <= AUTH_LINE


_ADDRESS_PARTS = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]),
                         max_size=80)


@given(_ADDRESS_PARTS, st.sampled_from(["FROM", "TO"]))
@example("FROM:<" + "a" * 64 + "@" + "b" * 63 + ".test>", "FROM")
@example("TO:<\"quoted local\"@x.test> NOTIFY=NEVER", "TO")
def test_path_parser(arg: str, keyword: str) -> None:
    try:
        path = parse_path(f"{keyword}:{arg}" if not arg.upper().startswith(keyword) else arg,
                          keyword, null_ok=keyword == "FROM")
    except PathError as exc:
        assert exc.kind in ("syntax", "non_ascii_local", "bad_parameter",
                            "duplicate_parameter")
        return
    if not path.address:
        return
    local, _, domain = path.address.rpartition("@")
    assert len(local.encode()) <= LOCAL_PART and len(domain) <= DOMAIN
    assert not any(ord(c) < 0x20 or c == "\x7f" for c in path.address)
    assert parse_path(f"{keyword}:<{path.address}>", keyword, null_ok=True).address == \
        path.address


_PARAM_VALUES = _ADDRESS_PARTS | st.lists(
    st.sampled_from(["+", "+2B", "+0A", "+7", "=", ";", ",", "rfc822", "utf-8", "NEVER",
                     "SUCCESS", "FAILURE", "DELAY", "FULL", "HDRS", "a@b.test", "\\x{E9}"]),
    max_size=12).map("".join)


@given(_PARAM_VALUES)
@example("rfc822;a+2Bb+3Dc@x.test")
@example("NEVER,SUCCESS")
def test_dsn_parameters(value: str) -> None:
    """RFC 3461 parameters: refused only with DsnParamError; what is accepted is
    printable ASCII (it goes into our DSNs' header fields) and survives being passed on
    to a next hop (encoded again) unchanged."""
    for parse in (parse_ret, parse_envid, parse_notify, parse_orcpt):
        try:
            got = parse(value)
        except DsnParamError:
            continue
        assert all(" " <= c <= "~" for c in got), (parse.__name__, got)
        if parse is parse_envid:
            assert parse_envid(xtext_encode(got)) == got
        elif parse is parse_orcpt:
            assert parse_orcpt(orcpt_param(got)) == got
        elif parse is parse_notify:
            assert parse_notify(got) == got


# -- DATA and BDAT decoders -----------------------------------------------------------------


@given(_WIRE_BYTES, st.sampled_from(["reject", "normalize"]))
def test_data_decoder(data: bytes, bare: str) -> None:
    section = data + END
    end = find_data_end(section)
    first = section.find(END)
    assert end in (3, first + len(END))  # the first marker (or "." right away) ends it
    content, had_bare = decode_data(section[:end], bare)
    if had_bare and bare == "reject":
        return  # refused whole by the reader
    content, refusal, _ = check_content(content, bare)
    if refusal is None:
        assert _lines_ok(content), content


_TEXT_LINES = st.lists(st.binary(max_size=120).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), max_size=20)


@given(_TEXT_LINES)
def test_dot_stuffing_round_trip(lines: list[bytes]) -> None:
    content = b"".join(line + b"\r\n" for line in lines)
    stuffed = b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
    section = stuffed + b".\r\n"
    assert find_data_end(section) == len(section)
    assert decode_data(section) == (content, False)


@given(_WIRE_BYTES, st.sampled_from(["reject", "normalize"]))
def test_bdat_decoder(data: bytes, bare: str) -> None:
    result = chunked_result(data, bare)
    assert result.size == len(data)
    if result.refused is None:
        assert _lines_ok(result.content)
        if bare == "reject":
            assert result.content in (data, data + b"\r\n")  # as sent, never rewritten


# -- MIME composition and validation ------------------------------------------------------

_FIELD_TEXT = st.text(max_size=60) | st.sampled_from(
    ["\r\nBcc: victim@x.test", "a\x00b", "=?utf-8?q?x?=", "x" * 1200, "Ünïcode ✓", ""])
_ADDRESS = st.sampled_from(["bob@rcpt.test", "Bob <bob@rcpt.test>", "bad", "a@b@c",
                            "x@xn--piata-pta.es"]) | _FIELD_TEXT
_ADDRESS_OBJ = _ADDRESS | st.fixed_dictionaries({"address": _ADDRESS, "name": _FIELD_TEXT})


@given(st.fixed_dictionaries({
    "from": _ADDRESS_OBJ, "to": st.lists(_ADDRESS_OBJ, min_size=1, max_size=3),
    "subject": _FIELD_TEXT, "text": _FIELD_TEXT, "html": st.none() | _FIELD_TEXT,
    "reply_to": st.none() | _ADDRESS_OBJ,
    "headers": st.dictionaries(st.sampled_from(["X-Tag", "List-Id", "X-Long", "Date"]),
                               _FIELD_TEXT, max_size=3),
    "attachments": st.lists(st.fixed_dictionaries({
        "content": st.sampled_from(["aGVsbG8=", "not base64!"]), "filename": _FIELD_TEXT,
        "type": st.sampled_from(["text/plain", "image/png", "multipart/mixed", "x\r\ny"]),
    }), max_size=2),
}))
def test_mime_composition(body: dict) -> None:
    try:
        validated = validate_send(parse_send_request(body))
    except MtaError:
        return
    message_id, raw = compose_message(validated, "sender.test", now=NOW)
    assert _lines_ok(raw), raw[:2000]
    head = raw.split(b"\r\n\r\n", 1)[0]
    names = [ln.split(b":", 1)[0].lower() for ln in head.split(b"\r\n")
             if ln and ln[:1] not in (b" ", b"\t")]
    assert b"bcc" not in names and names.count(b"from") == 1 and names.count(b"subject") == 1
    assert message_id.startswith("<") and message_id.endswith("@sender.test>")


# -- DSN, ARF and bounce parsing ---------------------------------------------------------------

_DSN = (b"From: MAILER-DAEMON@x.test\r\nTo: a@b.test\r\nSubject: failed\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;"
        b" boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
        b"--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x.test\r\n"
        b"\r\nFinal-Recipient: rfc822; bob@rcpt.test\r\nAction: failed\r\n"
        b"Status: 5.1.1\r\n\r\n--B--\r\n")
_ARF = (b"From: fbl@x.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; "
        b"report-type=feedback-report; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n"
        b"\r\nspam\r\n--B\r\nContent-Type: message/feedback-report\r\n\r\n"
        b"Feedback-Type: abuse\r\nUser-Agent: x\r\nVersion: 1\r\n\r\n--B\r\n"
        b"Content-Type: text/rfc822-headers\r\n\r\nFrom: a@b.test\r\n\r\n--B--\r\n")


@st.composite
def _mutated(draw, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 6))):
        i = draw(st.integers(0, len(data)))
        data[i:i + draw(st.integers(0, 8))] = draw(_WIRE_BYTES)
    return bytes(data)


# Found by the long run: an 8-bit byte in a report field made the email package hand back
# a Header object, and parse_arf called .strip() on it (AttributeError).
_ARF_8BIT = _ARF.replace(b"Feedback-Type: abuse", b"Feedback-Type: abuse\xff")


@given(_mutated(_DSN) | _mutated(_ARF) | _WIRE_BYTES)
@example(_DSN)
@example(_ARF)
@example(_ARF_8BIT)
def test_dsn_and_arf_parsing(raw: bytes) -> None:
    for parsed in (parse_dsn(raw), parse_bounce(raw)):
        assert isinstance(parsed, list)
        for r in parsed:
            assert isinstance(r.recipient, str) and r.recipient and r.action
    report = parse_arf(raw)
    assert report is None or report.feedback_type


# -- SRS ---------------------------------------------------------------------------------------

SRS = Srs(["fuzz-secret"], "fwd.test")
_LOCAL = st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,40}", fullmatch=True)


@given(_LOCAL, st.from_regex(r"[a-z0-9-]{1,20}\.[A-Za-z]{2,6}", fullmatch=True))
def test_srs_round_trip_keeps_the_address_byte_for_byte(local: str, domain: str) -> None:
    original = f"{local}@{domain}"
    rewritten = SRS.forward(original)
    assert SRS.reverse(rewritten) == original


@given(_ADDRESS_PARTS | st.builds(lambda a, b: f"SRS0={a}@{b}", _ADDRESS_PARTS, _ADDRESS_PARTS)
       | st.builds(lambda a: f"SRS1={a}@fwd.test", _ADDRESS_PARTS))
def test_srs_decoding(address: str) -> None:
    try:
        original = SRS.reverse(address)
    except SrsError:
        return
    assert "@" in original


# -- regressions: every crash the long run found -------------------------------------------


def test_regression_arf_field_with_8bit_byte() -> None:
    report = parse_arf(_ARF_8BIT)
    assert report is not None and report.feedback_type.startswith("abuse")

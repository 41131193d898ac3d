"""The properties the fuzz targets check, as plain functions of plain arguments.

Two drivers call them: the hypothesis tests of `test_fuzz.py` (a short run in the default
suite) and the byte-level targets of `targets.py` (the long, coverage-guided run of
`scripts/fuzz.sh`). A property returns normally or fails an assertion; any other
exception is a crash.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

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

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SRS = Srs(["fuzz-secret"], "fwd.test")
# Well-formed reports: the starting points for mutation.
DSN_SAMPLE = (b"From: MAILER-DAEMON@x.test\r\nTo: a@b.test\r\nSubject: failed\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;"
        b" boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
        b"--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x.test\r\n"
        b"\r\nFinal-Recipient: rfc822; bob@rcpt.test\r\nAction: failed\r\n"
        b"Status: 5.1.1\r\n\r\n--B--\r\n")
ARF_SAMPLE = (b"From: fbl@x.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; "
        b"report-type=feedback-report; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n"
        b"\r\nspam\r\n--B\r\nContent-Type: message/feedback-report\r\n\r\n"
        b"Feedback-Type: abuse\r\nUser-Agent: x\r\nVersion: 1\r\n\r\n--B\r\n"
        b"Content-Type: text/rfc822-headers\r\n\r\nFrom: a@b.test\r\n\r\n--B--\r\n")


def lines_ok(content: bytes) -> bool:
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


_LOOP: asyncio.AbstractEventLoop | None = None


def command_reader(data: bytes, cuts: list[int]) -> None:
    """Lines end only at LF; a line handed on as valid has no CR, LF or NUL and fits."""
    global _LOOP
    if _LOOP is None or _LOOP.is_closed():
        _LOOP = asyncio.new_event_loop()  # one loop for every input: asyncio.run costs more
    lines = _LOOP.run_until_complete(_read_all(data, cuts))
    assert len(lines) <= data.count(b"\n")  # only a LF ends a line
    for line in lines:
        if line.ok:
            assert b"\r" not in line.text and b"\n" not in line.text
            assert b"\x00" not in line.text and len(line.text) + 2 <= AUTH_LINE


def path_parser(arg: str, keyword: str) -> None:
    """A path is refused with a PathError, or comes back within the RFC 5321 limits,
    free of controls, and parses to itself."""
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
    utf8 = "SMTPUTF8" in path.params
    assert parse_path(f"{keyword}:<{path.address}>", keyword, null_ok=True,
                      utf8=utf8).address == path.address


def dsn_parameters(value: str) -> None:
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

def data_decoder(data: bytes, bare: str) -> None:
    """The first end-of-data marker ends the data; what is accepted is clean lines."""
    section = data + END
    end = find_data_end(section)
    first = section.find(END)
    assert end in (3, first + len(END))  # the first marker (or "." right away) ends it
    content, had_bare = decode_data(section[:end], bare)
    if had_bare and bare == "reject":
        return  # refused whole by the reader
    content, refusal, _ = check_content(content, bare)
    if refusal is None:
        assert lines_ok(content), content


def dot_stuffing_round_trip(lines: list[bytes]) -> None:
    """Lines without CR/LF, dot-stuffed and ended, decode to themselves."""
    content = b"".join(line + b"\r\n" for line in lines)
    stuffed = b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
    section = stuffed + b".\r\n"
    assert find_data_end(section) == len(section)
    assert decode_data(section) == (content, False)


def bdat_decoder(data: bytes, bare: str) -> None:
    """A BDAT message is sized as sent; accepted content is clean lines, and in reject
    mode exactly what was sent (plus a final CRLF)."""
    result = chunked_result(data, bare)
    assert result.size == len(data)
    if result.refused is None:
        assert lines_ok(result.content)
        if bare == "reject":
            assert result.content in (data, data + b"\r\n")  # as sent, never rewritten


# -- MIME composition and validation ------------------------------------------------------

def mime_composition(body: dict) -> None:
    """A send body is refused with an MtaError, or composes to clean lines with one
    From, one Subject, no Bcc and our Message-ID."""
    try:
        validated = validate_send(parse_send_request(body))
    except MtaError:
        return
    message_id, raw = compose_message(validated, "sender.test", now=NOW)
    assert lines_ok(raw), raw[:2000]
    head = raw.split(b"\r\n\r\n", 1)[0]
    names = [ln.split(b":", 1)[0].lower() for ln in head.split(b"\r\n")
             if ln and ln[:1] not in (b" ", b"\t")]
    assert b"bcc" not in names and names.count(b"from") == 1 and names.count(b"subject") == 1
    assert message_id.startswith("<") and message_id.endswith("@sender.test>")


# -- DSN, ARF and bounce parsing ---------------------------------------------------------------

def dsn_and_arf_parsing(raw: bytes) -> None:
    """Any bytes parse to a list of reports with a recipient and an action (or none)."""
    for parsed in (parse_dsn(raw), parse_bounce(raw)):
        assert isinstance(parsed, list)
        for r in parsed:
            assert isinstance(r.recipient, str) and r.recipient and r.action
    report = parse_arf(raw)
    assert report is None or report.feedback_type


# -- SRS ---------------------------------------------------------------------------------------

def srs_round_trip(local: str, domain: str) -> None:
    """Forward then reverse gives the address back byte for byte."""
    original = f"{local}@{domain}"
    assert SRS.reverse(SRS.forward(original)) == original


def srs_decoding(address: str) -> None:
    """Reversing any string is refused with an SrsError or gives an address."""
    try:
        original = SRS.reverse(address)
    except SrsError:
        return
    assert "@" in original

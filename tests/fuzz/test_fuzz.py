"""Property-based fuzzing (hypothesis) of the parsers that read what strangers send: the
SMTP command reader and path parser, the DATA and BDAT decoders, MIME composition and
validation, DSN and ARF parsing, SRS decoding.

In the default suite each target runs 100 examples (seconds). The long run,
`bash scripts/fuzz.sh`, checks the same properties (`properties.py`) from raw bytes under
atheris, coverage-guided (`targets.py`), at least 1,000,000 inputs per target. Every crash
it finds becomes an `@example` and a `test_regression_*` here (at the end).

The properties are what the rest of the code relies on: a parser refuses with its own
error (never another exception), and what it lets through can be written into a header,
a next hop's DATA or a reply without harm.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mta.errors import MtaError
from mta.queue.dsn import parse_arf
from mta.sending.validate import parse_send_request, validate_send
from mta.signing.srs import SrsBadHash
from tests.fuzz import properties as prop

settings.register_profile("default", max_examples=100, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("default")

# Bytes SMTP parsers meet: line ends, dots, NUL, 8-bit, and plain text.
_WIRE_BYTES = st.binary(max_size=400) | st.lists(
    st.sampled_from([b"\r\n", b"\r", b"\n", b".", b"..", b"\x00", b"\xff", b"MAIL FROM:<a@b>",
                     b"DATA", b"BDAT 3 LAST", b"x" * 600, b" ", b"\r\n.\r\n"]),
    max_size=40).map(b"".join)


# -- the SMTP command reader and path parser ----------------------------------------------


@given(_WIRE_BYTES, st.lists(st.integers(0, 10_000), max_size=5))
def test_command_reader(data: bytes, cuts: list[int]) -> None:
    prop.command_reader(data, cuts)


_ADDRESS_PARTS = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]),
                         max_size=80)


@given(_ADDRESS_PARTS, st.sampled_from(["FROM", "TO"]))
@example("FROM:<" + "a" * 64 + "@" + "b" * 63 + ".test>", "FROM")
@example("TO:<\"quoted local\"@x.test> NOTIFY=NEVER", "TO")
def test_path_parser(arg: str, keyword: str) -> None:
    prop.path_parser(arg, keyword)


_PARAM_VALUES = _ADDRESS_PARTS | st.lists(
    st.sampled_from(["+", "+2B", "+0A", "+7", "=", ";", ",", "rfc822", "utf-8", "NEVER",
                     "SUCCESS", "FAILURE", "DELAY", "FULL", "HDRS", "a@b.test", "\\x{E9}"]),
    max_size=12).map("".join)


@given(_PARAM_VALUES)
@example("rfc822;a+2Bb+3Dc@x.test")
@example("NEVER,SUCCESS")
def test_dsn_parameters(value: str) -> None:
    prop.dsn_parameters(value)


# -- DATA and BDAT decoders -----------------------------------------------------------------


@given(_WIRE_BYTES, st.sampled_from(["reject", "normalize"]))
def test_data_decoder(data: bytes, bare: str) -> None:
    prop.data_decoder(data, bare)


_TEXT_LINES = st.lists(st.binary(max_size=120).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), max_size=20)


@given(_TEXT_LINES)
def test_dot_stuffing_round_trip(lines: list[bytes]) -> None:
    prop.dot_stuffing_round_trip(lines)


@given(_WIRE_BYTES, st.sampled_from(["reject", "normalize"]))
def test_bdat_decoder(data: bytes, bare: str) -> None:
    prop.bdat_decoder(data, bare)


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
@example({"from": "a@b.test", "to": ["c@d.test"], "subject": "c\x0cs", "text": "t"})
def test_mime_composition(body: dict) -> None:
    prop.mime_composition(body)


# -- DSN, ARF and bounce parsing ---------------------------------------------------------------

_DSN, _ARF = prop.DSN_SAMPLE, prop.ARF_SAMPLE


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
    prop.dsn_and_arf_parsing(raw)


# -- SRS ---------------------------------------------------------------------------------------

# Found by the long run (atheris): a non-ASCII character where the hash goes made
# hmac.compare_digest raise TypeError instead of the hash not matching.
_SRS_NON_ASCII_HASH = "SRS1=M\xff\xffT=other.test=o.te\x00st=u@ftde.wst"
_LOCAL = st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,40}", fullmatch=True)


@given(_LOCAL, st.from_regex(r"[a-z0-9-]{1,20}\.[A-Za-z]{2,6}", fullmatch=True))
def test_srs_round_trip_keeps_the_address_byte_for_byte(local: str, domain: str) -> None:
    prop.srs_round_trip(local, domain)


@given(_ADDRESS_PARTS | st.builds(lambda a, b: f"SRS0={a}@{b}", _ADDRESS_PARTS, _ADDRESS_PARTS)
       | st.builds(lambda a: f"SRS1={a}@fwd.test", _ADDRESS_PARTS))
@example(_SRS_NON_ASCII_HASH)
def test_srs_decoding(address: str) -> None:
    prop.srs_decoding(address)


# -- regressions: every crash the long run found -------------------------------------------


def test_regression_arf_field_with_8bit_byte() -> None:
    report = parse_arf(_ARF_8BIT)
    assert report is not None and report.feedback_type.startswith("abuse")


def test_regression_srs_hash_with_non_ascii_characters() -> None:
    for address in (_SRS_NON_ASCII_HASH, "SRS0=häsh=AB=x.test=u@fwd.test"):
        with pytest.raises(SrsBadHash):
            prop.SRS.reverse(address)


def test_regression_line_breaks_python_reads_in_a_subject_are_refused() -> None:
    # Found by the long run (atheris): a form feed in the subject passed validation and
    # the email package raised ValueError while composing (an HTTP 500).
    for bad in ("\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"):
        body = {"from": "a@b.test", "to": ["c@d.test"], "subject": f"c{bad}s", "text": "t"}
        with pytest.raises(MtaError) as err:
            validate_send(parse_send_request(body))
        assert err.value.code == "E_VALIDATION_ERROR"

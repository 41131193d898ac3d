"""The fuzz targets of the long run: each takes raw bytes, turns them into the arguments
of one property of `properties.py` without a strategy library in between (a few
slices and table look-ups per input), and checks it. `scripts/fuzz.py` runs them under
atheris (libFuzzer, coverage-guided, starting from `seeds()`); `test_targets.py` runs
each on its seeds in the default suite.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.fuzz import properties as prop

__all__ = ["TARGETS", "seeds"]

_BARE = ("reject", "normalize")
_LOCAL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+/=?^_`{|}~.-"
_DOMAIN_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-"


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def command_reader(data: bytes) -> None:
    # The first 4 octets say where the stream is cut into reads (pipelining, slow clients).
    cuts = list(data[:4])
    prop.command_reader(data[4:], [c * 7 for c in cuts])


def path_parser(data: bytes) -> None:
    keyword = "TO" if data[:1] and data[0] & 1 else "FROM"
    prop.path_parser(_text(data[1:]), keyword)


def dsn_parameters(data: bytes) -> None:
    prop.dsn_parameters(_text(data))


def data_decoder(data: bytes) -> None:
    prop.data_decoder(data[1:], _BARE[data[0] & 1] if data else "reject")


def dot_stuffing(data: bytes) -> None:
    prop.dot_stuffing_round_trip(data.replace(b"\r", b"").split(b"\n"))


def bdat_decoder(data: bytes) -> None:
    prop.bdat_decoder(data[1:], _BARE[data[0] & 1] if data else "reject")


def mime_composition(data: bytes) -> None:
    # A JSON send body (the seeds are valid ones; mutations make every kind of wrong
    # shape), or, when it is not JSON, fields cut at 0xFE octets.
    try:
        body = json.loads(data)
    except ValueError:
        parts = [_text(p) for p in data.split(b"\xfe")] + [""] * 8
        body = {"from": parts[0], "to": parts[1].split(",") or [""], "subject": parts[2],
                "text": parts[3], "html": parts[4] or None, "reply_to": parts[5] or None,
                "headers": {"X-Tag": parts[6]} if parts[6] else {},
                "attachments": [{"content": parts[7], "filename": parts[8],
                                 "type": "text/plain"}] if parts[7] else []}
    if isinstance(body, dict):
        prop.mime_composition(body)


def dsn_and_arf(data: bytes) -> None:
    prop.dsn_and_arf_parsing(data)


def srs_round_trip(data: bytes) -> None:
    # Every octet picks a character, so every input is an address SRS must carry back.
    local_part, _, domain_part = data.partition(b"@")
    local = "".join(_LOCAL_CHARS[b % len(_LOCAL_CHARS)] for b in local_part[:60]) or "a"
    label = "".join(_DOMAIN_CHARS[b % 36] for b in domain_part[:40]) or "d"  # no hyphen ends
    prop.srs_round_trip(local, f"{label}.test")


def srs_decoding(data: bytes) -> None:
    prop.srs_decoding(_text(data))


TARGETS: dict[str, Callable[[bytes], None]] = {
    "command_reader": command_reader,
    "path_parser": path_parser,
    "dsn_parameters": dsn_parameters,
    "data_decoder": data_decoder,
    "dot_stuffing": dot_stuffing,
    "bdat_decoder": bdat_decoder,
    "mime_composition": mime_composition,
    "dsn_and_arf": dsn_and_arf,
    "srs_round_trip": srs_round_trip,
    "srs_decoding": srs_decoding,
}


def seeds(name: str) -> list[bytes]:
    """Well-formed inputs of a target: where mutation starts."""
    send = {"from": "Ann <ann@sender.test>", "to": ["bob@rcpt.test", "Jörg <jörg@xn--mnchen-3ya.test>"],
            "subject": "Hi ✓", "text": "hello\n.\nbye", "html": "<p>hi</p>",
            "reply_to": {"address": "r@sender.test", "name": "R"},
            "headers": {"X-Tag": "a", "List-Id": "<l.sender.test>"},
            "attachments": [{"content": "aGVsbG8=", "filename": "a.txt", "type": "text/plain"},
                            {"content": "aGVsbG8=", "filename": "i.png", "type": "image/png",
                             "disposition": "inline", "content_id": "c1"}]}
    table = {
        "command_reader": [b"\0\0\0\0EHLO a\r\nMAIL FROM:<a@b> SIZE=10\r\nRCPT TO:<c@d>\r\n"
                           b"DATA\r\n", b"\1\2\3\4NOOP\nx\r\r\n" + b"y" * 600 + b"\r\n"],
        "path_parser": [b"\0<a@b.test> SIZE=100 BODY=8BITMIME",
                        "\0<jörg@münchen.test> SMTPUTF8".encode(),
                        b'\1<"quoted local"@x.test>', b"\1<@relay.test:c@d.test>"],
        "dsn_parameters": [b"rfc822;a+2Bb+3Dc@x.test", b"NEVER", b"SUCCESS,FAILURE,DELAY",
                           b"FULL", b"HDRS", b"utf-8;j\\x{F6}rg@x.test", b"abc+2B+3D"],
        "data_decoder": [b"\0Subject: x\r\n\r\n..dot\r\n", b"\1a\nb\r.\r\n\0\r\n.\r\n"],
        "dot_stuffing": [b".a\n..b\nc\n.", b""],
        "bdat_decoder": [b"\0Subject: x\r\n\r\nbody\r\n", b"\1a\nb\r\0" + b"x" * 1000],
        "mime_composition": [json.dumps(send).encode(),
                             json.dumps({"from": "a@b.test", "to": "c@d.test", "subject": "s",
                                         "text": "t"}).encode(),
                             "a@b.test\xfec@d.test\xfes\xfet".encode("latin-1")],
        "dsn_and_arf": [prop.DSN_SAMPLE, prop.ARF_SAMPLE],
        "srs_round_trip": [b"user@example", b"a.b+c@x-y"],
        "srs_decoding": [prop.SRS.forward("user@example.test").encode(),
                         prop.SRS.forward(prop.SRS.forward("u@o.test").replace(
                             "fwd.test", "other.test")).encode(),
                         b"SRS0=x=y=z=w@fwd.test"],
    }
    return table[name]

"""Our relaxed canonicalisation gives exactly dkimpy's bytes (what other verifiers hash)."""

import random
import re

from dkim.canonicalization import Relaxed

from mta.canon import relaxed_body, relaxed_headers
from mta.signing.dkim import normalize_line_endings

# Every byte that matters to canonicalisation, plus ordinary text.
_ALPHABET = [b" ", b"  ", b"\t", b"\r\n", b"\r", b"\n", b"a", b"word", b"\r\n ", b"\r\n\t"]


def _random_bytes(rng: random.Random) -> bytes:
    return b"".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 40)))


def test_relaxed_body_matches_dkimpy_on_random_input():
    rng = random.Random(6376)
    for _ in range(20000):
        body = _random_bytes(rng)
        assert relaxed_body(body) == Relaxed.canonicalize_body(body), body


def test_relaxed_headers_match_dkimpy_on_random_input():
    rng = random.Random(8617)
    for _ in range(5000):
        headers = [(rng.choice([b"Subject", b"FROM ", b"x-a\t"]), _random_bytes(rng))
                   for _ in range(rng.randint(1, 4))]
        assert relaxed_headers(headers) == Relaxed.canonicalize_headers(headers), headers


def test_ordinary_text_is_left_as_is():
    body = b"Hello world, one space between words.\r\nSecond line.\r\n"
    assert relaxed_body(body) == body == Relaxed.canonicalize_body(body)


def test_line_end_normalisation_matches_the_full_rewrite():
    full = re.compile(rb"\r\n|\r|\n")
    rng = random.Random(5322)
    for _ in range(20000):
        raw = _random_bytes(rng)
        assert normalize_line_endings(raw) == full.sub(b"\r\n", raw), raw

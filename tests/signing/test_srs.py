"""SRS in the libsrs2 / postsrsd format: round trips, SRS1 for other forwarders'
addresses, refusal of forged or expired addresses, secret rotation, case."""

from __future__ import annotations

import pytest

from mta.signing.srs import (
    Srs,
    SrsBadHash,
    SrsExpired,
    SrsMalformed,
    SrsNotSrsAddress,
    is_srs_address,
)

DAY = 86400
T0 = 1577836860  # 2020-01-01 00:01:00 UTC


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def srs(secrets=("s3cret",), domain="fwd.test", clock=None, **kw) -> Srs:
    return Srs(list(secrets), domain, clock=clock or Clock(), **kw)


def test_matches_postsrsd():
    # postsrsd's own unit test (tests/unit/test_srs2.c): same secret, time and input.
    s = Srs(["tops3cr3t"], "example.com", clock=Clock(1577836860))
    assert s.forward("test@otherdomain.com") == "SRS0=vmyz=2W=otherdomain.com=test@example.com"
    assert s.reverse("SRS0=vmyz=2W=otherdomain.com=test@example.com") == "test@otherdomain.com"


def test_round_trip():
    s = srs()
    rewritten = s.forward("alice+tag@orig.test")
    assert rewritten.startswith("SRS0=") and rewritten.endswith("@fwd.test")
    assert rewritten.split("=", 4)[3:] == ["orig.test", "alice+tag@fwd.test"]
    assert is_srs_address(rewritten)
    assert s.reverse(rewritten) == "alice+tag@orig.test"


def test_null_sender_and_own_domain_untouched():
    s = srs()
    assert s.forward("") == ""
    assert s.forward("<>") == "<>"
    assert s.forward("bob@FWD.test") == "bob@FWD.test"
    with pytest.raises(SrsNotSrsAddress):
        s.reverse("")
    assert srs(always_rewrite=True).forward("bob@fwd.test").startswith("SRS0=")


def test_srs1_from_another_forwarders_srs0():
    first = srs(["first-secret"], "first.test")
    ours = srs(["our-secret"], "fwd.test")
    srs0 = first.forward("alice@orig.test")
    srs1 = ours.forward(srs0)
    hash0 = srs0.split("@")[0][5:]
    assert srs1.startswith("SRS1=")
    assert srs1.endswith(f"=first.test=={hash0}@fwd.test")
    # A bounce to us goes back to the first forwarder, which can reverse it.
    back = ours.reverse(srs1)
    assert back == srs0
    assert first.reverse(back) == "alice@orig.test"
    # A third hop keeps pointing at the first forwarder instead of growing.
    third = srs(["third"], "third.test")
    srs1b = third.forward(srs1)
    assert srs1b.startswith("SRS1=") and f"=first.test=={hash0}@third.test" in srs1b
    assert third.reverse(srs1b) == srs0


@pytest.mark.parametrize("sep", ["+", "-"])
def test_other_separators_are_read(sep):
    first = srs(["first"], "first.test", separator=sep)
    srs0 = first.forward("alice@orig.test")
    assert srs0.startswith(f"SRS0{sep}")
    assert first.reverse(srs0) == "alice@orig.test"
    ours = srs(["ours"], "fwd.test")
    srs1 = ours.forward(srs0)
    assert f"=first.test={sep}" in srs1  # their separator kept in the SRS0 part
    assert ours.reverse(srs1) == srs0
    assert ours.reverse("srs1" + srs1[4:]) == srs0  # tag case does not matter


def test_tampered_addresses_are_refused():
    s = srs()
    good = s.forward("alice@orig.test")
    local, domain = good.split("@", 1)
    _, digest, stamp, host, user = local.split("=", 4)
    other = "B" if digest[0] != "B" else "C"
    for forged in (f"SRS0={other}{digest[1:]}={stamp}={host}={user}@{domain}",
                   f"SRS0={digest}={stamp}={host}=mallory@{domain}",
                   f"SRS0={digest}={stamp}=evil.test={user}@{domain}",
                   f"SRS0={digest[:3]}={stamp}={host}={user}@{domain}"):
        with pytest.raises(SrsBadHash):
            s.reverse(forged)
    srs1 = s.forward(srs(["x"], "first.test").forward("a@orig.test"))
    with pytest.raises(SrsBadHash):
        s.reverse(srs1.replace("=first.test=", "=evil.test="))
    with pytest.raises(SrsBadHash):
        srs(["another secret"]).reverse(good)


def test_malformed_addresses():
    s = srs()
    with pytest.raises(SrsNotSrsAddress):
        s.reverse("alice@orig.test")
    for bad in ("SRS0=abcd=2W@fwd.test", "SRS0=abcd==orig.test=a@fwd.test",
                "SRS0=abcd=2!=orig.test=a@fwd.test", "SRS1=abcd=first.test@fwd.test"):
        with pytest.raises(SrsMalformed):
            s.reverse(bad)
    with pytest.raises(SrsMalformed):
        s.forward("no-at-sign")


def test_expiry_with_injected_clock():
    clock = Clock()
    s = srs(clock=clock)
    address = s.forward("alice@orig.test")
    clock.now = T0 + 21 * DAY
    assert s.reverse(address) == "alice@orig.test"
    clock.now = T0 + 22 * DAY
    with pytest.raises(SrsExpired):
        s.reverse(address)
    short = srs(clock=clock, max_age_days=3)
    clock.now = T0
    fresh = short.forward("alice@orig.test")
    clock.now = T0 + 4 * DAY
    with pytest.raises(SrsExpired):
        short.reverse(fresh)


def test_timestamp_wraps_every_1024_days():
    last_day_of_cycle = (T0 // DAY // 1024 + 1) * 1024 - 1
    clock = Clock(last_day_of_cycle * DAY + 3600)
    s = srs(clock=clock)
    address = s.forward("alice@orig.test")
    clock.now += 2 * DAY  # the day number wrapped to 1
    assert s.reverse(address) == "alice@orig.test"
    clock.now += 20 * DAY  # 22 days after issue, across the wrap
    with pytest.raises(SrsExpired):
        s.reverse(address)


def test_secret_rotation():
    old = srs(["old"])
    issued_before = old.forward("alice@orig.test")
    rotated = srs(["new", "old"])
    assert rotated.reverse(issued_before) == "alice@orig.test"
    issued_after = rotated.forward("alice@orig.test")
    assert srs(["new"]).reverse(issued_after) == "alice@orig.test"  # the first one signs
    with pytest.raises(SrsBadHash):
        old.reverse(issued_after)
    with pytest.raises(SrsBadHash):
        srs(["new"]).reverse(issued_before)


def test_case_insensitive():
    s = srs()
    address = s.forward("Alice@Orig.TEST")
    assert s.forward("alice@orig.test").split("=")[1] == address.split("=")[1]
    assert s.reverse(address.lower()) == "alice@orig.test"
    local, domain = address.split("@")
    assert s.reverse(local.upper() + "@" + domain).lower() == "alice@orig.test"
    # The original's case is what the bounce goes to.
    assert s.reverse(address) == "Alice@Orig.TEST"


def test_secrets_not_in_repr():
    s = Srs(["hunter2-srs"], "fwd.test")
    assert "hunter2" not in repr(s)
    with pytest.raises(TypeError):
        Srs("one-string", "fwd.test")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Srs([], "fwd.test")

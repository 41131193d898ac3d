"""MX listener end to end: authentication checks, policy, durable acceptance.

Real client (aiosmtplib), real loopback DNS with published keys, real PostgreSQL.
"""

from __future__ import annotations

from tests.smtp.conftest import arc_seal, dkim_sign, make_message, smtp_send


def unfolded_head(raw: bytes) -> str:
    return raw.split(b"\r\n\r\n", 1)[0].decode().replace("\r\n\t", " ").replace("\r\n ", " ")


async def test_spf_dkim_dmarc_pass_is_stored_with_auth_results(mx) -> None:
    raw = dkim_sign(make_message("alice@good.test"), "good.test", "sel", mx.keys["good"])
    code, text = await smtp_send(mx, raw, "alice@good.test")
    assert code == 250, text
    assert "2.0.0" in text and "queued as" in text
    [msg] = await mx.messages()
    assert msg.direction == "inbound" and msg.source == "mx" and msg.status == "received"
    assert msg.mail_from == "alice@good.test" and msg.rcpt_to == ["user@ours.test"]
    head = msg.raw.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("Received: from client.test (client.test [127.0.0.1])")
    ar = [h for h in head.split("\r\n") if h.startswith("Authentication-Results:")]
    assert len(ar) == 1 and ar[0].startswith("Authentication-Results: mx.ours.test")
    unfolded = unfolded_head(msg.raw)
    assert "spf=pass" in unfolded and "dkim=pass" in unfolded and "dmarc=pass" in unfolded
    assert msg.raw.endswith(raw)  # the message itself is untouched
    assert msg.auth_results["spf"]["result"] == "pass"
    assert msg.auth_results["policy"]["reason"] == "accepted"
    assert str(msg.client_ip) == "127.0.0.1" and msg.client_ptr == "client.test"
    assert msg.helo == "client.test" and msg.session_id and msg.tls is None
    assert msg.message_id_header and msg.account_id
    events = await mx.events()
    assert [(e.status, e.spf, e.dkim, e.dmarc) for e in events] == [
        ("Received", "pass", "pass", "pass")]
    assert events[0].message_id == msg.id and events[0].rule_id and events[0].zone_id


async def test_spf_fail_and_no_dkim_is_refused_and_nothing_stored(mx) -> None:
    code, text = await smtp_send(mx, make_message("bob@strict.test"), "bob@strict.test")
    assert code == 550 and text.startswith("5.7.26"), (code, text)
    assert await mx.count() == 0
    [event] = await mx.events()
    assert (event.status, event.spf, event.dkim) == ("Rejected", "fail", "none")
    assert event.details["reason"] == "not_authenticated"
    assert event.details["auth_results"]["spf"]["result"] == "fail"


def forwarded_from_strict(keys) -> bytes:
    """From strict.test (p=reject), relayed by forwarder.test: SPF and DKIM pass for the
    forwarder, neither aligned with strict.test -> DMARC fails."""
    raw = make_message("alice@strict.test")
    return dkim_sign(raw, "forwarder.test", "fwd", keys["forwarder"])


async def test_dmarc_fail_under_p_reject_is_refused(mx) -> None:
    code, text = await smtp_send(mx, forwarded_from_strict(mx.keys), "list@forwarder.test")
    assert code == 550 and text.startswith("5.7.1") and "strict.test" in text, (code, text)
    assert await mx.count() == 0
    [event] = await mx.events()
    assert (event.status, event.dmarc) == ("Rejected", "fail")
    assert event.details["reason"] == "dmarc_reject"


async def test_trusted_arc_sealer_overrides_dmarc_reject(make_mx) -> None:
    world = await make_mx(lambda s: setattr(s.inbound.policy, "trusted_arc_sealers",
                                            ["sealer.test"]))
    sealed = arc_seal(forwarded_from_strict(world.keys), "sealer.test", "arc",
                      world.keys["sealer"], "spf=pass smtp.mailfrom=strict.test; "
                      "dkim=pass header.d=strict.test; dmarc=pass header.from=strict.test")
    code, text = await smtp_send(world, sealed, "list@forwarder.test")
    assert code == 250, (code, text)
    [msg] = await world.messages()
    assert msg.auth_results["policy"]["reason"] == "arc_override"
    assert msg.auth_results["arc"]["cv"] == "pass"
    assert "arc=pass" in unfolded_head(msg.raw)


async def test_untrusted_arc_sealer_does_not_override(mx) -> None:
    sealed = arc_seal(forwarded_from_strict(mx.keys), "sealer.test", "arc",
                      mx.keys["sealer"], "dmarc=pass header.from=strict.test")
    code, text = await smtp_send(mx, sealed, "list@forwarder.test")
    assert code == 550 and text.startswith("5.7.1"), (code, text)
    assert await mx.count() == 0


async def test_trusted_sealer_with_failing_aar_does_not_override(make_mx) -> None:
    world = await make_mx(lambda s: setattr(s.inbound.policy, "trusted_arc_sealers",
                                            ["sealer.test"]))
    sealed = arc_seal(forwarded_from_strict(world.keys), "sealer.test", "arc",
                      world.keys["sealer"], "dmarc=fail header.from=strict.test")
    code, _ = await smtp_send(world, sealed, "list@forwarder.test")
    assert code == 550
    assert await world.count() == 0


async def test_servfail_on_spf_record_is_temporary(mx) -> None:
    mx.dns.servfail("flaky.test")
    code, text = await smtp_send(mx, make_message("carol@flaky.test"), "carol@flaky.test")
    assert code == 451 and text.startswith("4.7."), (code, text)
    assert await mx.count() == 0


async def test_servfail_on_dmarc_record_is_temporary(mx) -> None:
    mx.dns.add("flakydmarc.test", "TXT", '"v=spf1 ip4:127.0.0.1 -all"')
    mx.dns.servfail("_dmarc.flakydmarc.test")
    code, text = await smtp_send(mx, make_message("d@flakydmarc.test"), "d@flakydmarc.test")
    assert code == 451 and text.startswith("4.7."), (code, text)


async def test_quarantine_is_accepted_and_marked(mx) -> None:
    raw = dkim_sign(make_message("q@quar.test"), "forwarder.test", "fwd", mx.keys["forwarder"])
    code, _ = await smtp_send(mx, raw, "list@forwarder.test")
    assert code == 250
    [msg] = await mx.messages()
    assert msg.auth_results["policy"] == {"reason": "quarantined", "quarantine": True,
                                          "would_be": None}
    [event] = await mx.events()
    assert event.details["quarantine"] is True


async def test_monitor_only_records_but_never_rejects(make_mx) -> None:
    world = await make_mx(lambda s: setattr(s.inbound.policy, "monitor_only", True))
    code, _ = await smtp_send(world, make_message("bob@strict.test"), "bob@strict.test")
    assert code == 250
    [msg] = await world.messages()
    assert msg.auth_results["policy"]["reason"] == "monitor_only"
    assert msg.auth_results["policy"]["would_be"] == "not_authenticated"
    assert "spf=fail" in unfolded_head(msg.raw)


async def test_per_domain_policy_override(make_mx) -> None:
    from mta.config import InboundDomainPolicy

    def tweak(s):
        s.inbound.domain_policies = [InboundDomainPolicy(domain="other.test",
                                                         monitor_only=True)]
    world = await make_mx(tweak)
    code, _ = await smtp_send(world, make_message("bob@strict.test"), "bob@strict.test",
                              rcpts=("anyone@other.test",))
    assert code == 250
    code, _ = await smtp_send(world, make_message("bob@strict.test"), "bob@strict.test")
    assert code == 550
    # Recipients under different policies cannot share one DATA reply.
    code, text = await smtp_send(world, make_message("alice@good.test"), "alice@good.test",
                                 rcpts=("user@ours.test", "anyone@other.test"))
    assert code == 250  # aiosmtplib sends to the accepted one; the other got 452
    msgs = await world.messages()
    assert msgs[-1].rcpt_to == ["user@ours.test"]


async def test_forged_auth_results_in_our_name_are_removed(mx) -> None:
    forged = make_message("bob@strict.test", extra="").replace(
        b"From:", b"Authentication-Results: MX.OURS.TEST; spf=pass; dmarc=pass\r\n"
                  b"Authentication-Results: elsewhere.test; spf=pass\r\nFrom:", 1)
    raw = dkim_sign(forged.replace(b"strict.test", b"good.test"), "good.test", "sel",
                    mx.keys["good"])
    code, _ = await smtp_send(mx, raw, "alice@good.test")
    assert code == 250
    [msg] = await mx.messages()
    head = unfolded_head(msg.raw)
    assert "MX.OURS.TEST" not in head
    assert "Authentication-Results: elsewhere.test; spf=pass" in head


async def test_null_sender_uses_helo_identity(mx) -> None:
    raw = dkim_sign(make_message("mailer-daemon@good.test"), "good.test", "sel",
                    mx.keys["good"])
    code, _ = await smtp_send(mx, raw, "")
    assert code == 250
    [msg] = await mx.messages()
    assert msg.mail_from == ""
    assert msg.auth_results["spf"]["identity"] == "helo"
    assert "smtp.helo=client.test" in unfolded_head(msg.raw)


async def test_two_from_headers_are_refused(mx) -> None:
    raw = make_message("alice@good.test", extra="From: boss@strict.test\r\n")
    code, text = await smtp_send(mx, raw, "alice@good.test")
    assert code == 550 and text.startswith("5.6.0"), (code, text)

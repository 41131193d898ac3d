"""MTA-STS as senders see it: the policy served over HTTP by the node's listener, parsed
by the same strict RFC 8461 parser our own delivery uses, and the DNS records that
`mta dns --mta-sts` prints and checks against the test DNS server."""

from __future__ import annotations

import httpx
import yaml

from mta.api.wellknown import policy_id
from mta.config_load import settings_from_text
from mta.queue.mtasts import parse_policy, parse_txt

STS = {"mode": "enforce", "mx": ["mx1.example.test", "*.mx.example.test"], "max_age": "1d",
       "tls_rpt_rua": ["mailto:tls@example.test"]}


def test_policy_is_served_as_configured_and_parses(make_admin):
    admin = make_admin(mta_sts=STS)
    # Senders fetch it at mta-sts.<their domain>: any Host gets the policy.
    r = httpx.get(f"{admin.base_url}/.well-known/mta-sts.txt",
                  headers={"Host": "mta-sts.example.test"}, timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].split(";")[0] == "text/plain"
    assert r.text == ("version: STSv1\r\nmode: enforce\r\nmx: mx1.example.test\r\n"
                      "mx: *.mx.example.test\r\nmax_age: 86400\r\n")
    policy = parse_policy(r.text, "x")
    assert (policy.mode, policy.mx, policy.max_age) == (
        "enforce", ("mx1.example.test", "*.mx.example.test"), 86400)
    assert policy.matches("mx1.example.test") and policy.matches("a.mx.example.test")
    assert not policy.matches("evil.example.test")


def test_default_policy_names_our_mx_host_in_testing_mode(admin):
    r = httpx.get(f"{admin.base_url}/.well-known/mta-sts.txt", timeout=10)
    policy = parse_policy(r.text, "x")
    assert (policy.mode, policy.mx, policy.max_age) == ("testing", ("mx.node.test",), 604800)


def test_disabled_policy_is_not_found(make_admin):
    admin = make_admin(mta_sts={"enabled": False})
    assert httpx.get(f"{admin.base_url}/.well-known/mta-sts.txt", timeout=10).status_code == 404


def test_dns_prints_and_checks_the_mta_sts_and_tls_rpt_records(make_admin, dns_server):
    admin = make_admin(mta_sts=STS)
    out = admin.cli("dns", "example.test", "--mta-sts", expect=1)
    assert out.count("missing") == 2
    sts_id = policy_id(admin.settings)
    txt = f"v=STSv1; id={sts_id}"
    assert f'TXT  _mta-sts.example.test "{txt}"' in out
    assert 'TXT  _smtp._tls.example.test "v=TLSRPTv1; rua=mailto:tls@example.test"' in out
    assert parse_txt([txt]) == sts_id  # what a sending MTA extracts from our record

    dns_server.add_txt("_mta-sts.example.test", txt)
    dns_server.add_txt("_smtp._tls.example.test", "v=TLSRPTv1; rua=mailto:tls@example.test")
    out = admin.cli("dns", "example.test", "--mta-sts")
    assert out.count("ok ") == 2 and "missing" not in out


def test_policy_id_changes_with_the_policy():
    def sts_id(**sts) -> str:
        return policy_id(settings_from_text(yaml.safe_dump({"mta_sts": {**STS, **sts}}), env={}))

    assert sts_id() == sts_id()  # every node computes the same id
    assert len({sts_id(), sts_id(mode="testing"), sts_id(max_age="2d"),
                sts_id(mx=["mx2.example.test"])}) == 4
    assert sts_id(tls_rpt_rua=["mailto:other@example.test"]) == sts_id()  # not in the policy


def test_bad_mta_sts_settings_name_the_key():
    import pytest

    from mta.config import ConfigError

    for sts, key in (({"mode": "strict"}, "mta_sts.mode"), ({"max_age": "2y"}, "mta_sts.max_age"),
                     ({"max_age": "400d"}, "mta_sts.max_age"), ({"mx": ["bad host"]}, "mta_sts.mx[0]"),
                     ({"tls_rpt_rua": ["tls@example.test"]}, "mta_sts.tls_rpt_rua[0]")):
        with pytest.raises(ConfigError) as info:
            settings_from_text(yaml.safe_dump({"mta_sts": sts}), env={})
        assert info.value.key_path == key

"""`mta config check` and the strict settings loader."""

import subprocess
import sys
from pathlib import Path

import pytest

from mta.config import ConfigError
from mta.config_load import load_settings, settings_from_text

ROOT = Path(__file__).resolve().parents[1]


def run_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mta", "config", "check", str(path)],
                          capture_output=True, text=True)


def test_example_config_is_valid():
    result = run_check(ROOT / "config" / "mta.example.yaml")
    assert result.returncode == 0, result.stderr


def test_misspelled_key_names_key_and_line(tmp_path):
    cfg = tmp_path / "mta.yaml"
    cfg.write_text("node:\n  hostname: mx.test\nlisteners:\n  mx:\n    addres: 0.0.0.0\n")
    result = run_check(cfg)
    assert result.returncode != 0
    assert "listeners.mx.addres" in result.stderr
    assert f"{cfg}:5:" in result.stderr


def test_wrong_type_names_key_and_line(tmp_path):
    cfg = tmp_path / "mta.yaml"
    cfg.write_text("limits:\n  max_sessions_per_ip: twenty\n")
    result = run_check(cfg)
    assert result.returncode != 0
    assert "limits.max_sessions_per_ip" in result.stderr and ":2:" in result.stderr
    assert "integer" in result.stderr


@pytest.mark.parametrize("text, key", [
    ("limits:\n  inbound_message_size: big\n", "limits.inbound_message_size"),
    ("retry:\n  first_retry: soon\n", "retry.first_retry"),
    ("dns:\n  nameservers: 127.0.0.1\n", "dns.nameservers"),
    ("listeners:\n  http:\n    enabled: yes please\n", "listeners.http.enabled"),
    ("logging:\n  level: loud\n", "logging.level"),
    ("listeners:\n  mx:\n    port: 70000\n", "listeners.mx.port"),
    ("listeners:\n  mx:\n    proxy_protocol: {trusted: [10.0.0.300/8]}\n",
     "listeners.mx.proxy_protocol.trusted[0]"),
    ("listeners:\n  mx:\n    proxy_protocol: {required: true}\n",
     "listeners.mx.proxy_protocol.trusted"),
    ("listeners:\n  http:\n    proxy_protocol: {trusted: [10.0.0.0/8]}\n",
     "listeners.http.proxy_protocol"),
    ("webhooks:\n  timeout: 30s\n  lease_seconds: 30s\n", "webhooks.lease_seconds"),
])
def test_bad_values_are_rejected_with_their_key(text, key):
    with pytest.raises(ConfigError) as err:
        settings_from_text(text, env={})
    assert err.value.key_path == key


def test_units_and_environment_overrides(tmp_path):
    cfg = tmp_path / "mta.yaml"
    cfg.write_text("state_dir: st\nlimits:\n  inbound_message_size: 10MiB\n"
                   "retry:\n  max_age: 2d\n  delay_warning: null\n")
    s = load_settings(cfg, env={"MTA_DATABASE_URL": "postgresql+asyncpg://u@h/db",
                                "MTA_SRS_SECRETS": "new, old"})
    assert s.limits.inbound_message_size == 10 * 1024 * 1024
    assert s.retry.max_age == 2 * 86400 and s.retry.delay_warning is None
    assert s.database.url == "postgresql+asyncpg://u@h/db"
    assert s.srs.secrets == ["new", "old"]
    assert s.state_dir == str(tmp_path / "st")  # relative to the config file


def test_partial_section_keeps_that_sections_own_defaults():
    s = settings_from_text("listeners:\n  submission:\n    port: 4650\n  mx:\n    port: 25\n",
                           env={})
    assert s.listeners.submission.enabled is False  # off until given a certificate
    assert s.listeners.submission.port == 4650
    assert s.listeners.mx.enabled is True and s.listeners.mx.port == 25
    assert s.listeners.submission_starttls.port == 5870


def test_proxy_protocol_settings():
    s = settings_from_text("listeners:\n  submission_starttls:\n    enabled: false\n"
                           "    proxy_protocol:\n      trusted: [10.0.0.0/24, 'fd00::/64']\n"
                           "      required: false\n      timeout: 2s\n", env={})
    pp = s.listeners.submission_starttls.proxy_protocol
    assert (pp.trusted, pp.required, pp.timeout) == (["10.0.0.0/24", "fd00::/64"], False, 2)
    assert s.listeners.mx.proxy_protocol is None  # off unless configured


@pytest.mark.parametrize("text, key, line", [
    ("node:\n  hostname: a.test\nlogging:\n  format: xml\n", "logging.format", 4),
    ("logging:\n  level: loud\n", "logging.level", 2),
    ("inbound:\n  bare_line_endings: fix\n", "inbound.bare_line_endings", 2),
    ("routing:\n  in_session_timeout: 5s\n  dmarc_safe_from: drop\n",
     "routing.dmarc_safe_from", 3),
    ("delivery:\n  smart_host:\n    host: r.test\n    tls: maybe\n",
     "delivery.smart_host.tls", 4),
    ("mta_sts:\n  mode: strict\n", "mta_sts.mode", 2),
    ("srs:\n  domain: srs.test\n  max_age_days: 0\n", "srs.max_age_days", 3),
    ("srs:\n  max_age_days: -1\n", "srs.max_age_days", 2),
    ("srs:\n  max_age_days: 2000\n", "srs.max_age_days", 2),
    ("dns:\n  min_ttl: 2d\n  max_ttl: 1d\n", "dns.min_ttl", 2),
    ("handlers:\n  registry:\n    - name: x\n      target: y.py\n      fallback: bogus\n",
     "handlers.registry[0].fallback", 5),
    ("handlers:\n  registry:\n    - name: x\n      target: y.py\n      fallback: forward\n",
     "handlers.registry[0].forward_to", 3),  # not in the file: its entry's line
])
def test_value_errors_name_file_and_line(tmp_path, text, key, line):
    """Errors found after the YAML was read (enums, ranges, combinations) name the line
    too, in `mta config check` as at start, so nothing that passes the check fails then."""
    cfg = tmp_path / "mta.yaml"
    cfg.write_text(text)
    result = run_check(cfg)
    assert result.returncode == 1
    assert f"{cfg}:{line}: {key}:" in result.stderr, result.stderr


def test_documented_node_keys_are_read():
    s = settings_from_text("node:\n  hostname: mx.a.test\n  mx_hosts: [mx1.a.test, mx2.a.test]\n"
                           "  spf_include: _spf.a.test\n", env={})
    assert s.node.mx_hosts == ["mx1.a.test", "mx2.a.test"]
    assert s.node.spf_include == "_spf.a.test"
    from mta.dnsrecords import mx_hosts, spf_include

    assert mx_hosts(s) == ["mx1.a.test", "mx2.a.test"] and spf_include(s) == "_spf.a.test"


def test_check_refuses_what_would_fail_at_start(tmp_path, tls):
    """Certificates that do not load and handlers that do not import pass the loader but
    stop `mta serve`: `mta config check` tries them as the node does, with file:line."""
    cert, key = tls.write_server_files(tmp_path, "mx.a.test")
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    _, other_key = tls.write_server_files(other_dir, "mx.b.test")
    good = tmp_path / "good.yaml"
    good.write_text(f"listeners:\n  mx:\n    tls_cert: {cert}\n    tls_key: {key}\n")
    assert run_check(good).returncode == 0, run_check(good).stderr
    cases = [
        (f"listeners:\n  mx:\n    tls_cert: {tmp_path}/none.pem\n    tls_key: {key}\n",
         "listeners.mx.tls_cert", 3, "does not load"),
        (f"listeners:\n  http:\n    port: 8080\n    tls_cert: {cert}\n"
         f"    tls_key: {other_key}\n", "listeners.http.tls_cert", 4, "does not load"),
        ("handlers:\n  registry:\n    - name: x\n      target: no_such_module_here:email\n",
         "handlers.registry[0].target", 4, "no_such_module_here"),
    ]
    for text, key_path, line, words in cases:
        cfg = tmp_path / "mta.yaml"
        cfg.write_text(text)
        result = run_check(cfg)
        assert result.returncode == 1 and result.stdout == "", result.stdout
        assert f"{cfg}:{line}: {key_path}: " in result.stderr and words in result.stderr, \
            result.stderr
        assert result.stderr.count("\n") == 1, result.stderr

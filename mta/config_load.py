"""Reading the daemon settings (the tree in mta/config.py) from YAML.

Loading is strict: the YAML's shape is checked against the settings dataclasses
(mta.yamlschema), then the environment overrides (`ENVIRONMENT_OVERRIDES`) apply, then
the values are checked where types alone cannot (ranges, keys that go together, what a
listener needs). Every error names its key path and the line of the file.
"""

from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from mta.config import (
    ENVIRONMENT_OVERRIDES,
    InboundSettings,
    Listener,
    MtaStsSettings,
    ProxyProtocolSettings,
    Settings,
)
from mta.yamlschema import ConfigError, build, compose_mapping

__all__ = ["load_settings", "settings_from_text", "with_line"]


def _apply_environment(settings: Settings, env: typing.Mapping[str, str]) -> None:
    for var, key_path in ENVIRONMENT_OVERRIDES.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        target: Any = settings
        for part in key_path[:-1]:
            target = getattr(target, part)
        current = getattr(target, key_path[-1])
        value: Any = [s.strip() for s in raw.split(",") if s.strip()] if isinstance(
            current, list) else raw
        setattr(target, key_path[-1], value)


def _check_semantics(s: Settings) -> None:
    src = s.source
    if s.logging.level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError("logging.level", "must be debug, info, warning or error", source=src)
    if s.logging.format not in ("auto", "json", "text"):
        raise ConfigError("logging.format", "must be auto, json or text", source=src)
    for name in ("mx", "submission", "submission_starttls", "http", "metrics"):
        lst: Listener = getattr(s.listeners, name)
        if not 0 <= lst.port <= 65535:
            raise ConfigError(f"listeners.{name}.port", "must be between 0 and 65535", source=src)
        if bool(lst.tls_cert) != bool(lst.tls_key):
            raise ConfigError(f"listeners.{name}", "tls_cert and tls_key go together", source=src)
        _check_proxy_protocol(name, lst.proxy_protocol, src)
    for name in ("submission", "submission_starttls"):
        lst = getattr(s.listeners, name)
        if lst.enabled and not lst.tls_cert:
            raise ConfigError(f"listeners.{name}", "SMTP submission needs tls_cert and tls_key "
                              "(clients send their API token over it); set them, or set "
                              "enabled: false", source=src)
    _check_inbound(s.inbound, src)
    if s.routing.dmarc_safe_from not in ("rewrite", "forward", "reject"):
        raise ConfigError("routing.dmarc_safe_from", "must be rewrite, forward or reject",
                          source=src)
    if s.delivery.smart_host.tls not in ("starttls", "implicit", "none"):
        raise ConfigError("delivery.smart_host.tls", "must be starttls, implicit or none",
                          source=src)
    if not 0 < s.delivery.port <= 65535:
        raise ConfigError("delivery.port", "must be between 1 and 65535", source=src)
    if s.delivery.soft_bounce.threshold < 0:
        raise ConfigError("delivery.soft_bounce.threshold", "must be 0 (off) or more",
                          source=src)
    if s.retry.backoff_factor < 1:
        raise ConfigError("retry.backoff_factor", "must be at least 1", source=src)
    if not 0 <= s.retry.jitter < 1:
        raise ConfigError("retry.jitter", "must be in [0, 1)", source=src)
    if s.observe.retention_batch < 1:
        raise ConfigError("observe.retention_batch", "must be at least 1", source=src)
    _check_mta_sts(s.mta_sts, src)
    dmarc_reports = s.dmarc_reports
    if dmarc_reports.enabled and ("@" not in dmarc_reports.sender or not dmarc_reports.account):
        raise ConfigError("dmarc_reports", "enabled needs sender (an address at a sending "
                          "domain) and account", source=src)
    # What the SRS signer refuses at start (its timestamp has 10 bits of days).
    if not 1 <= s.srs.max_age_days <= 1023:
        raise ConfigError("srs.max_age_days", "must be between 1 and 1023 (days)", source=src)
    if s.dns.min_ttl > s.dns.max_ttl:
        raise ConfigError("dns.min_ttl", "must not be above dns.max_ttl", source=src)
    # A claim that ends while its POST may still be under way would let another node
    # send the same event again.
    if s.webhooks.lease_seconds <= s.webhooks.timeout:
        raise ConfigError("webhooks.lease_seconds", "must be more than webhooks.timeout",
                          source=src)
    _check_dnssec(s, src)


def _off(value: str | None) -> str | None:
    """YAML 1.1 reads a bare `off` as false, which a string setting receives as "False"."""
    return "off" if value == "False" else value


def _check_dnssec(s: Settings, src: str) -> None:
    import ipaddress

    s.dns.dnssec = _off(s.dns.dnssec)
    s.delivery.dane.mode = _off(s.delivery.dane.mode)
    for d in s.delivery.dane.destinations:
        d.mode = _off(d.mode)
    if s.dns.dnssec not in ("off", "trust_ad"):
        raise ConfigError("dns.dnssec", "must be off or trust_ad", source=src)
    if s.dns.dnssec == "trust_ad":
        # The AD bit crosses the network unauthenticated: only a resolver on this host
        # can be believed (as Postfix and RFC 6698 §4 advise).
        if not s.dns.nameservers:
            raise ConfigError("dns.nameservers", "dns.dnssec: trust_ad needs the validating "
                              "resolver named here (e.g. address: 127.0.0.1)", source=src)
        for i, ns in enumerate(s.dns.nameservers):
            try:
                loopback = ipaddress.ip_address(ns.address).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise ConfigError(f"dns.nameservers[{i}].address", "dns.dnssec: trust_ad "
                                  "believes the resolver's AD bit, so it must be a validating "
                                  "resolver on this host (a loopback address)", source=src)
    dane = s.delivery.dane
    if dane.mode not in (None, "off", "opportunistic"):
        raise ConfigError("delivery.dane.mode", "must be off or opportunistic (required is "
                          "set per domain in delivery.dane.destinations)", source=src)
    seen: set[str] = set()
    for i, d in enumerate(dane.destinations):
        name = d.domain.strip().lower().rstrip(".")
        if not name:
            raise ConfigError(f"delivery.dane.destinations[{i}].domain", "is required",
                              source=src)
        if name in seen:
            raise ConfigError(f"delivery.dane.destinations[{i}].domain",
                              f"{name} is given twice", source=src)
        seen.add(name)
        if d.mode not in ("off", "opportunistic", "required"):
            raise ConfigError(f"delivery.dane.destinations[{i}].mode",
                              "must be off, opportunistic or required", source=src)
    if s.delivery.smart_host.host and any(d.mode == "required" for d in dane.destinations):
        raise ConfigError("delivery.dane.destinations", "DANE cannot be required through "
                          "delivery.smart_host: the relay makes the last hop", source=src)
    wants = dane.mode == "opportunistic" or any(d.mode != "off" for d in dane.destinations)
    if wants and s.dns.dnssec != "trust_ad":
        raise ConfigError("delivery.dane", "DANE needs DNSSEC-authenticated answers: set "
                          "dns.dnssec: trust_ad with a validating resolver on loopback in "
                          "dns.nameservers", source=src)


def _check_proxy_protocol(name: str, pp: ProxyProtocolSettings | None, src: str) -> None:
    import ipaddress

    if pp is None:
        return
    key = f"listeners.{name}.proxy_protocol"
    if name in ("http", "metrics"):
        raise ConfigError(key, "only the SMTP listeners (mx, submission, "
                          "submission_starttls) speak the PROXY protocol", source=src)
    if not pp.trusted:
        raise ConfigError(f"{key}.trusted", "name the load balancers' networks (CIDR); "
                          "a header is never taken from anyone else", source=src)
    for i, net in enumerate(pp.trusted):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"{key}.trusted[{i}]", f"not an IP network: {net!r}",
                              source=src) from None
    if not 0 < pp.timeout <= 60:
        raise ConfigError(f"{key}.timeout", "must be more than 0 and at most 60s", source=src)


def _check_mta_sts(sts: MtaStsSettings, src: str) -> None:
    if sts.mode not in ("enforce", "testing", "none"):
        raise ConfigError("mta_sts.mode", "must be enforce, testing or none", source=src)
    if not 0 < sts.max_age <= 31557600 or sts.max_age != int(sts.max_age):
        raise ConfigError("mta_sts.max_age", "must be whole seconds, at most one year "
                          "(RFC 8461 §3.2)", source=src)
    for i, mx in enumerate(sts.mx):
        if not re.fullmatch(r"(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+\.?", mx):
            raise ConfigError(f"mta_sts.mx[{i}]", f"not an MX pattern: {mx!r}", source=src)
    for i, uri in enumerate(sts.tls_rpt_rua):
        if not uri.startswith(("mailto:", "https://")):
            raise ConfigError(f"mta_sts.tls_rpt_rua[{i}]", "must be a mailto: or https: URI",
                              source=src)


def _check_inbound(inbound: InboundSettings, src: str) -> None:
    import ipaddress

    if inbound.bare_line_endings not in ("reject", "normalize"):
        raise ConfigError("inbound.bare_line_endings", "must be reject or normalize", source=src)
    for i, net in enumerate(inbound.rbl.allowlist):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"inbound.rbl.allowlist[{i}]",
                              f"not an IP network: {net!r}", source=src) from None
    seen: set[str] = set()
    for i, dp in enumerate(inbound.domain_policies):
        name = dp.domain.strip().lower().rstrip(".")
        if not name:
            raise ConfigError(f"inbound.domain_policies[{i}].domain", "is required", source=src)
        if name in seen:
            raise ConfigError(f"inbound.domain_policies[{i}].domain",
                              f"{name} is given twice", source=src)
        seen.add(name)


def settings_from_text(text: str, source: str = "<string>",
                       env: typing.Mapping[str, str] | None = None) -> Settings:
    root = compose_mapping(text, source)
    try:
        settings = build(Settings, root, "", source) if root is not None else Settings()
        settings.source = source
        _apply_environment(settings, os.environ if env is None else env)
        _check_semantics(settings)
    except ConfigError as exc:
        raise with_line(exc, root, source) from None
    return settings


def with_line(exc: ConfigError, root: yaml.Node | None, source: str) -> ConfigError:
    """`exc` naming the file's line of its key (or of its nearest enclosing one): a
    check of values (not of the YAML's shape) knows only the key."""
    if exc.line is not None or root is None:
        return exc
    lines = _key_lines(root)
    key = exc.key_path
    while key and key not in lines:
        key = key[:key.rindex("[")] if key.endswith("]") else key.rpartition(".")[0]
    if not key:
        return exc
    return ConfigError(exc.key_path, exc.message, lines[key], source)


def _key_lines(node: yaml.Node, path: str = "") -> dict[str, int]:
    """Every key path of a YAML document with the line it is on."""
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{path}.{key_node.value}" if path else str(key_node.value)
            out[key] = key_node.start_mark.line + 1
            out.update(_key_lines(value_node, key))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = f"{path}[{i}]"
            out[key] = item.start_mark.line + 1
            out.update(_key_lines(item, key))
    return out


def load_settings(path: str | os.PathLike[str],
                  env: typing.Mapping[str, str] | None = None) -> Settings:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read {p}: {exc.strerror}") from None
    settings = settings_from_text(text, str(p), env)
    # A relative state_dir is relative to the config file, so the example config works
    # from a checkout without writing under /var/lib.
    if not Path(settings.state_dir).is_absolute():
        settings.state_dir = str((p.parent / settings.state_dir).resolve())
    return settings

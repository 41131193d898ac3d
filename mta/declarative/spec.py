"""The routing YAML document (`mta apply` / `mta export`): its typed shape and a strict
loader whose errors name the key path and the line, like the daemon configuration's.

The shape (config/routing.example.yaml documents every key):

    version: 1
    accounts:
      - account: acme                    # id or name of an existing account
        destination_addresses: [ops@dest.example]
        zones:
          - name: example.com
            routing: true
            subaddressing: true
            subdomains: [lists.example.com]
            catch_all: {enabled: false, drop: true}
            rules:
              - {name: ops, to: ops@example.com, forward: [ops@dest.example]}
            sending_domains:
              - {name: example.com}

A collection key left out (`destination_addresses`, `subdomains`, `rules`,
`sending_domains`, `catch_all`) means "not managed by this file": apply neither
changes nor prunes it. `[]` means "none", and with --prune deletes what exists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mta.config import ConfigError
from mta.yamlschema import build, compose_mapping

__all__ = ["AccountSpec", "ActionSpec", "CatchAllSpec", "Document", "Loaded", "MatcherSpec",
           "RouteActions", "RuleSpec", "SendingDomainSpec", "ZoneSpec", "load_document",
           "load_text"]


@dataclass
class MatcherSpec:
    type: str = "literal"  # literal | all
    field: str = "to"
    value: str | None = None


@dataclass
class ActionSpec:
    type: str = ""  # forward | worker | drop
    value: list[str] | None = None


@dataclass
class RouteActions:
    """What a rule or the catch-all does: one of the shorthand keys (`forward`, `worker`,
    `drop`) or `actions` (the admin API's form)."""

    forward: list[str] | None = None
    worker: list[str] | None = None
    drop: bool | None = None
    actions: list[ActionSpec] | None = None


@dataclass
class CatchAllSpec(RouteActions):
    enabled: bool = False


@dataclass
class RuleSpec(RouteActions):
    name: str = ""
    id: str | None = None  # only for rules whose name is empty or shared in the database
    priority: int = 0
    enabled: bool = True
    to: str | None = None  # shorthand for matchers: [{type: literal, field: to, value}]
    matchers: list[MatcherSpec] | None = None
    # Or a pattern instead of matchers (mta/routing/patterns.py): one of these two.
    wildcard: str | None = None  # sales-*@example.com
    regex: str | None = None  # RE2, matched against the whole address


@dataclass
class SendingDomainSpec:
    name: str = ""
    enabled: bool | None = None
    ed25519: bool = False  # add an Ed25519 key too (never removes one)
    drop_suppressed_recipients: bool | None = None
    preview_enabled: bool | None = None


@dataclass
class ZoneSpec:
    name: str = ""
    routing: bool | None = None
    subaddressing: bool | None = None
    subdomains: list[str] | None = None
    catch_all: CatchAllSpec | None = None
    rules: list[RuleSpec] | None = None
    sending_domains: list[SendingDomainSpec] | None = None


@dataclass
class AccountSpec:
    account: str = ""
    destination_addresses: list[str] | None = None
    zones: list[ZoneSpec] = field(default_factory=list)


@dataclass
class Document:
    version: int = 1
    accounts: list[AccountSpec] = field(default_factory=list)


_PARENT = re.compile(r"(.*)(\.[^.\[\]]+|\[\d+\])$")


@dataclass
class Loaded:
    """A parsed document plus the line of every key path, for errors found later
    (against the database) that must still point into the file."""

    doc: Document
    source: str = "<string>"
    lines: dict[str, int] = field(default_factory=dict)

    def line(self, path: str) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            m = _PARENT.fullmatch(path)
            path = m.group(1) if m else ""
        return None

    def error(self, path: str, message: str) -> ConfigError:
        return ConfigError(path, message, self.line(path), self.source)


def _index(node: yaml.Node, path: str, out: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            p = f"{path}.{key.value}" if path else str(key.value)
            out.setdefault(p, key.start_mark.line + 1)
            _index(value, p, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            p = f"{path}[{i}]"
            out.setdefault(p, item.start_mark.line + 1)
            _index(item, p, out)


def load_text(text: str, source: str = "<string>") -> Loaded:
    root = compose_mapping(text, source)
    if root is None:
        return Loaded(Document(), source)
    loaded = Loaded(build(Document, root, "", source), source)
    _index(root, "", loaded.lines)
    if loaded.doc.version != 1:
        raise loaded.error("version", "only version 1 is known")
    return loaded


def load_document(path: str | Path) -> Loaded:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read {p}: {exc.strerror}") from None
    return load_text(text, str(p))

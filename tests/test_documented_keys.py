"""Every documented configuration key is one the loader knows and the code reads
(issue 16): a key written in config/*.yaml (commented-out examples included), or named
as `section.key` in README.md, HACKING.md, docs/ or deploy/, that the schema lacks fails
here, and so does a schema key that no module reads."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path

import pytest
import yaml

from mta.config import Settings
from mta.declarative.spec import Document

ROOT = Path(__file__).resolve().parents[1]
DAEMON_FILES = ["config/mta.example.yaml", "config/first-mail.yaml"]
ROUTING_FILES = ["config/routing.example.yaml", "config/first-mail.routing.yaml"]
PROSE = ["README.md", "HACKING.md", "deploy/README.md", "deploy/install.sh",
         *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]

# Dotted words in the prose that are not configuration keys, each with why.
NOT_KEYS = {
    "listeners.mx.addres": "README: the example of the error a misspelled key gets",
    "inbound.forwarded": "docs/webhooks.md: a webhook event type",
    "inbound.rejected": "docs/webhooks.md: a webhook event type",
}
# Schema keys read other than by attribute name outside mta/config.py (and
# config_load.py, which checks them), each with how.
READ_OTHERWISE = {
    "state_dir": "through Settings.state_path (mta/config.py)",
}
_FILE_SUFFIXES = ("yaml", "py", "md", "sh", "json", "test", "com", "example", "org")


def schema_paths(cls: type, path: str = "") -> dict[str, str]:
    """{key path: field name} of every key the loader accepts (lists of sections as
    `key[]`), sections included."""
    out: dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        p = f"{path}.{f.name}" if path else f.name
        out[p] = f.name
        tp = hints[f.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            out.update(schema_paths(typing.get_args(tp)[0], f"{p}[]"))
        elif dataclasses.is_dataclass(tp):
            out.update(schema_paths(tp, p))
    return out


def written_keys(node: yaml.Node, path: str = "") -> list[tuple[str, int]]:
    """(key path, line) of every key of a YAML document."""
    out: list[tuple[str, int]] = []
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            p = f"{path}.{k.value}" if path else str(k.value)
            out.append((p, k.start_mark.line + 1))
            out += written_keys(v, p)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            out += written_keys(item, f"{path}[]")
    return out


_KEY_LINE = re.compile(r"^(\s*)([a-z_]+):(?:\s*(\S.*?))?\s*(?:#.*)?$")
_COMMENTED = re.compile(r"^\s*#(\s*)(-\s+)?([a-z_]+):\s*(.*)$")


def commented_keys(text: str) -> list[tuple[str, int]]:
    """(key path, line) of the keys of commented-out examples (`#  - address: ...`):
    their section is the nearest key above, to their left, that opens a block or is an
    empty `[]` (then they are keys of its items) or `{}`; the keys of a `{a: 1}` value
    count too."""
    out: list[tuple[str, int]] = []
    stack: list[tuple[int, str, str]] = []  # (indent, path, value: "", "[]", "{}" or other)
    for number, raw in enumerate(text.splitlines(), 1):
        m = _KEY_LINE.match(raw)
        if m and not raw.lstrip().startswith("#"):
            indent, key = len(m.group(1)), m.group(2)
            while stack and stack[-1][0] >= indent:
                stack.pop()
            parent = stack[-1][1] if stack else ""
            stack.append((indent, f"{parent}.{key}" if parent else key, m.group(3) or ""))
            continue
        c = _COMMENTED.match(raw)
        value = re.sub(r"\s+#.*", "", c.group(4)).strip() if c else ""
        if not c or (" " in value and not value.startswith(("[", "{", '"', "'"))):
            continue  # not a key but prose ("auto: text on a terminal, ...")
        column = raw.index("#") + 1 + len(c.group(1))
        opener = next(((p, v) for i, p, v in reversed(stack)
                       if i < column and v in ("", "[]", "{}")), None)
        if opener is None:
            continue
        parent, kind = opener
        path = f"{parent}[].{c.group(3)}" if kind == "[]" else f"{parent}.{c.group(3)}"
        out.append((path, number))
        if value.startswith("{"):
            out += [(f"{path}.{k}", number) for k in re.findall(r"([a-z_]+):", value)]
    return out


def _normalize(path: str) -> str:
    return re.sub(r"\[\d*\]", "[]", path)


@pytest.mark.parametrize("name", DAEMON_FILES + ROUTING_FILES)
def test_every_key_of_the_example_files_is_in_the_schema(name):
    text = (ROOT / name).read_text()
    schema = schema_paths(Settings if name in DAEMON_FILES else Document)
    # A commented example inside a list's item is placed without the item's `[]`.
    loose = {p.replace("[]", "") for p in schema}
    keys = written_keys(yaml.compose(text))
    assert keys, name
    unknown = [f"{name}:{line}: {path}" for path, line in keys if path not in schema]
    unknown += [f"{name}:{line}: {path} (commented)" for path, line in commented_keys(text)
                if path.replace("[]", "") not in loose]
    assert not unknown, "documented keys the loader does not know:\n" + "\n".join(unknown)


def test_commented_examples_are_seen():
    """The helper finds the keys of a commented-out example (else the test above
    would pass whatever the comments say)."""
    found = dict(commented_keys((ROOT / "config/mta.example.yaml").read_text()))
    assert "dns.nameservers[].address" in found
    assert "listeners.mx.proxy_protocol.trusted" in found
    assert "handlers.registry[].target" in found


@pytest.mark.parametrize("name", PROSE + DAEMON_FILES)
def test_keys_named_in_the_documentation_exist(name):
    schema = schema_paths(Settings)
    tops = {p for p in schema if "." not in p}
    text = (ROOT / name).read_text()
    unknown = []
    for m in re.finditer(r"(?<![\w./$-])([a-z_]+(?:\.[a-z_]+(?:\[\d*\])?)+)(?![\w(/-])", text):
        word = m.group(1)
        if word.split(".")[0] not in tops or word in NOT_KEYS \
                or word.rsplit(".", 1)[-1] in _FILE_SUFFIXES:
            continue
        if _normalize(word) not in schema:
            unknown.append(f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {word}")
    assert not unknown, "documented keys the loader does not know:\n" + "\n".join(unknown)


def test_every_schema_key_is_read_by_the_code():
    sources = "\n".join(p.read_text() for p in (ROOT / "mta").rglob("*.py")
                        if p.name not in ("config.py", "config_load.py", "config_show.py"))
    unread = sorted(
        path for path, field in schema_paths(Settings).items()
        if field not in READ_OTHERWISE
        and not re.search(rf"\.{field}\b|[\"']{field}[\"']", sources))
    assert not unread, f"settings no module reads (remove them, or read them): {unread}"

"""Strict conversion of YAML into typed dataclasses, used by the daemon settings
(mta/config.py) and the declarative routing files (mta/declarative/).

A mapping fills a dataclass by its type hints: an unknown key, a key given twice or a
value of the wrong type is a `ConfigError` naming the key path and the YAML line.
Durations take a unit (`30s`, `5m`, `4h`, `5d`) or are seconds; sizes take a unit
(`25MiB`, `512KiB`) or are bytes.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any

import yaml

__all__ = ["ConfigError", "Duration", "Size", "build", "compose_mapping", "line", "parse_duration",
           "parse_size"]


class ConfigError(ValueError):
    """A configuration problem, naming the key path and (when known) the line."""

    def __init__(self, path: str, message: str, line: int | None = None, source: str = ""):
        self.key_path = path
        self.message = message
        self.line = line
        where = f"{source}:{line}: " if line is not None and source else (
            f"line {line}: " if line is not None else "")
        super().__init__(f"{where}{path or '<top>'}: {message}")


class Duration(float):
    """Seconds, written in YAML as `30s`, `5m`, `4h`, `5d` or a plain number."""


class Size(int):
    """Bytes, written in YAML as `25MiB`, `512KiB`, `5MB` or a plain number."""


_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
               "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def parse_duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 4h")
    if isinstance(value, (int, float)):
        return float(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*", str(value))
    if not m:
        raise ValueError(f"expected a duration such as 30s, 5m or 4h, got {value!r}")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def parse_size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a size such as 25MiB")
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"expected a size such as 25MiB or 512KiB, got {value!r}")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]




def compose_mapping(text: str, source: str) -> yaml.MappingNode | None:
    """The YAML document `text` as a node tree (None when it is empty); a ConfigError
    with the line when it is not YAML or its top level is not a mapping."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError("", f"not valid YAML: {getattr(exc, 'problem', exc)}",
                          mark.line + 1 if mark else None, source) from None
    if root is not None and not isinstance(root, yaml.MappingNode):
        raise ConfigError("", "the top level must be a mapping", line(root), source)
    return root


def line(node: yaml.Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None else None


def _convert(tp: Any, node: yaml.Node, path: str, src: str, default: Any = None) -> Any:
    """Convert one YAML node to `tp`. A mapping for a settings section starts from that
    field's own default (e.g. the submission listener is off unless enabled), so a
    partial section changes only the keys it names."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], node, path, src, default)
    if dataclasses.is_dataclass(tp):
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            return default if default is not None else tp()
        if not isinstance(node, yaml.MappingNode):
            raise ConfigError(path, "expected a mapping", line(node), src)
        return build(tp, node, path, src, default)
    if origin is list:
        if not isinstance(node, yaml.SequenceNode):
            raise ConfigError(path, "expected a list", line(node), src)
        return [_convert(args[0], item, f"{path}[{i}]", src) for i, item in enumerate(node.value)]
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(path, f"expected a {_type_name(tp)}", line(node), src)
    value = yaml.safe_load(yaml.serialize(node))
    try:
        return _scalar(tp, value)
    except ValueError as exc:
        raise ConfigError(path, str(exc), line(node), src) from None


def _type_name(tp: Any) -> str:
    return {str: "string", int: "integer", float: "number", bool: "boolean",
            Duration: "duration", Size: "size"}.get(tp, getattr(tp, "__name__", str(tp)))


def _scalar(tp: Any, value: Any) -> Any:
    if tp is Duration:
        return Duration(parse_duration(value))
    if tp is Size:
        return Size(parse_size(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if value is None or isinstance(value, (dict, list)):
            raise ValueError(f"expected a string, got {value!r}")
        return str(value)
    raise ValueError(f"unsupported type {tp!r}")


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def build(cls: type, node: yaml.MappingNode, path: str, src: str, base: Any = None) -> Any:
    """The dataclass `cls` from a YAML mapping (over `base`'s values when given); every
    error a ConfigError naming the key path and line."""
    hints = typing.get_type_hints(cls)
    known = _fields(cls)
    kwargs: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = key_node.value
        key_path = f"{path}.{key}" if path else key
        if key not in known:
            hint = ", ".join(sorted(known))
            raise ConfigError(key_path, f"unknown key (known keys here: {hint})",
                              line(key_node), src)
        if key in kwargs:
            raise ConfigError(key_path, "key given twice", line(key_node), src)
        kwargs[key] = _convert(hints[key], value_node, key_path, src,
                               _field_default(known[key]))
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)

"""`mta config show`: the configuration a node would run with — the file, its defaults,
the environment overrides (ENVIRONMENT_OVERRIDES) and generated secrets applied —
as YAML, with every secret masked."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import yaml
from sqlalchemy.engine import make_url

from mta.config import ENVIRONMENT_OVERRIDES, Duration, Settings, Size

__all__ = ["effective_config", "effective_tree"]

MASK = "********"
# Key paths whose values are secrets (a list: every item is masked).
SECRET_PATHS = {("secret_key",), ("srs", "secrets"), ("delivery", "smart_host", "password")}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not f.metadata.get("internal")}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, Duration):  # as written in the file: 30s, 5m, 4h, 5d
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
            if value >= size and float(value / size).is_integer():
                return f"{int(value // size)}{unit}"
        return f"{float(value):g}s"
    if isinstance(value, Size):
        for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
            if value >= size and value % size == 0:
                return f"{value // size}{unit}"
        return int(value)
    return value


def _mask(tree: dict) -> None:
    for path in SECRET_PATHS:
        parent = tree
        for part in path[:-1]:
            parent = parent[part]
        value = parent[path[-1]]
        if isinstance(value, list):
            parent[path[-1]] = [MASK for _ in value]
        elif value:
            parent[path[-1]] = MASK
    url = tree["database"]["url"]
    if url:
        tree["database"]["url"] = make_url(url).render_as_string(hide_password=True)


def effective_tree(settings: Settings) -> dict:
    """The settings as plain data, secrets masked."""
    tree = _plain(settings)
    _mask(tree)
    return tree


def effective_config(settings: Settings, env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    tree = effective_tree(settings)
    lines = [f"# effective configuration of {settings.source or '(defaults)'}"]
    for var, path in ENVIRONMENT_OVERRIDES.items():
        if env.get(var):
            lines.append(f"# {'.'.join(path)} from ${var}")
    text = yaml.safe_dump(tree, sort_keys=False, default_flow_style=False)
    return "\n".join(lines) + "\n" + text

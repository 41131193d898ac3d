"""What `mta config check` verifies beyond the loader: the values a node would fail on
at start, tried the way the node tries them, so nothing that passes the check fails
then. The certificate and key of every enabled listener load (as the listeners load
them), and every registered handler imports (as the handler runner imports it).
Each problem names the key and the file's line.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from mta.config import ConfigError, Settings
from mta.config_load import with_line

__all__ = ["startup_problems"]

_LISTENERS = ("mx", "submission", "submission_starttls", "http", "metrics")


def startup_problems(settings: Settings, path: str) -> list[ConfigError]:
    from mta.handlers.loader import Registry
    from mta.smtp.tls import server_context

    problems: list[ConfigError] = []
    for name in _LISTENERS:
        listener = getattr(settings.listeners, name)
        if not listener.enabled or not listener.tls_cert:
            continue
        try:
            server_context(listener)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            problems.append(ConfigError(
                f"listeners.{name}.tls_cert", f"{listener.tls_cert} with {listener.tls_key} "
                f"does not load: {getattr(exc, 'strerror', None) or exc}"))
    for i, entry in enumerate(settings.handlers.registry):
        try:
            Registry.load(dataclasses.replace(settings.handlers, registry=[entry]), fresh=True)
        except Exception as exc:  # noqa: BLE001 - whatever the handler's import raises
            problems.append(ConfigError(f"handlers.registry[{i}].target",
                                        f"{entry.target} does not load: {exc}"))
    if not problems:
        return []
    try:
        root = yaml.compose(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        root = None
    return [with_line(p, root, path) for p in problems]

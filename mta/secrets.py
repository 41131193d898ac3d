"""Secrets a node cannot work without, generated on first start when not configured.

`secret_key` (encrypts DKIM private keys at rest, signs verification links) and the SRS
secret (signs rewritten envelope senders) come from the configuration or the
environment. When neither gives one, `mta serve` (or a command that needs one, e.g.
`mta domains onboard`) generates a random value into the state directory (mode 0600) and
says so once, on stderr; every later run of any command reads it back. Nodes that share one database must share these values: give every node the
same `secret_key` and `srs.secrets` (or copy the files).
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from mta.config import Settings

__all__ = ["ensure_secrets", "load_or_create"]


def load_or_create(path: Path, what: str, create: bool = True) -> str | None:
    """The secret in `path`, created (0600, exclusively) when missing and `create`; None
    when there is none or the state directory cannot be read or written (e.g. a command
    run by another user)."""
    try:
        return path.read_text(encoding="ascii").strip() or None
    except FileNotFoundError:
        if not create:
            return None
    except OSError:
        return None
    value = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_text(encoding="ascii").strip() or None
    except OSError:
        return None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(value + "\n")
    print(f"mta: generated {what} into {path} (mode 0600); keep a copy of it, and give "
          "every node sharing this database the same value", file=sys.stderr)
    return value


def ensure_secrets(settings: Settings, create: bool = True) -> None:
    """Fill `secret_key` and `srs.secrets` from the state directory when unset,
    generating them there when missing and `create`."""
    state = settings.state_path
    if not settings.secret_key:
        settings.secret_key = load_or_create(state / "secret_key", "secret_key", create)
    if not settings.srs.secrets:
        value = load_or_create(state / "srs_secret", "the SRS secret (srs.secrets)", create)
        if value:
            settings.srs.secrets = [value]

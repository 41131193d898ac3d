"""Structured logging: one JSON object a line (for journald) or plain text.

Call sites pass context through `extra=`: `log.info("...", extra={"event": "node.ready",
"message_id": ..., "session_id": ...})`; every extra field lands in the JSON object.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

__all__ = ["setup_logging"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime",
                                                                          "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,  # which process of a node (`mta serve --workers N`)
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")


def setup_logging(level: str = "info", fmt: str = "auto") -> None:
    """`fmt` auto: text when stdout is a terminal, one JSON object a line otherwise
    (systemd's journal, a pipe to a log shipper)."""
    if fmt == "auto":
        fmt = "text" if sys.stdout.isatty() else "json"
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter stays at warning unless we debug them on purpose.
    for noisy in ("asyncio", "mail.log", "aiosmtplib", "alembic", "uvicorn.access", "httpx",
                  "httpcore", "sqlalchemy", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

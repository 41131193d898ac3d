"""`mta sink`: a throw-away SMTP server that accepts every message and shows it.

For trying a node out on one machine (README, "First mail in five minutes"): point
`delivery.smart_host` at it and every forward lands here instead of on the Internet.
Each message is printed as one line and, with `--dir`, written there as a `.eml`
file. It needs no configuration and no database.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from email.parser import BytesHeaderParser
from pathlib import Path

from aiosmtpd.smtp import SMTP

__all__ = ["register"]


class _Sink:
    """The aiosmtpd handler: accept, print one line, optionally keep a copy."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.count = 0

    async def handle_DATA(self, server, session, envelope) -> str:
        data = envelope.original_content or envelope.content
        self.count += 1
        headers = BytesHeaderParser().parsebytes(data)
        line = (f"message {self.count}: from=<{envelope.mail_from}> "
                f"to={','.join(f'<{r}>' for r in envelope.rcpt_tos)} "
                f"subject={headers.get('Subject', '')!r} size={len(data)}")
        if self.directory is not None:
            path = self.directory / f"{self.count:06d}.eml"
            path.write_bytes(data)
            line += f" saved={path}"
        print(line, flush=True)
        return "250 2.0.0 accepted by mta sink"


def _listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(value)
    return host.strip("[]"), int(port)


async def _serve(host: str, port: int, sink: _Sink) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(sink, hostname="sink.localhost", decode_data=False), host, port)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"mta sink listening on {host}:{port}; Ctrl-C stops it", flush=True)
    async with server:
        await stop.wait()


def _cmd_sink(args, settings) -> int:
    try:
        host, port = _listen(args.listen)
    except ValueError:
        print(f"mta: --listen takes HOST:PORT, e.g. 127.0.0.1:2526 (got {args.listen!r})",
              file=sys.stderr)
        return 2
    directory = Path(args.dir) if args.dir else None
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(_serve(host, port, _Sink(directory)))
    except OSError as exc:
        print(f"mta: cannot listen on {host}:{port}: {exc.strerror}; pick another port "
              "with --listen", file=sys.stderr)
        return 1
    return 0


def register(sub) -> None:
    p = sub.add_parser("sink", help="a local SMTP server that accepts and prints every "
                                    "message (for trying mta out)")
    p.add_argument("--listen", default="127.0.0.1:2526", help="HOST:PORT (default %(default)s)")
    p.add_argument("--dir", help="also save each message there as a .eml file")
    p.set_defaults(func=_cmd_sink, needs_config=False)

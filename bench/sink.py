"""A counting SMTP sink on loopback, in its own process, for the benchmarks.

    python bench/sink.py ADDRESS PORT [--data-reply "451 4.3.0 try later"]

Speaks just enough ESMTP (EHLO with PIPELINING, MAIL, RCPT, DATA, RSET, NOOP, QUIT) to
be the next hop of `mta serve` (through `delivery.smart_host`) and of Postfix (as its
relayhost), and counts what arrives: messages, recipients, sessions, the time of the
first and last arrival (CLOCK_MONOTONIC, comparable with the other processes on this
machine), how many DKIM-Signature and ARC-Seal header fields each message carries and
whether its envelope sender is an SRS address. It is written on asyncio streams without
a parser library so it costs far less per message than the servers it measures.

Control on stdin, one command a line, each answered by one JSON line on stdout:
`stats` (the counters), `reset` (zero them), `quit`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

EHLO = (b"250-sink.bench.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 104857600\r\n"
        b"250 ENHANCEDSTATUSCODES\r\n")


class Counters:
    def __init__(self) -> None:
        self.messages = 0
        self.recipients = 0
        self.sessions = 0
        self.refused = 0
        self.bytes = 0
        self.first = 0.0
        self.last = 0.0
        self.dkim: dict[int, int] = {}  # DKIM-Signature fields per message -> messages
        self.arc = 0  # messages with an ARC-Seal
        self.srs = 0  # messages whose MAIL FROM is an SRS0/SRS1 address

    def record(self, mail_from: bytes, rcpts: int, data: bytes) -> None:
        now = time.monotonic()
        if not self.messages:
            self.first = now
        self.last = now
        self.messages += 1
        self.recipients += rcpts
        self.bytes += len(data)
        head = data.split(b"\r\n\r\n", 1)[0].lower()
        n = head.startswith(b"dkim-signature:") + head.count(b"\r\ndkim-signature:")
        self.dkim[n] = self.dkim.get(n, 0) + 1
        self.arc += head.startswith(b"arc-seal:") or b"\r\narc-seal:" in head
        self.srs += mail_from.upper().startswith((b"<SRS0", b"<SRS1", b"SRS0", b"SRS1"))

    def as_dict(self) -> dict:
        return {"messages": self.messages, "recipients": self.recipients,
                "sessions": self.sessions, "refused": self.refused, "bytes": self.bytes,
                "first": self.first, "last": self.last, "arc": self.arc, "srs": self.srs,
                "dkim_fields": {str(k): v for k, v in sorted(self.dkim.items())}}


async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  counters: Counters, data_reply: bytes) -> None:
    counters.sessions += 1
    writer.write(b"220 sink.bench.test ESMTP\r\n")
    mail_from, rcpts = b"", 0
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"LHLO"):
                writer.write(EHLO)
            elif verb == b"HELO":
                writer.write(b"250 sink.bench.test\r\n")
            elif verb == b"MAIL":
                mail_from, rcpts = line[10:].strip(), 0
                writer.write(b"250 2.1.0 Ok\r\n")
            elif verb == b"RCPT":
                rcpts += 1
                writer.write(b"250 2.1.5 Ok\r\n")
            elif verb == b"DATA":
                writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                data = await reader.readuntil(b"\r\n.\r\n")
                if data == b".\r\n":
                    data = b""
                if data_reply.startswith(b"2"):
                    counters.record(mail_from, rcpts, data)
                else:
                    counters.refused += 1
                writer.write(data_reply)
                mail_from, rcpts = b"", 0
            elif verb == b"RSET":
                mail_from, rcpts = b"", 0
                writer.write(b"250 2.0.0 Ok\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                await writer.drain()
                return
            else:  # NOOP, VRFY, anything else
                writer.write(b"250 2.0.0 Ok\r\n")
            if writer.transport.get_write_buffer_size() > 65536:
                await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return
    finally:
        writer.close()


async def control(counters: Counters) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).strip()
        if line in (b"quit", b""):
            return
        if line == b"reset":
            counters.__init__()
        print(json.dumps(counters.as_dict()), flush=True)


async def main(address: str, port: int, data_reply: str) -> None:
    counters = Counters()
    reply = (data_reply.strip() + "\r\n").encode()
    server = await asyncio.start_server(
        lambda r, w: session(r, w, counters, reply), address, port, backlog=1024,
        limit=1 << 24)
    print(json.dumps({"ready": True}), flush=True)
    async with server:
        await control(counters)


if __name__ == "__main__":
    args = sys.argv[1:]
    data_reply = "250 2.0.0 Ok: queued"
    if "--data-reply" in args:
        i = args.index("--data-reply")
        data_reply = args[i + 1]
        del args[i:i + 2]
    try:
        import uvloop
        uvloop.run(main(args[0], int(args[1]), data_reply))
    except ImportError:
        asyncio.run(main(args[0], int(args[1]), data_reply))

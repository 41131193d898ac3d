"""Reading SMTP from the wire strictly: command lines and the DATA section.

The product's job where aiosmtpd is lenient (notes/library-pitfalls.md):
- a command line ends only at <CR><LF>; a bare CR or LF, or a NUL, makes the line
  invalid (RFC 5321 §2.3.8) — the caller refuses it. Lines are read up to the longest
  any command may have (`limits.AUTH_LINE`); the session applies each command's own
  limit (`limits.command_line_limit`);
- the DATA section ends only at <CR><LF>.<CR><LF>. Anything else that looks like an
  end ("\\n.\\n", "\\r.\\r", "\\r\\n.\\r", ... — the SMTP smuggling family,
  CVE-2023-51764 and friends) is message content. A message holding a bare CR or LF
  is refused whole (`bare="reject"`, default) or has its line ends normalised to
  CRLF (`bare="normalize"`); either way no second message can start inside it. A NUL
  is treated the same way — refused, or removed with `bare="normalize"` — so it never
  reaches a next hop, where it could end the data early ("\\r\\n\\x00.\\r\\n");
- a line of the message longer than 998 octets (RFC 5322 §2.1.1, RFC 5321 §4.5.3.1.6)
  is refused: we would have to forward it, and the next hop may refuse or cut it;
- BDAT chunks (RFC 3030) are read by length (`read_chunk`), kept or dropped, and the
  whole message is held to the same rules (`chunked_result`);
- size is counted as RFC 1870 does (after dot-unstuffing, without the final dot);
  reading goes on to the end of the data without keeping more than about 4/3 of the
  limit in memory, so the refusal comes after the whole message, as SMTP needs.

`Wire` owns the read buffer, so bytes a client sent after a command stay in order for
the next command (PIPELINING) and can be dropped wholesale at STARTTLS (RFC 3207 §4.2).
The pure functions (`find_data_end`, `decode_data`, `check_content`) are what the tests
exercise byte for byte.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from mta.smtp.limits import AUTH_LINE, TEXT_LINE

__all__ = ["CommandLine", "DataResult", "Wire", "check_content", "chunked_result",
           "decode_data", "find_data_end", "has_long_line"]

CHUNK = 65536
END = b"\r\n.\r\n"


@dataclass(frozen=True)
class CommandLine:
    text: bytes  # without the line end
    too_long: bool = False
    bare_line_end: bool = False  # ended by a bare LF, or holds a bare CR
    has_nul: bool = False

    @property
    def ok(self) -> bool:
        return not (self.too_long or self.bare_line_end or self.has_nul)


@dataclass(frozen=True)
class DataResult:
    content: bytes  # the message, unstuffed, ending with CRLF (empty when refused)
    size: int  # RFC 1870 size of what was sent
    # Why the message is refused: too_big | bare_line_end | nul | long_line; None = not.
    refused: str | None = None
    normalised: bool = False  # bare CR/LF or NUL were repaired (bare="normalize")

    @property
    def too_big(self) -> bool:
        return self.refused == "too_big"


def find_data_end(buf: bytes | bytearray, start: int = 0, at_start: bool = True) -> int:
    """Index just past the end-of-data marker, or -1. `buf` begins right after the
    DATA command when `at_start`: that command's CRLF counts as the line end before
    a first line of just ".", so an empty message is ".\\r\\n" right away."""
    if at_start and buf[:3] == b".\r\n":
        return 3
    i = buf.find(END, max(0, start))
    return -1 if i < 0 else i + len(END)


def _has_bare(content: bytes) -> bool:
    crlf = content.count(b"\r\n")
    return content.count(b"\r") != crlf or content.count(b"\n") != crlf


def decode_data(section: bytes, bare: str = "reject") -> tuple[bytes, bool]:
    """The message from a DATA section that ends with the marker (as `find_data_end`
    found it): (content, had_bare_line_end). With `bare="reject"` and bare line ends
    the content is returned as is (the caller refuses it)."""
    body = b"" if section == b".\r\n" else section[:-3]  # keep the last line's CRLF
    had_bare = _has_bare(body)
    # RFC 5321 §4.5.2: remove one leading dot of each line; only lines that start
    # after a real CRLF are lines.
    unstuffed = (b"\r\n" + body).replace(b"\r\n.", b"\r\n")[2:]
    if had_bare and bare == "normalize":
        unstuffed = _normalize(unstuffed)
    return unstuffed, had_bare


def _normalize(content: bytes) -> bytes:
    return content.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def chunked_result(content: bytes, bare: str = "reject") -> DataResult:
    """The message sent in BDAT chunks (RFC 3030), held to the same rules as DATA: bare
    CR/LF refused or normalised, NUL refused or removed, no line over 998 octets. The
    size was checked chunk by chunk before reading. A message whose last line lacks
    its CRLF gets one (a CR alone at the end is then a bare CR)."""
    size = len(content)
    if content and not content.endswith(b"\r\n"):
        content += b"\r\n"
    had_bare = _has_bare(content)
    if had_bare and bare != "normalize":
        return DataResult(b"", size, refused="bare_line_end")
    if had_bare:
        content = _normalize(content)
    content, refusal, repaired = check_content(content, bare)
    return DataResult(content, size, refused=refusal, normalised=had_bare or repaired)


def has_long_line(content: bytes, limit: int = TEXT_LINE) -> bool:
    """Whether a line (CRLF included) is longer than `limit`. A run of `limit` octets
    without LF covers a whole aligned block of `limit // 2`, so only blocks are looked
    at (C-speed `find`s), and only a block without LF is measured exactly: a 25 MB
    message costs milliseconds, where a per-line loop or regex costs most of a second."""
    block = limit // 2
    n = len(content)
    p = 0
    while p < n:
        if content.find(b"\n", p, p + block) >= 0:
            p += block
            continue
        start = content.rfind(b"\n", 0, p) + 1
        end = content.find(b"\n", p)
        end = n if end < 0 else end
        if end - start + 1 > limit:  # + 1: the LF belongs to the line
            return True
        p = end + 1
    return False


def check_content(content: bytes, bare: str = "reject") -> tuple[bytes, str | None, bool]:
    """What may be done with a decoded message: (content, refusal, normalised).
    A NUL is refused, or removed with `bare="normalize"`; a line over 998 octets is
    refused in every mode (folding would break the sender's DKIM signature)."""
    normalised = False
    if b"\x00" in content:
        if bare != "normalize":
            return b"", "nul", False
        content, normalised = content.replace(b"\x00", b""), True
    if has_long_line(content):
        return b"", "long_line", normalised
    return content, None, normalised


class Wire:
    """The read side of one SMTP connection."""

    def __init__(self, reader: asyncio.StreamReader, max_line: int = AUTH_LINE) -> None:
        self.reader = reader
        self.max_line = max_line
        self.buf = bytearray()
        self.eof = False

    def discard_buffered(self) -> int:
        """Drop whatever the client sent ahead (STARTTLS: nothing sent in clear before
        the handshake may be read as a command after it)."""
        n = len(self.buf) + len(getattr(self.reader, "_buffer", b""))
        self.buf.clear()
        inner = getattr(self.reader, "_buffer", None)
        if inner is not None:
            inner.clear()  # what asyncio already read from the socket
        return n

    async def _fill(self) -> bool:
        if self.eof:
            return False
        chunk = await self.reader.read(CHUNK)
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    async def read_command(self) -> CommandLine | None:
        """The next command line, or None at end of stream."""
        scanned = 0
        while True:
            nl = self.buf.find(b"\n", scanned)
            if nl >= 0:
                break
            if len(self.buf) > self.max_line:
                return await self._skip_long_line()
            scanned = len(self.buf)
            if not await self._fill():
                return None
        line = bytes(self.buf[:nl + 1])
        del self.buf[:nl + 1]
        if len(line) > self.max_line:  # max_line counts the CRLF (RFC 5321 §4.5.3.1.4)
            return CommandLine(line[:64], too_long=True)
        crlf = line.endswith(b"\r\n")
        text = line[:-2] if crlf else line[:-1]
        return CommandLine(text, bare_line_end=(not crlf) or b"\r" in text,
                           has_nul=b"\x00" in text)

    async def _skip_long_line(self) -> CommandLine | None:
        head = bytes(self.buf[:64])
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                del self.buf[:nl + 1]
                return CommandLine(head, too_long=True)
            self.buf.clear()
            if not await self._fill():
                return None

    async def read_chunk(self, size: int, keep: bool = True,
                         on_chunk=None) -> bytes | None:
        """Exactly `size` octets (a BDAT chunk), or None at end of stream. With
        `keep=False` they are read and dropped: a refused chunk must still be consumed,
        or its bytes would be read as commands."""
        out = bytearray()
        need = size
        while need > 0:
            if not self.buf:
                if not await self._fill():
                    return None
                if on_chunk is not None:
                    on_chunk()
            take = min(need, len(self.buf))
            if keep:
                out += self.buf[:take]
            del self.buf[:take]
            need -= take
        return bytes(out)

    async def read_data(self, limit: int, bare: str = "reject",
                        on_chunk=None) -> DataResult | None:
        """The DATA section up to <CR><LF>.<CR><LF>, or None at end of stream.
        `on_chunk()` is called after each read (to push the data timeout forward)."""
        cap = limit + limit // 3 + len(END) + 2  # dot-stuffing adds at most 1 byte per 3
        overflow = False
        dropped = 0
        scanned = 0
        while True:
            end = find_data_end(self.buf, scanned, at_start=dropped == 0)
            if end >= 0:
                break
            if len(self.buf) > cap:
                # Certainly too big: keep only a tail that may hold the start of the marker.
                overflow = True
                keep = len(END) - 1
                dropped += len(self.buf) - keep
                del self.buf[:-keep]
            scanned = max(0, len(self.buf) - (len(END) - 1))
            if not await self._fill():
                return None
            if on_chunk is not None:
                on_chunk()
        section = bytes(self.buf[:end])
        del self.buf[:end]
        if overflow:
            return DataResult(b"", dropped + len(section), refused="too_big")
        content, had_bare = decode_data(section, bare)
        size = len(content)
        if size > limit:
            return DataResult(b"", size, refused="too_big")
        if had_bare and bare != "normalize":
            return DataResult(b"", size, refused="bare_line_end")
        content, refusal, repaired = check_content(content, bare)
        return DataResult(content, size, refused=refusal, normalised=had_bare or repaired)

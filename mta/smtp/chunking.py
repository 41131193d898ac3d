"""The BDAT command (RFC 3030 CHUNKING), shared by the MX and submission sessions.

`BDAT <size> [LAST]` is followed by exactly `size` octets of message, with no dot-stuffing
and no end marker. What this module guarantees, the same strictness as DATA:
- every chunk is read, kept or dropped, before its reply: a refused chunk's octets are
  never read as commands (RFC 3030 §2: the receiver must consume the chunk);
- sizes are checked before reading: a chunk that would take the message over the size
  limit is dropped unread-into-memory, the transaction is refused with `552 5.3.4` and
  ended, so the chunks pipelined after it get `503` (and are dropped too);
- a BDAT whose size cannot be read leaves no way to find the next command: `501 5.5.4`
  and the session is closed;
- DATA after BDAT in one transaction is `503 5.5.1`; BDAT without MAIL/RCPT is refused
  like DATA would be;
- at `BDAT ... LAST` the whole message goes through `wire.chunked_result` (bare CR/LF,
  NUL, lines over 998 octets, as for DATA) and then the session's end-of-data path.

A session provides: `chunks` (a `Chunks` or None), `_bdat_refusal()` (the reply that
refuses a chunk now, or None), `_size_limit()`, `_bare_mode()`, `_chunk_timeout()` and
`_end_of_data(result)`.
"""

from __future__ import annotations

import re
from typing import Any

from mta import replies
from mta.observe import metrics
from mta.smtp.wire import DataResult, chunked_result

__all__ = ["Chunks", "bdat"]

# RFC 3030 §2: bdat-cmd ::= "BDAT" SP chunk-size [ SP end-marker ] CR LF
_BDAT = re.compile(r"([0-9]{1,18})(?: +(LAST))?\Z", re.IGNORECASE)


class Chunks:
    """The chunks received so far in one transaction."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.size = 0


async def bdat(session: Any, arg: str | None) -> None:
    m = _BDAT.fullmatch(arg or "")
    if m is None:
        await session.reply(replies.BDAT_SYNTAX)
        session.closing = True  # the chunk's length is unknown: the stream is lost
        return
    size, last = int(m.group(1)), m.group(2) is not None
    refusal = session._bdat_refusal()
    limit = session._size_limit()
    if refusal is None and session.chunks is None:
        session.chunks = Chunks()
    chunks: Chunks | None = session.chunks if refusal is None else None
    keep = chunks is not None and chunks.size + size <= limit
    timeout = session._chunk_timeout()
    session.conn.set_timeout(timeout)
    data = await session.conn.wire.read_chunk(
        size, keep, on_chunk=lambda: session.conn.set_timeout(timeout))
    metrics.SMTP_BDAT_CHUNKS.inc()
    if data is None:  # the client went away mid-chunk: nothing was accepted
        session._reset()
        session.closing = True
        return
    if chunks is None:
        return await session.reply(refusal)
    chunks.size += size
    if not keep:
        return await session._end_of_data(DataResult(b"", chunks.size, refused="too_big"))
    chunks.data += data
    if not last:
        return await session.reply(replies.CHUNK_RECEIVED.format(size=size))
    content = bytes(chunks.data)
    session.chunks = None
    await session._end_of_data(chunked_result(content, session._bare_mode()))

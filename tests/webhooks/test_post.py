"""One webhook POST (mta.webhooks.sender.post_event) against real endpoints on loopback
that misbehave after their status line: what they send after it must not hold the POST
(and its concurrency slot) nor fill the node's memory."""

from __future__ import annotations

import asyncio
import time

from mta.webhooks.sender import http_client, post_event


async def _endpoint(head: bytes, trickle: bytes, every: float):
    """Answers each request with `head`, then `trickle` every `every` seconds forever."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(head)
            while True:
                await writer.drain()
                await asyncio.sleep(every)
                writer.write(trickle)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"


async def _post(url: str, timeout: float):
    async with http_client(timeout) as client:
        return await asyncio.wait_for(
            post_event(client, url, "whsec_x", "1", "sent", {"id": "1"}), 30)


async def test_a_200_with_an_endless_body_counts_at_once():
    server, url = await _endpoint(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n",
                                  b"x" * 65536, 0.05)
    async with server:
        started = time.monotonic()
        result = await _post(url, timeout=2)
    assert (result.ok, result.status_code) == (True, 200)
    assert time.monotonic() - started < 2  # the body is not waited for


async def test_an_endpoint_trickling_its_headers_fails_within_the_timeout():
    server, url = await _endpoint(b"HTTP/1.1 200 OK\r\n", b"X-A: b\r\n", 0.2)
    async with server:
        started = time.monotonic()
        result = await _post(url, timeout=2)
    assert not result.ok and result.status_code is None
    assert time.monotonic() - started < 5  # webhooks.timeout bounds the whole POST

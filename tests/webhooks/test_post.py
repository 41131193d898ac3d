"""One webhook POST (mta.webhooks.sender.post_event) against real endpoints on loopback
that misbehave after their status line: what they send after it must not hold the POST
(and its concurrency slot) nor fill the node's memory; and URLs naming our own network,
which a tenant must not make the node contact."""

from __future__ import annotations

import asyncio
import time

import pytest

from mta.dnscache import DnsResolver
from mta.webhooks.sender import http_client, post_event
from tests.reports.test_tlsrpt_send import Listener


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


async def _post(url: str, timeout: float, resolver: DnsResolver | None = None,
                allow_private: bool = True):
    async with http_client(timeout) as client:
        return await asyncio.wait_for(
            post_event(client, url, "whsec_x", "1", "sent", {"id": "1"},
                       resolver=resolver or DnsResolver(cache_size=0),
                       allow_private=allow_private), 30)


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


@pytest.mark.parametrize("url", [
    "https://127.0.0.1:{v4}/hook", "https://10.0.0.1/hook", "https://[::1]:{v6}/hook",
    "https://[::ffff:127.0.0.1]:{v4}/hook", "https://inside.test:{v4}/hook",
    "http://127.0.0.1:{v4}/hook", "http://inside.test:{v4}/hook",
])
async def test_our_own_network_is_refused_without_a_connection(dns_server, url):
    dns_server.add("inside.test", "A", "127.0.0.1")
    resolver = DnsResolver([dns_server.nameserver], timeout=1.0, cache_size=0)
    listener = Listener()
    url = url.format(v4=await listener.start("127.0.0.1"), v6=await listener.start("::1"))
    try:
        result = await _post(url, 2, resolver, allow_private=False)
        assert not result.ok and result.status_code is None
        assert result.error.startswith("refused:"), result.error
        assert listener.connections == 0
        # Allowed by the operator (webhooks.allow_private_targets), it is contacted.
        result = await _post(url, 2, resolver, allow_private=True)
        assert not result.ok and not result.error.startswith("refused:")
        assert listener.connections == (0 if "10.0.0.1" in url else 1)
    finally:
        listener.close()

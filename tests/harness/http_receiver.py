"""A real HTTP server on loopback that records the webhook POSTs it receives.

`status` is what it answers; `hold` (a threading.Event that is clear) makes every request
wait until it is set or the receiver stops (a slow endpoint); `stop()` closes the port
(a dead endpoint) and `start()` opens the same port again.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.harness.node import free_port

__all__ = ["Received", "WebhookReceiver"]


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def event(self) -> dict:
        return json.loads(self.body)


class WebhookReceiver:
    def __init__(self, address: str = "127.0.0.1") -> None:
        self.address = address
        self.port = free_port(address)
        self.status = 200
        self.hold = threading.Event()
        self.hold.set()
        self.received: list[Received] = []
        self.in_flight = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/hook"

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.in_flight += 1
                try:
                    while not receiver.hold.wait(0.1):
                        if receiver._server is None:
                            return
                    with receiver._lock:
                        receiver.received.append(Received(
                            {k: v for k, v in self.headers.items()}, body, time.monotonic()))
                    self.send_response(receiver.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                finally:
                    with receiver._lock:
                        receiver.in_flight -= 1

            def log_message(self, *args) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer((self.address, self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def events(self) -> list[dict]:
        with self._lock:
            return [r.event for r in self.received]

    def wait_for(self, predicate, timeout: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.events()
            if predicate(events):
                return events
            time.sleep(0.1)
        raise AssertionError(f"not received within {timeout}s; got {self.events()}")

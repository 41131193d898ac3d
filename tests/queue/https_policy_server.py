"""A tiny HTTPS server on a loopback address serving MTA-STS policy documents.

It runs Python's http.server in a thread with a trustme certificate, answers
`/.well-known/mta-sts.txt` by the Host header (so one server can play
`mta-sts.a.test` and `mta-sts.b.test`), and counts requests so tests can see caching.
"""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["PolicyServer"]


class PolicyServer:
    def __init__(self, address: str, ssl_context: ssl.SSLContext) -> None:
        self.address = address
        self.policies: dict[str, tuple[int, str]] = {}  # host -> (status, body)
        self.requests: list[tuple[str, str]] = []  # (host, path)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                host = (self.headers.get("Host") or "").split(":")[0].lower()
                outer.requests.append((host, self.path))
                status, body = outer.policies.get(host, (404, "not found"))
                if self.path != "/.well-known/mta-sts.txt":
                    status, body = 404, "not found"
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer((address, 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.socket = ssl_context.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        name="test-mta-sts-https")

    def serve(self, host: str, body: str, status: int = 200) -> None:
        self.policies[host.lower()] = (status, body)

    def start(self) -> PolicyServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

"""systemd's notification protocol as a real `mta serve` speaks it: the test is the
service manager, with a unix datagram socket of its own as $NOTIFY_SOCKET (an abstract
`@name` and a filesystem path), and checks READY=1 once the listeners answer,
RELOADING=1 + MONOTONIC_USEC then READY=1 on SIGHUP, WATCHDOG=1 at half of
$WATCHDOG_USEC, and STOPPING=1 on SIGTERM — all from the main process, as systemd's
default NotifyAccess=main requires."""

from __future__ import annotations

import os
import secrets
import signal
import smtplib
import socket
import struct
import time

import httpx
import pytest

from mta.sdnotify import Notifier, parse_fields

UCRED = struct.calcsize("iII")


class Manager:
    """The receiving end of $NOTIFY_SOCKET."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(b"\0" + name[1:].encode() if name.startswith("@") else name)

    def receive(self, timeout: float = 30.0) -> tuple[int, dict[str, str]]:
        """(sender pid, fields) of the next notification."""
        self.sock.settimeout(timeout)
        data, anc, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(UCRED))
        pid = next(struct.unpack("iII", d[:UCRED])[0] for lvl, kind, d in anc
                   if lvl == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
        return pid, parse_fields(data)

    def next_other_than_watchdog(self, timeout: float = 30.0) -> tuple[int, dict[str, str]]:
        deadline = time.monotonic() + timeout
        while True:
            pid, fields = self.receive(max(0.1, deadline - time.monotonic()))
            if fields.keys() != {"WATCHDOG"}:
                return pid, fields

    def drain(self) -> None:
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(4096)
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("kind,workers", [("abstract", 2), ("path", 1)])
def test_node_speaks_to_the_service_manager(make_node, db_url, tmp_path, kind, workers):
    name = (f"@mta-test-notify-{secrets.token_hex(6)}" if kind == "abstract"
            else str(tmp_path / "notify.sock"))
    manager = Manager(name)
    try:
        node = make_node({"database": {"url": db_url}}, workers=workers,
                         env={"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "1000000"})
        main = node.proc.pid

        pid, fields = manager.next_other_than_watchdog()
        assert (pid, fields.get("READY")) == (main, "1"), fields
        # READY means every listener answers.
        with smtplib.SMTP("127.0.0.1", node.port("mx"), timeout=10) as s:
            assert s.ehlo()[0] == 250
        assert httpx.get(f"http://127.0.0.1:{node.port('http')}/healthz",
                         timeout=10).status_code == 200

        # Watchdog pings at half of WATCHDOG_USEC (1 s), from the main process.
        manager.drain()  # pings sent while we were busy above are not timed
        pings: list[float] = []
        while len(pings) < 4:
            pid, fields = manager.receive(5)
            assert pid == main and fields == {"WATCHDOG": "1"}, fields
            pings.append(time.monotonic())
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        assert all(0.3 < g < 0.8 for g in gaps), gaps

        # SIGHUP: RELOADING=1 with the monotonic clock of the request, then READY=1.
        asked = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        node.signal(signal.SIGHUP)
        pid, fields = manager.next_other_than_watchdog()
        assert pid == main and fields.get("RELOADING") == "1", fields
        assert 0 <= int(fields["MONOTONIC_USEC"]) - asked < 10_000_000
        pid, fields = manager.next_other_than_watchdog()
        assert pid == main and fields.get("READY") == "1", fields
        node.wait_for_log(lambda e: e.get("event") == "node.reloaded")

        # SIGTERM: STOPPING=1, then a clean exit.
        node.signal(signal.SIGTERM)
        pid, fields = manager.next_other_than_watchdog()
        assert pid == main and fields.get("STOPPING") == "1", fields
        assert node.proc.wait(60) == 0
    finally:
        manager.close()


def test_without_a_notify_socket_nothing_is_sent_and_nothing_fails(monkeypatch):
    n = Notifier({})
    assert not n.enabled and not n.ready() and n.watchdog_interval is None
    # A watchdog meant for another process is not ours to feed.
    assert Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    mine = Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval == 2.0
    # A manager that went away costs a log line, not the node.
    gone = Notifier({"NOTIFY_SOCKET": "@mta-test-nobody-listens-" + secrets.token_hex(4)})
    assert gone.enabled and gone.ready() is False

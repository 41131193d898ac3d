"""Postfix from Debian as a real SMTP peer of the tests: a private instance in a temp
directory (its own main.cf, master.cf, queue and log), listening on a loopback port and
relaying everything it accepts from 127.0.0.0/8 to one next hop (`relay`).

It never touches Debian's own instance (/etc/postfix) or another private one: each has
its own config_directory, and `stop()` stops only this one (`postfix -c DIR stop`).
Skipped when Postfix is not installed (scripts/test.sh installs it).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["PostfixPeer", "postfix_available"]

_MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def postfix_available() -> bool:
    return shutil.which("postfix") is not None and shutil.which("postconf") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostfixPeer:
    def __init__(self, directory: Path, relay: tuple[str, int], *,
                 hostname: str = "pf.peer.test", smtputf8: bool = True,
                 listen: tuple[str, int] | None = None,
                 extra: dict[str, str] | None = None) -> None:
        """`extra`: more main.cf settings, e.g. `smtpd_discard_ehlo_keywords`."""
        self.dir = directory
        self.etc, self.spool, self.data = (directory / n for n in ("etc", "spool", "data"))
        for d in (self.etc, self.spool, self.data):
            d.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data, "postfix", "postfix")
        self.address, self.port = listen or ("127.0.0.1", _free_port())
        self.log = directory / "maillog"
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.spool), "data_directory": str(self.data),
            "mail_owner": "postfix", "setgid_group": "postdrop",
            "myhostname": hostname, "mydomain": "peer.test", "myorigin": "$myhostname",
            "mydestination": "", "inet_protocols": "ipv4",
            # The address Postfix counts as its own; master.cf binds `listen` itself.
            "inet_interfaces": "127.0.0.1",
            "mynetworks": "127.0.0.0/8", "relayhost": f"[{relay[0]}]:{relay[1]}",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "alias_maps": "", "alias_database": "", "local_recipient_maps": "",
            "maillog_file": str(self.log), "maillog_file_prefixes": str(directory),
            "smtputf8_enable": "yes" if smtputf8 else "no",
            # Tests want the outcome now, not after Postfix's default back-off.
            "queue_run_delay": "1s", "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            **(extra or {}),
        }
        (self.etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        (self.etc / "master.cf").write_text(
            _MASTER_CF.format(listen=f"{self.address}:{self.port}"))

    def _postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["postfix", "-c", str(self.etc), *args], check=check,
                              capture_output=True, text=True)

    def start(self) -> PostfixPeer:
        self._postfix("set-permissions", check=False)
        self._postfix("check")
        self._postfix("start")
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((self.address, self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postfix did not listen: {self.log_text()}") from None
                time.sleep(0.1)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def wait_log(self, needle: str, timeout: float = 20.0) -> str:
        """The log once it holds `needle` (AssertionError with the log otherwise)."""
        deadline = time.monotonic() + timeout
        while needle not in (text := self.log_text()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not in the postfix log:\n{text[-3000:]}")
            time.sleep(0.1)
        return text

    def stop(self) -> None:
        self._postfix("stop", check=False)

"""Postfix from Debian as a private instance, the yardstick of the forward benchmarks.

`PostfixInstance(directory, relay, dkim=...)` writes its own config_directory (main.cf,
master.cf) and queue_directory under `directory`, listens on 127.0.0.1 at a free port,
relays everything from 127.0.0.0/8 to `relay` (the counting sink) and logs to a file.
Debian's defaults otherwise (fsync of the queue file before 250, in_flow_delay, process
limits), with two changes: no chroot (the instance lives in a temp dir) and no limit on
connections per client (ours gets the same; every client here is 127.0.0.1). With
`dkim=True`, OpenDKIM (its own config, RSA-2048, relaxed/simple, one signature with
d=ours.test on every message) runs as a milter on a unix socket. With `hold=True`
(`defer_transports`) it accepts and queues but does not relay: the accept-only yardstick.

The packages are installed when missing (`apt-get install -y postfix opendkim
opendkim-tools`); the system instances the package scripts may have started then are
stopped again (in containers Debian's policy-rc.d keeps them from starting at all). A
system instance that ran before is reported in the JSON, not touched.
`pids()` is the master (and so every Postfix daemon it forks) plus OpenDKIM.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from bench.common import free_port, wait_port

PACKAGES = ("postfix", "opendkim", "opendkim-tools")

MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def ensure_installed() -> None:
    """Install the packages when missing. Where the package scripts start Debian's own
    instances (a machine without policy-rc.d), stop them again: they would hold port 25
    and compete for the CPU. Instances that ran before are never touched."""
    if all(shutil.which(b) for b in ("postfix", "opendkim", "opendkim-genkey")):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run([*sudo, "apt-get", "install", "-y", *PACKAGES], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    for service in ("postfix", "opendkim"):
        subprocess.run([*sudo, "service", service, "stop"], capture_output=True, check=False)
    if system_instance_running():
        subprocess.run([*sudo, "postfix", "stop"], capture_output=True, check=False)


def system_instance_running() -> bool:
    """Whether Debian's own instance (config /etc/postfix) runs: it would compete for
    the CPU. Reported by the benchmarks; they never stop what they did not start."""
    done = subprocess.run(["postfix", "status"], capture_output=True, text=True)
    return done.returncode == 0


class PostfixInstance:
    def __init__(self, directory: Path, relay: tuple[str, int], dkim: bool = False,
                 hold: bool = False) -> None:
        self.dir = directory / ("postfix-dkim" if dkim else "postfix")
        self.etc = self.dir / "etc"
        self.spool = self.dir / "spool"
        self.data = self.dir / "data"
        self.port = free_port()
        self.dkim = dkim
        self.opendkim: subprocess.Popen | None = None
        for d in (self.etc, self.spool, self.data):
            d.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data, "postfix", "postfix")
        self.log = self.dir / "maillog"
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.spool),
            "data_directory": str(self.data),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "pf.bench.test",
            "mydomain": "bench.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relayhost": f"[{relay[0]}]:{relay[1]}",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "smtpd_client_connection_count_limit": "0",
            "maillog_file": str(self.log),
            "maillog_file_prefixes": str(self.dir),
            "smtputf8_enable": "no",
        }
        if hold:  # accept and queue only: the queue manager defers instead of relaying
            main["defer_transports"] = "smtp, relay"
        if dkim:
            run = self.dir / "run"  # OpenDKIM (user postfix) creates its socket here
            run.mkdir()
            shutil.chown(run, "postfix", "postfix")
            self.milter_socket = run / "opendkim.sock"
            main["smtpd_milters"] = f"unix:{self.milter_socket}"
            main["non_smtpd_milters"] = "$smtpd_milters"
            main["milter_default_action"] = "tempfail"
            self._write_opendkim()
        (self.etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        (self.etc / "master.cf").write_text(MASTER_CF.format(listen=f"127.0.0.1:{self.port}"))

    def _write_opendkim(self) -> None:
        keydir = self.dir / "dkim"
        keydir.mkdir()
        subprocess.run(["opendkim-genkey", "-b", "2048", "-d", "ours.test", "-s", "bench",
                        "-D", str(keydir)], check=True)
        shutil.chown(keydir / "bench.private", "postfix", "postfix")
        (keydir / "keytable").write_text(f"bench ours.test:bench:{keydir / 'bench.private'}\n")
        (keydir / "signingtable").write_text("*@* bench\n")
        self.opendkim_conf = self.dir / "opendkim.conf"
        self.opendkim_conf.write_text(
            "Syslog no\nMode s\nCanonicalization relaxed/simple\n"
            "SignatureAlgorithm rsa-sha256\n"
            f"KeyTable file:{keydir / 'keytable'}\n"
            f"SigningTable refile:{keydir / 'signingtable'}\n"
            "InternalHosts 127.0.0.1\n"
            f"Socket local:{self.milter_socket}\nUMask 000\n"
            "UserID postfix\nBackground no\nRequireSafeKeys no\n"
            f"PidFile {self.milter_socket.parent / 'opendkim.pid'}\n")

    def _postfix(self, *args: str) -> None:
        subprocess.run(["postfix", "-c", str(self.etc), *args], check=True,
                       capture_output=True, text=True)

    def start(self) -> PostfixInstance:
        if self.dkim:
            self.opendkim = subprocess.Popen(["opendkim", "-f", "-x", str(self.opendkim_conf)],
                                             stdout=subprocess.DEVNULL,
                                             stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 20
            while not self.milter_socket.exists():
                if self.opendkim.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("opendkim did not start")
                time.sleep(0.05)
        try:
            self._postfix("set-permissions")
        except subprocess.CalledProcessError:
            pass  # older versions: `check` below creates what is missing
        self._postfix("check")
        self._postfix("start")
        wait_port("127.0.0.1", self.port)
        return self

    def master_pid(self) -> int | None:
        try:
            return int((self.spool / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pids(self) -> list[int]:
        return [p for p in (self.master_pid(), self.opendkim.pid if self.opendkim else None)
                if p]

    def stop(self) -> None:
        try:
            self._postfix("stop")
        except subprocess.CalledProcessError:
            pass
        if self.opendkim and self.opendkim.poll() is None:
            self.opendkim.send_signal(signal.SIGTERM)
            try:
                self.opendkim.wait(10)
            except subprocess.TimeoutExpired:
                self.opendkim.kill()
                self.opendkim.wait()

"""What the benchmarks share. Every benchmark drives real processes from outside, through
their ordinary interfaces only (the `mta` command line, the YAML config, SMTP, HTTP), so
they keep measuring the product while its insides change:

- `Postgres`: a PostgreSQL cluster the benchmark starts itself (fsync on, unix socket
  only, PostgreSQL's defaults otherwise, like the node's embedded cluster); the node
  reaches it through `database.url`, so `mta` commands can run next to a live node.
- `World`: the loopback DNS server of the tests (tests/harness/dns_server.py) with the
  sender's SPF/DKIM/DMARC records, and one DKIM-signed message (~3.2 KB).
- `Sink`: the counting SMTP sink (bench/sink.py) in its own process.
- `Node`: one `mta serve` process from a config written here (`--workers N` passed
  through when the installed `mta serve` has it).
- `run_load` / `run_http_load`: the load generators (bench/smtpload.py, bench/httpload.py)
  in their own processes.
- `cpu_seconds` / `memory`: CPU and memory of whole process trees from /proc (children
  that exited are included through their parent's cutime/cstime).
- `table` / `write_result`: the printed table and bench/out/<name>-<stamp>.json.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
PY = sys.executable
SINK_IP = "127.0.0.2"
TICK = os.sysconf("SC_CLK_TCK")

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def run(coro):
    """Run `coro` on uvloop when installed (for the in-process soak, bench/two_nodes.py)."""
    import asyncio

    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# --- output --------------------------------------------------------------------------------


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "loadavg": os.getloadavg()}


def write_result(name: str, result: dict) -> Path:
    """Write `result` to bench/out/<name>-<UTC stamp>.json with the command line, the time
    and the machine; prints and returns the path."""
    record = {"benchmark": name,
              "command": " ".join([f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
              "when": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": machine(), **result}
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"wrote {path.relative_to(ROOT)}", flush=True)
    return path


def table(headers: list[str], rows: list[list]) -> str:
    """A plain-text table, right-aligned; None prints as '-'."""
    def cell(v) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    data = [[cell(v) for v in r] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(headers, *data, strict=True)]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True))
                     for r in [headers, *data])


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


# --- process accounting --------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def process_tree(roots: list[int]) -> set[int]:
    """`roots` and all their descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st:
                children.setdefault(int(st[1]), []).append(int(entry))
    seen: set[int] = set()
    todo = [r for r in roots if r]
    while todo:
        pid = todo.pop()
        if pid in seen or not Path(f"/proc/{pid}").exists():
            continue
        seen.add(pid)
        todo += children.get(pid, [])
    return seen


def cpu_seconds(roots: list[int]) -> float:
    """User + system CPU of the trees under `roots`, including reaped children."""
    total = 0
    for pid in process_tree(roots):
        st = _stat(pid)
        if st:
            total += sum(int(x) for x in st[11:15])  # utime stime cutime cstime
    return total / TICK


def memory(roots: list[int]) -> dict:
    """RSS and PSS (bytes) summed over the trees under `roots`."""
    rss = pss = 0
    pids = process_tree(roots)
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return {"processes": len(pids), "rss_bytes": rss, "pss_bytes": pss}


def raise_nofile(n: int) -> int:
    """Raise this process's open-file limit (children inherit it) towards `n`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(n, hard) if hard != resource.RLIM_INFINITY else n
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def wait_port(address: str, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {address}:{port}")


def workdir(prefix: str) -> Path:
    """A temporary directory the unprivileged PostgreSQL/Postfix users can traverse,
    removed when the benchmark exits (BENCH_KEEP=1 keeps it, e.g. for the logs)."""
    path = Path(tempfile.mkdtemp(prefix=f"mta-bench-{prefix}-"))
    path.chmod(0o755)
    if not os.environ.get("BENCH_KEEP"):
        atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


# --- PostgreSQL ----------------------------------------------------------------------------


def _pg_bin() -> Path:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "pg_ctl").exists():
            return d
    found = shutil.which("pg_ctl")
    if found and Path(found).with_name("createdb").exists():
        return Path(found).parent
    raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")


class Postgres:
    """A private cluster: fsync on, unix socket only, trust for local connections."""

    def __init__(self, directory: Path, user: str = "postgres") -> None:
        import pwd

        self.dir = directory / "pg"
        self.data = self.dir / "data"
        self.socket_dir = self.dir / "sock"
        self.bin = _pg_bin()
        self.user = pwd.getpwnam(user) if os.geteuid() == 0 else None

    def _run(self, *args: str) -> str:
        kw = {}
        if self.user is not None:
            kw = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        return subprocess.run([str(self.bin / args[0]), *args[1:]], check=True, text=True,
                              capture_output=True, cwd="/", **kw).stdout

    def start(self) -> Postgres:
        for d in (self.dir, self.socket_dir):
            d.mkdir(parents=True, exist_ok=True)
            if self.user is not None:
                os.chown(d, self.user.pw_uid, self.user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                  "--auth-host=reject", "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions")
        with (self.data / "postgresql.conf").open("a") as f:
            f.write(f"listen_addresses = ''\nunix_socket_directories = '{self.socket_dir}'\n"
                    "max_connections = 300\n")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "start")
        return self

    def create_database(self, name: str) -> str:
        self._run("createdb", "-h", str(self.socket_dir), "-U", "postgres", name)
        return f"postgresql+asyncpg://postgres@/{name}?host={self.socket_dir}"

    def pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


# --- DNS and the message ---------------------------------------------------------------------


class World:
    """The loopback DNS server with the sending domain good.test (SPF pass for
    127.0.0.1, DKIM RSA-2048 at sel._domainkey, DMARC p=reject), PTR/A of the client,
    MX records of our domains, and one message signed by good.test."""

    def __init__(self, directory: Path, message_bytes: int = 3200) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        from tests.harness.dns_server import TestDnsServer

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        pub = base64.b64encode(key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
        self.dns = TestDnsServer().start()
        self.dns.add_zone("""
            1.0.0.127.in-addr.arpa. 300 IN PTR client.test.
            client.test. 300 IN A 127.0.0.1
            client.test. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"
            good.test. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"
            _dmarc.good.test. 300 IN TXT "v=DMARC1; p=reject"
            ours.test. 300 IN MX 10 mx.bench.test.
            sink.test. 300 IN MX 10 mx.sink.test.
            mx.bench.test. 300 IN A 127.0.0.1
            mx.sink.test. 300 IN A 127.0.0.2
        """)
        for i in range(4):
            self.dns.add_zone(f"d{i}.rcpt.test. 300 IN MX 10 mx.sink.test.")
        self.dns.add_txt("sel._domainkey.good.test", f"v=DKIM1; k=rsa; p={pub.decode()}")
        self.message = directory / "message.eml"
        self.message.write_bytes(self.signed_message(message_bytes))

    def signed_message(self, size: int) -> bytes:
        import dkim

        line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do.\r\n"
        head = (f"From: Alice <alice@good.test>\r\nTo: user@ours.test\r\n"
                f"Subject: benchmark message\r\nDate: {_date()}\r\n"
                f"Message-ID: <bench-{os.getpid()}-{time.time_ns()}@good.test>\r\n"
                f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
        body = line * max(1, (size - len(head) - 520) // len(line))
        raw = (head + body).encode()
        sig = dkim.sign(raw, b"sel", b"good.test", self.private_pem,
                        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
        return sig + raw

    @property
    def nameserver(self) -> dict:
        return self.dns.nameserver

    def queries(self) -> int:
        return len(self.dns.queries)

    def stop(self) -> None:
        self.dns.stop()


def _date() -> str:
    from email.utils import formatdate

    return formatdate()


# --- the counting sink ---------------------------------------------------------------------


class Sink:
    """bench/sink.py in its own process; `stats()` reads its counters."""

    def __init__(self, address: str = SINK_IP, data_reply: str | None = None) -> None:
        self.address = address
        self.port = free_port(address)
        extra = ["--data-reply", data_reply] if data_reply else []
        self.proc = subprocess.Popen(
            [PY, str(ROOT / "bench" / "sink.py"), address, str(self.port), *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout and json.loads(self.proc.stdout.readline())["ready"]

    def _ask(self, command: str) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stats(self) -> dict:
        return self._ask("stats")

    def reset(self) -> dict:
        return self._ask("reset")

    def wait_for(self, count: int, timeout: float, stall: float = 15.0) -> dict:
        """Wait until `count` messages have arrived (since the last reset), at most
        `timeout` seconds, or `stall` seconds without progress."""
        deadline = time.monotonic() + timeout
        last, last_change = -1, time.monotonic()
        while True:
            st = self.stats()
            if st["messages"] >= count or time.monotonic() > deadline:
                return st
            if st["messages"] != last:
                last, last_change = st["messages"], time.monotonic()
            elif time.monotonic() - last_change > stall:
                return st
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


# --- load generators ---------------------------------------------------------------------------


def _run_child(args: list[str]) -> dict:
    """Run a load generator; returns its JSON plus its own CPU seconds."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert proc.stdout
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{args[1]} failed ({proc.returncode}): {out[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["client_cpu_s"] = round(usage.ru_utime + usage.ru_stime, 3)
    return result


def run_load(job: dict) -> dict:
    return _run_child([PY, str(ROOT / "bench" / "smtpload.py"), json.dumps(job)])


def run_http_load(job: dict) -> dict:
    return _run_child([PY, str(ROOT / "bench" / "httpload.py"), json.dumps(job)])


# --- the node ------------------------------------------------------------------------------------


def serve_supports_workers() -> bool:
    out = subprocess.run([PY, "-m", "mta", "serve", "--help"], capture_output=True,
                         text=True, cwd=ROOT).stdout
    return "--workers" in out


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Node:
    """One `mta serve` process on loopback. The config starts from the defaults of
    config/mta.example.yaml; the benchmark's `overrides` are merged over it. Setup
    (accounts, routing, tokens) goes through the `mta` command line."""

    def __init__(self, directory: Path, database_url: str, world: World,
                 sink: Sink | Blackhole | None,
                 overrides: dict | None = None, workers: int | None = None) -> None:
        self.dir = directory / "node"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.workers = workers
        listeners = {name: {"address": "127.0.0.1", "port": free_port()}
                     for name in ("mx", "http", "metrics")}
        base = {
            "node": {"hostname": "mx.bench.test"},
            "state_dir": str(self.dir / "state"),
            "database": {"url": database_url},
            "listeners": listeners,
            "dns": {"nameservers": [world.nameserver], "timeout": "2s"},
            "secret_key": "bench-secret-key",
            "srs": {"domain": "srs.bench.test", "secrets": ["bench-srs-secret"]},
        }
        if sink is not None:
            base["delivery"] = {"smart_host": {"host": sink.address, "port": sink.port,
                                               "tls": "none"}}
        self.config = _merge(base, overrides or {})
        self.config_path = self.dir / "mta.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.env = dict(os.environ, MTA_CONFIG=str(self.config_path))
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "node.log"
        self.postgres_pid: int | None = None

    def port(self, listener: str) -> int:
        return self.config["listeners"][listener]["port"]

    def cli(self, *commands: list[str]) -> list[str]:
        """Run `mta` commands (argument lists) through the installed command line's
        entry point, in one process (one import instead of one per command); returns
        each command's stdout."""
        script = ("import contextlib, io, json, sys\n"
                  "from mta.cli import main\n"
                  "outs = []\n"
                  "for argv in json.loads(sys.argv[1]):\n"
                  "    buf = io.StringIO()\n"
                  "    with contextlib.redirect_stdout(buf):\n"
                  "        rc = main(argv)\n"
                  "    if rc:\n"
                  "        sys.exit(f'mta {argv} exited {rc}: {buf.getvalue()}')\n"
                  "    outs.append(buf.getvalue())\n"
                  "print(json.dumps(outs))\n")
        done = subprocess.run([PY, "-c", script, json.dumps([list(c) for c in commands])],
                              env=self.env, cwd=ROOT, text=True, capture_output=True)
        if done.returncode != 0:
            raise RuntimeError(f"mta commands failed: {done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def setup(self, forward_to: str | None = "dest@sink.test", sending: bool = False) -> dict:
        """Migrate, create account `bench`; with `forward_to`, zone ours.test with a
        catch-all forwarding there (destination marked verified by the operator); with
        `sending`, sending domain sender.test and a send token. Returns {account_id,
        token}."""
        zones: list[dict] = []
        spec: dict = {"account": "bench", "zones": zones}
        if forward_to:
            spec["destination_addresses"] = [forward_to]
            zones.append({"name": "ours.test", "routing": True,
                          "catch_all": {"enabled": True, "forward": [forward_to]}})
        if sending:
            zones.append({"name": "sender.test", "sending_domains": [{"name": "sender.test"}]})
        routing = self.dir / "routing.yaml"
        routing.write_text(yaml.safe_dump({"version": 1, "accounts": [spec]}))
        commands = [["db", "upgrade"], ["accounts", "create", "bench"],
                    ["apply", str(routing)], ["addresses", "list", "--account", "bench"]]
        if sending:
            commands.append(["tokens", "create", "--account", "bench", "--name", "bench",
                             "--permission", "email_sending:send"])
        outs = self.cli(*commands)
        result = {"account_id": outs[1].strip().splitlines()[-1]}
        if sending:
            result["token"] = outs[4].strip().splitlines()[-1]
        pending = [line.split()[0] for line in outs[3].splitlines()[1:]
                   if forward_to and line.split()[-1:] == [forward_to] and "pending" in line]
        if pending:
            self.cli(*(["addresses", "verify", "--id", i] for i in pending))
        return result

    def start(self, timeout: float = 90) -> Node:
        args = [PY, "-m", "mta", "serve", "--config", str(self.config_path)]
        if self.workers:
            args += ["--workers", str(self.workers)]
        self.log_handle = self.log.open("ab")
        self.proc = subprocess.Popen(args, env=self.env, cwd=ROOT, stdout=self.log_handle,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mta serve exited {self.proc.returncode}:\n"
                                   + self.log.read_text()[-4000:])
            if '"node.ready"' in self.log.read_text(errors="replace"):
                wait_port("127.0.0.1", self.port("http"))
                return self
            time.sleep(0.1)
        raise TimeoutError("mta serve not ready:\n" + self.log.read_text()[-4000:])

    def pids(self) -> list[int]:
        """The node's process tree roots, plus the database's."""
        return [p for p in (self.proc.pid if self.proc else None, self.postgres_pid) if p]

    def stop(self, blackhole: Blackhole | None = None) -> None:
        if blackhole is not None:
            blackhole.close()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc:
            self.log_handle.close()


# --- one measured SMTP level -------------------------------------------------------------


def smtp_level(roots, sink: Sink, port: int, message: Path, concurrency: int, messages: int,
               per_session: int, *, end_to_end: bool, mail_from: str = "alice@good.test",
               rcpt: str = "user@ours.test", world: World | None = None,
               e2e_timeout: float = 120, **job) -> dict:
    """Send `messages` at `concurrency` to 127.0.0.1:`port` and measure. `roots` gives
    the target's process roots (called before and after). With `end_to_end`, wait for
    the sink to receive every accepted message: e2e/s = arrived / (last arrival - first
    connect), CPU per arrived message; otherwise CPU per accepted message."""
    sink.reset()
    dns0 = world.queries() if world else 0
    pids = roots()
    cpu0 = [cpu_seconds([p]) for p in pids]
    load = run_load({"host": "127.0.0.1", "port": port, "concurrency": concurrency,
                     "messages": messages, "per_session": per_session,
                     "message": str(message), "mail_from": mail_from, "rcpt": rcpt, **job})
    st = sink.wait_for(load["accepted"], e2e_timeout) if end_to_end else sink.stats()
    parts = [cpu_seconds([p]) - c0 for p, c0 in zip(pids, cpu0, strict=True)]
    cpu = sum(parts)
    arrived = st["messages"]
    done = arrived if end_to_end else load["accepted"]
    row = {
        "concurrency": concurrency, "messages": messages, "accepted": load["accepted"],
        "refused": load["refused"], "errors": load["errors"], "arrived": arrived,
        "accept_per_s": round(load["accepted"] / load["seconds"], 1),
        "e2e_per_s": (round(arrived / (st["last"] - load["start"]), 1)
                      if end_to_end and arrived else None),
        "p50_ms": load["p50_ms"], "p99_ms": load["p99_ms"],
        "setup_p50_ms": load["setup_p50_ms"],
        "cpu_ms_per_msg": round(cpu * 1000 / done, 2) if done else None,
        "cpu_s": round(cpu, 2), "client_cpu_s": load["client_cpu_s"],
        # per process tree, in the order of roots() (mta: node, PostgreSQL)
        "cpu_ms_per_msg_by_tree": [round(x * 1000 / done, 2) if done else None
                                   for x in parts],
        "sink": {k: st[k] for k in ("sessions", "srs", "arc", "dkim_fields")},
        "dns_queries": (world.queries() - dns0) if world else None,
        "first_refusal": load["first_refusal"], "first_error": load["first_error"],
    }
    return row


# --- shared set-ups ----------------------------------------------------------------------

class Blackhole:
    """A next hop that never answers: a listening socket nobody accepts from. Delivery
    workers pointed at it (through `delivery.smart_host`) connect and then wait for a
    banner that never comes, so each holds one batch and spends nothing more: what the
    node accepts stays queued. (`delivery.workers: 0` is not honoured by `mta serve
    --workers`, which gives every process at least one.) `close()` resets the waiting
    connections, so the node can stop promptly."""

    def __init__(self, address: str = SINK_IP) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((address, 0))
        self.sock.listen(4096)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


# Accept-only sending: answer once the message is queued (no wait for a first attempt),
# no rate limits, delivery workers off where honoured (and pointed at a Blackhole).
ACCEPT_ONLY = {"delivery": {"workers": 0},
               "sending": {"sync_delivery_timeout": "0s", "account_rate": 0,
                           "account_daily": 0}}


def queue_depth(node: Node) -> dict:
    """`mta queue stats --json` of the node's database: deliveries per state."""
    return json.loads(node.cli(["queue", "stats", "--json"])[0]).get("depth", {})


def add_common_args(p, messages: int, levels: str = "1,10,50") -> None:
    p.add_argument("--concurrency", default=levels)
    p.add_argument("--workers", type=int, default=None,
                   help="mta serve --workers N (passed when mta serve supports it)")


def node_workers(requested: int | None) -> int | None:
    return requested if requested and serve_supports_workers() else None

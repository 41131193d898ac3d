"""A private PostgreSQL cluster under the state directory.

Used when no database URL is configured, and by the test suite. The server listens
on a unix socket only (no TCP), in a directory only its owner can enter. PostgreSQL
refuses to run as root, so when we are root the cluster belongs to an unprivileged
system user (created if needed) and initdb/pg_ctl run as that user.

The socket file lives in `<base_dir>/run`, but everybody (the server included) names it
through a short alias, a symlink `/tmp/mta-pg-<uid>-<hash>` -> run/: a unix socket's path
must fit in 107 bytes, and a state directory may be deeper than that. Each process makes
its own alias on first use (the node's /tmp may be private, systemd's PrivateTmp=), so the
alias needs no coordination; it is made again if a /tmp cleaner removed it.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import pwd
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("mta.store.embedded")

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError", "find_pg_bin"]

DEFAULT_SYSTEM_USER = "mta"
SOCKET_ALIAS_DIR = Path("/tmp")
SOCKET_NAME = ".s.PGSQL.5432"


class EmbeddedPostgresError(RuntimeError):
    pass


def find_pg_bin() -> Path:
    """The directory holding initdb, pg_ctl and postgres: PATH first, then the
    Debian layout /usr/lib/postgresql/<version>/bin (newest version)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parent.parent.name)
                        if Path(p).parent.parent.name.isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    raise EmbeddedPostgresError(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH or under "
        "/usr/lib/postgresql/*/bin; install them with `apt-get install -y postgresql` "
        "or configure database.url")


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    subprocess.run([useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", name], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return pwd.getpwnam(name)


def _ensure_alias(alias: Path, target: Path) -> None:
    """`alias` is a symlink of ours to `target` when this returns. Someone else's file
    under that name (/tmp is shared) is refused, not followed."""
    try:
        st = os.lstat(alias)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid():
            raise EmbeddedPostgresError(
                f"{alias} (the embedded database's socket directory) exists and is not a "
                "symlink of ours; remove it")
        if os.readlink(alias) == str(target):
            return
    # Made under a temporary name and renamed: never a moment without a valid alias.
    tmp = alias.with_name(f"{alias.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, alias)


@dataclass
class EmbeddedPostgres:
    """One cluster in `base_dir` (data/ and run/ inside it)."""

    base_dir: Path
    database: str = "mta"
    system_user: str = DEFAULT_SYSTEM_USER
    extra_settings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.base_dir = Path(self.base_dir)
        self.bin = find_pg_bin()
        self._owner: pwd.struct_passwd | None = None
        self._proc: subprocess.Popen | None = None  # the postmaster, when we started it

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def run_dir(self) -> Path:
        """Where the socket file really is."""
        return self.base_dir / "run"

    def _alias(self) -> tuple[Path, Path]:
        target = Path(os.path.realpath(self.run_dir))
        digest = hashlib.sha256(str(target).encode()).hexdigest()[:16]
        return SOCKET_ALIAS_DIR / f"mta-pg-{os.geteuid()}-{digest}", target

    @property
    def socket_dir(self) -> Path:
        """The short name of run_dir that servers and clients use (made if missing)."""
        alias, target = self._alias()
        _ensure_alias(alias, target)
        return alias

    @property
    def owner(self) -> pwd.struct_passwd:
        if self._owner is None:
            if os.geteuid() == 0:
                self._owner = _ensure_system_user(self.system_user)
            else:
                self._owner = pwd.getpwuid(os.geteuid())
        return self._owner

    @property
    def role(self) -> str:
        return self.owner.pw_name

    def url(self, database: str | None = None, driver: str = "asyncpg") -> str:
        db = database or self.database
        return f"postgresql+{driver}://{self.role}@/{db}?host={self.socket_dir}"

    # -- lifecycle -------------------------------------------------------------------

    def _run(self, args: list[str], **kw) -> subprocess.CompletedProcess:
        as_other = os.geteuid() == 0
        env = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8")
        try:
            return subprocess.run(
                args, check=True, capture_output=True, text=True, env=env,
                user=self.owner.pw_uid if as_other else None,
                group=self.owner.pw_gid if as_other else None,
                extra_groups=[] if as_other else None, cwd="/", **kw)
        except subprocess.CalledProcessError as exc:
            raise EmbeddedPostgresError(
                f"{Path(args[0]).name} failed ({exc.returncode}): "
                f"{(exc.stderr or exc.stdout).strip()}") from None

    @property
    def socket_path(self) -> str:
        """The socket clients connect to, as error messages name the database."""
        return str(self.socket_dir / SOCKET_NAME)

    def prepare(self) -> None:
        """Create base_dir (and run/) for the server user; safe to repeat."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        for d in (self.base_dir, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
            os.chown(d, self.owner.pw_uid, self.owner.pw_gid)
            d.chmod(0o700)
        # The server user must be able to reach base_dir through its parents.
        parent = self.base_dir.parent
        while os.geteuid() == 0 and parent != parent.parent:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)
            parent = parent.parent

    @property
    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> bool:
        """Create the cluster on first use; returns True when it was created now."""
        self.prepare()
        if self.initialised:
            return False
        log.info("initialising embedded PostgreSQL in %s", self.data_dir)
        self._run([str(self.bin / "initdb"), "-D", str(self.data_dir), "-U", self.role,
                   "--auth-local=peer", "--auth-host=reject", "-E", "UTF8",
                   "--locale=C.UTF-8", "--no-instructions"])
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as f:
            f.write("\n# written by mta: unix socket only, private directory\n")
            f.write("listen_addresses = ''\n")
            # Overridden by `start` with the short alias; here for a manual pg_ctl.
            f.write(f"unix_socket_directories = '{self.run_dir}'\n")
            f.write("unix_socket_permissions = 0700\n")
            for line in self.extra_settings:
                f.write(line + "\n")
        # Root connects to the cluster owned by the system user: map root to that role.
        ident = self.data_dir / "pg_ident.conf"
        with ident.open("a") as f:
            f.write(f"mta root {self.role}\nmta {self.role} {self.role}\n")
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text("local all all peer map=mta\n")
        return True

    @property
    def running(self) -> bool:
        pid = self.data_dir / "postmaster.pid"
        if not pid.exists():
            return False
        try:
            self._run([str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "status"])
            return True
        except EmbeddedPostgresError:
            return False

    def start(self, timeout: float = 60) -> None:
        self.init()
        if not self.running:
            self._spawn()
        self.wait_ready(timeout)
        self.create_database(self.database, exist_ok=True)

    def _spawn(self) -> None:
        """Run the postmaster as our own child (not daemonised by pg_ctl): we learn of its
        death at once and reap it, so a restart never meets a zombie still holding
        postmaster.pid. Its own session: Ctrl-C on the terminal reaches the node, which
        finishes its work first and then stops the cluster itself."""
        logfile = self.base_dir / "postgresql.log"
        if not logfile.exists():
            logfile.touch()
            os.chown(logfile, self.owner.pw_uid, self.owner.pw_gid)
        as_other = os.geteuid() == 0
        env = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8")
        with logfile.open("ab") as out:
            self._proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data_dir),
                 "-c", "listen_addresses=", "-c", f"unix_socket_directories={self.socket_dir}",
                 # jit=off: LLVM JIT needs writable+executable memory, which the systemd
                 # unit forbids (MemoryDenyWriteExecute=yes); our short OLTP queries
                 # never reach the JIT's cost threshold anyway.
                 "-c", "jit=off"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                user=self.owner.pw_uid if as_other else None,
                group=self.owner.pw_gid if as_other else None,
                extra_groups=[] if as_other else None, cwd="/", start_new_session=True)

    def alive(self) -> bool:
        """Whether the postmaster is up, cheaply (no subprocess): our child's state, or
        for a postmaster someone else started, its pid from postmaster.pid."""
        if self._proc is not None:
            return self._proc.poll() is None
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            return False
        return state != "Z"

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                self._proc = None
                raise EmbeddedPostgresError(
                    f"PostgreSQL exited while starting; see {self.base_dir / 'postgresql.log'}")
            try:
                self._run([str(self.bin / "pg_isready"), "-h", str(self.socket_dir), "-q"])
                return
            except EmbeddedPostgresError:
                time.sleep(0.1)
        raise EmbeddedPostgresError(f"PostgreSQL at {self.socket_path} did not become ready "
                                    f"in time; see {self.base_dir / 'postgresql.log'}")

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self._run([str(self.bin / "psql"), "-h", str(self.socket_dir), "-U", self.role,
                          "-d", database, "-v", "ON_ERROR_STOP=1", "-tAc", sql]).stdout

    def create_database(self, name: str, exist_ok: bool = True, template: str | None = None
                        ) -> None:
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'").strip()
        if exists:
            if not exist_ok:
                raise EmbeddedPostgresError(f"database {name} exists")
            return
        tmpl = f' TEMPLATE "{template}"' if template else ""
        self.psql(f'CREATE DATABASE "{name}"{tmpl}')

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            log.info("stopping embedded PostgreSQL")
            self._run([str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w",
                       "stop"])
            if self._proc is not None:
                self._proc.wait(30)
                self._proc = None
            # Nobody can connect any more: leave no dangling alias in /tmp.
            alias, _ = self._alias()
            if alias.is_symlink() and alias.lstat().st_uid == os.geteuid():
                alias.unlink(missing_ok=True)

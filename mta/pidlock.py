"""An exclusive lock held by one process, which says who holds it.

A `flock` on a file: the kernel drops it when the holder exits, however it dies (SIGKILL
included), so a lock is never stale and nobody has to guess whether a recorded pid is
still ours. The holder writes its pid and a role into the file so that whoever is refused
can say who holds it. The descriptor is not inherited by programs we exec.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

__all__ = ["PidLock"]


class PidLock:
    def __init__(self, path: Path, role: str, owner_uid: int | None = None,
                 owner_gid: int | None = None) -> None:
        self.path = Path(path)
        self.role = role
        self._owner = (owner_uid, owner_gid)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; True when we hold it now."""
        if self._fd is not None:
            return True
        # No O_TRUNC: the current holder's record must survive our attempt. A file that
        # another user created (root running a command) is locked read-only, unrecorded.
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            writable = True
        except PermissionError:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            writable = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        uid, gid = self._owner
        if uid is not None and os.geteuid() == 0:
            # Root may create the file for a cluster that an unprivileged user also runs.
            os.fchown(fd, uid, gid if gid is not None else -1)
        if writable:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {self.role}\n".encode())
        self._fd = fd
        return True

    def acquire(self, timeout: float, on_wait=None) -> bool:
        """Wait up to `timeout` seconds for the lock; `on_wait(holder)` is called once
        when we have to wait."""
        deadline = time.monotonic() + timeout
        told = False
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                return False
            if not told and on_wait is not None:
                on_wait(self.holder())
                told = True
            time.sleep(0.1)
        return True

    def holder(self) -> tuple[int, str] | None:
        """(pid, role) of the process recorded in the file, when there is one."""
        try:
            pid, role = self.path.read_text().split()[:2]
            return int(pid), role
        except (OSError, ValueError):
            return None

    def describe_holder(self) -> str:
        holder = self.holder()
        return f"pid {holder[0]}, {holder[1]}" if holder else "another process"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

"""One process per run directory: a lock file that a second process finds held, with a clear message.

    with RunLock(run_dir, "meta_train"):
        ...   # only this process writes to run_dir

``<run_dir>/.lock`` records the holder (pid, host, start time, job). The lock itself is an
``fcntl`` lock on that file, which the kernel releases when the holder dies, even by ``kill -9``;
so a lock file left behind by a dead process is stale and is taken over (its pid is named in
a warning). Where the file system has no ``fcntl`` locks, the pid decides instead: a lock
whose pid is alive on this host is held, one whose pid is gone is stale.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not on POSIX: the pid check alone
    fcntl = None

LOCK_NAME = ".lock"


class RunLocked(RuntimeError):
    """Another live process holds the run directory."""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) holds nothing any more
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class RunLock:
    """See the module docstring. ``job`` names the holder in the message a second process gets."""

    def __init__(self, run_dir: str | Path, job: str):
        self.run_dir, self.job = Path(run_dir), job
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    def _holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _refuse(self, holder: dict[str, Any]) -> None:
        raise RunLocked(f"{self.run_dir} is in use by another process: {holder.get('job', 'a run')} "
                        f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
                        f"{holder.get('started', '?')}). Wait for it to finish, stop it, or use another run "
                        f"directory; nothing was written. (If that process is gone, {self.path} is stale and "
                        f"the next start takes it over.)")

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            holder = self._holder()
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    locked = True
                except BlockingIOError:
                    os.close(fd)
                    self._refuse(holder)
                except OSError as e:
                    if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                        os.close(fd)
                        raise
                    locked = False
            else:
                locked = False
            if not locked and holder.get("host") == socket.gethostname() and holder.get("pid") != os.getpid() \
                    and pid_alive(int(holder.get("pid", 0))):
                os.close(fd)
                self._refuse(holder)
            # the file may have been removed (and recreated) by its previous holder after we opened it
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        if holder.get("pid") and holder.get("pid") != os.getpid():
            warnings.warn(f"{self.path}: stale lock of pid {holder['pid']} ({holder.get('job', '?')}, no longer "
                          f"running) taken over", RuntimeWarning, stacklevel=3)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "job": self.job,
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()  # before unlocking: a waiting opener then sees another inode and retries
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

"""One batch at a time per output folder: DIR/.flux2-batch.lock.

Two batches writing into one folder would both number their files from the same counter and both append
every line to one manifest. The second one is refused in one line naming the first (its pid and when it
started); nothing of it has run, and when the first has ended, the same command resumes from the
manifest. Refused rather than made to wait: a batch can run for hours, and a command that sits silent
looks hung.

The lock is an advisory `flock` on the file, held while the batch runs: the kernel drops it when the
process ends however it ends (kill -9 included), so a lock left by a dead process is never in the way;
the pid in the file is only there to be named. Where `fcntl` is missing (Windows), the file is created
with O_EXCL instead, and one whose pid no longer runs is taken over.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from ...flux2.errors import InputError

LOCK_NAME = ".flux2-batch.lock"

try:
    import fcntl
except ImportError:           # Windows
    fcntl = None


class FolderLock:
    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the folder, or raise InputError naming the batch that has it."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = self._open_flock() if fcntl is not None else self._open_exclusive()
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if fcntl is None:            # the O_EXCL file is the lock itself: remove it (flock's file can stay)
            try:
                os.unlink(self.path)
            except OSError:
                pass
        os.close(fd)                 # closing also drops the flock

    def _open_flock(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise InputError(self._busy()) from None
        return fd

    def _open_exclusive(self) -> int:
        for _ in range(2):
            try:
                return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = _holder(self.path)
                if holder.get("pid") and _alive(holder["pid"]):
                    raise InputError(self._busy()) from None
                try:                  # left by a process that is gone: take it over
                    os.unlink(self.path)
                except OSError:
                    pass
        raise InputError(self._busy())

    def _busy(self) -> str:
        holder = _holder(self.path)
        who = (f"pid {holder['pid']}" + (f" on {holder['host']}" if holder.get("host") else "")
               + (f", started {holder['started']}" if holder.get("started") else "")) if holder.get("pid") else "?"
        return (f"{self.path.parent} is in use by another batch ({who}); two batches in one folder would "
                "overwrite each other's files and manifest lines - wait for it to end (then the same command "
                "resumes) or give another --output-dir")

    def __del__(self):
        self.release()               # a Batch dropped without close() must not keep its folder

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # it runs, as another user
        return True
    except OSError:
        return False
    return True

"""One writer per folder: an OS lock (`fcntl.flock`) on `<folder>/.lock`, held while a run writes there.

The kernel drops the lock when the process ends, however it ends (SIGKILL included), so a lock is never
stale and needs no cleanup. The holder writes who it is into the file (pid, host, start time, command), so
a second run can name it; the file is removed when the holder is done.

    with FolderLock("profiles/demo", "profile"):      # FolderLocked if another process holds it
        ...                                            # measure and append
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from pathlib import Path

LOCK_NAME = ".lock"


class FolderLocked(ValueError):
    """Another process holds the folder's lock; the message names it (pid, host, start time)."""


def _holder(fd: int) -> str:
    """Who holds the lock, from what it wrote into the lock file (it may not have written yet)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0))
        return f"mpsearch {info['command']} (pid {info['pid']} on {info['host']}, started {info['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (starting: it has not written its pid yet)"


class FolderLock:
    """Exclusive, non-blocking lock of `folder` (created if missing, parents too) for one `command`.

    `__enter__` raises `FolderLocked` naming the holder, having written nothing. `__exit__` removes the
    lock file, and the folders it created when they are still empty (a run refused for bad input leaves
    nothing behind)."""

    def __init__(self, folder: str | Path, command: str = "run"):
        self.folder, self.command = Path(folder), command
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._created: list[Path] = []

    def __enter__(self) -> FolderLock:
        missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        self.folder.mkdir(parents=True, exist_ok=True)
        self._created = [p for p in missing if p.exists()]
        try:
            self._fd = self._acquire()
        except BaseException:
            self._remove_created()
            raise
        info = {"command": self.command, "pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(info).encode() + b"\n", 0)
        return self

    def _acquire(self) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise FolderLocked(f"{self.folder} is in use by {holder}; wait for it to finish or choose "
                                   f"another --out") from None  # fmt: skip
            except BaseException:
                os.close(fd)
                raise
            # The previous holder removes the file on release: if it did after our open, we locked a file
            # nobody else will open; lock the one now at the path instead.
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                st = None
            mine = os.fstat(fd)
            if st is not None and (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                return fd
            os.close(fd)

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding it (see _acquire)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None
        self._remove_created()

    def _remove_created(self) -> None:
        for p in self._created:  # deepest first
            try:
                p.rmdir()
            except OSError:
                break  # not empty: the run wrote there, keep it and its parents
        self._created = []


def check_unlocked(folder: str | Path, what: str) -> None:
    """Raise `FolderLocked` if a process holds `folder`'s lock now (e.g. a shard still being measured);
    creates nothing. `what` names the folder's role in the message."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise FolderLocked(f"{what} {folder} is still being written by {_holder(fd)}; wait for it to "
                           f"finish") from None  # fmt: skip
    finally:
        os.close(fd)

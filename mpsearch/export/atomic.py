"""Folders written all-or-nothing: build in a temporary sibling, rename it into place at the end.

    with staged("out/q", overwrite=True, is_ours=lambda p: (p / "export.json").is_file()) as tmp:
        (tmp / "export.json").write_text("{}")   # tmp = out/.q.partial-<hex>
    # out/q is now the new folder, whole; an exception in the block removes tmp and leaves out/q as it was

The sibling lies on the same file system as the target, so the final rename is atomic: a process killed
at any moment (SIGKILL included) leaves the target absent or as it was before, never half written.
Replacing an existing folder swaps the two in one step (Linux `renameat2(RENAME_EXCHANGE)`; elsewhere two
renames, and a kill between them leaves the target absent). Each writer holds an `flock` on its sibling
for its whole run; a sibling nobody holds was left by a killed run, and the next `staged` of the same
target removes it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL = ".partial-"  # <parent>/.<name>.partial-<hex>: a folder being written, or left by a killed run


def _prefix(out: Path) -> str:
    return f".{out.name[:200]}{PARTIAL}"  # a long name keeps room for the suffix under NAME_MAX (255)


def check_target(out: str | Path, overwrite: bool = False, is_ours: Callable[[Path], bool] | None = None) -> None:
    """Refuse a target that is a file, lies under a file, or is a non-empty folder (unless `overwrite`,
    and then only a folder `is_ours` recognises: never replace what this tool did not write).

    Raises `NotADirectoryError` / `FileExistsError` with a one-line message; writes nothing."""
    out = Path(out)
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise NotADirectoryError(f"{p} is a file, not a folder" + ("" if p == out else f": cannot create {out}"))
            break
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty: pass --overwrite (overwrite=True) to replace "
                                  "it whole, or choose another folder")
        if is_ours is not None and not is_ours(out):
            raise FileExistsError(f"{out} is not a folder this tool wrote: refusing to replace it; remove it "
                                  "yourself or choose another folder")


def remove_stale(out: str | Path) -> list[Path]:
    """Remove the temporary siblings of `out` that killed runs left (those no live writer holds)."""
    out = Path(out)
    removed = []
    with os.scandir(out.parent) as entries:
        stale = [Path(e.path) for e in entries if e.name.startswith(_prefix(out))]
    for p in stale:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live writer
        else:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        finally:
            os.close(fd)
    return removed


def _claim(out: Path) -> tuple[Path, int]:
    """A new sibling folder (mode from the umask, as a plain mkdir) and an fd holding its lock."""
    while True:
        tmp = out.parent / f"{_prefix(out)}{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        try:
            fd = os.open(tmp, os.O_RDONLY)
        except FileNotFoundError:  # a concurrent remove_stale took it between mkdir and open
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink > 0:  # ... or between open and flock
            return tmp, fd
        os.close(fd)


def _renameat2() -> Callable | None:
    """Linux's renameat2 (glibc 2.28+), or None where the C library lacks it."""
    return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)


def _replace(new: Path, out: Path) -> None:
    """Put the folder `new` in place of the folder `out` and delete the old one."""
    exchange = _renameat2()
    if exchange is not None:
        at_fdcwd, rename_exchange = -100, 2
        if exchange(at_fdcwd, os.fsencode(new), at_fdcwd, os.fsencode(out), rename_exchange) == 0:
            shutil.rmtree(new, ignore_errors=True)  # `new` now names the old folder
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # else: no exchange on this file system
            raise OSError(err, os.strerror(err), str(out))
    old = new.with_name(new.name + "-old")  # still a sibling remove_stale recognises
    os.rename(out, old)
    os.rename(new, out)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged(out: str | Path, *, overwrite: bool = False, is_ours: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield an empty temporary sibling of `out`; when the block ends without error it becomes `out`
    (replacing a previous one if `overwrite`, see `check_target`), else it is removed."""
    out = Path(out).resolve()
    check_target(out, overwrite, is_ours)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    tmp, fd = _claim(out)
    try:
        yield tmp
        try:
            os.rename(tmp, out)  # target absent or an empty folder: one atomic step
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            check_target(out, overwrite, is_ours)  # it may have appeared since the check above
            _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(fd)

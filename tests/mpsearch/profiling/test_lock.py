"""One writer per folder: a second holder is refused with the first one named, nothing is left behind,
and merge refuses a shard still being measured or an --out another run writes. (Two real processes and
SIGKILL: tests/mpsearch/profiling/test_profiler.py::test_one_writer_per_profile_folder_until_sigkill.)"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from mpsearch.profiling.lock import LOCK_NAME, FolderLock, FolderLocked
from mpsearch.profiling.store import merge

ROOT = Path(__file__).resolve().parents[3]


def test_second_holder_is_refused_and_named(tmp_path):
    folder = tmp_path / "p"
    with FolderLock(folder, "profile"):
        info = json.loads((folder / LOCK_NAME).read_text())
        assert (info["command"], info["pid"], info["host"]) == ("profile", os.getpid(), socket.gethostname())
        held = (folder / LOCK_NAME).read_bytes()
        with pytest.raises(FolderLocked) as e:  # flock: two opens of one file conflict, even in one process
            with FolderLock(folder, "merge"):
                pass
        msg = str(e.value)
        assert msg == (f"{folder} is in use by mpsearch profile (pid {os.getpid()} on {socket.gethostname()}, "
                       f"started {info['started']}); wait for it to finish or choose another --out")  # fmt: skip
        assert (folder / LOCK_NAME).read_bytes() == held  # the refused one wrote nothing
    with FolderLock(folder, "profile"):  # released: free again
        pass


def test_release_leaves_only_what_the_run_wrote(tmp_path):
    with FolderLock(tmp_path / "a" / "b"):
        assert (tmp_path / "a" / "b" / LOCK_NAME).is_file()
    assert not any(tmp_path.iterdir())  # folders it created, still empty, are removed
    with FolderLock(tmp_path / "a" / "b"):
        (tmp_path / "a" / "b" / "meta.json").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["meta.json"]
    with pytest.raises(RuntimeError), FolderLock(tmp_path / "c"):
        raise RuntimeError("bad input found after the lock was taken")
    assert not (tmp_path / "c").exists()


def test_merge_refuses_a_shard_being_measured_and_a_busy_out(tmp_path):
    shard = tmp_path / "shard"
    shutil.copytree(ROOT / "profiles" / "demo", shard)
    with FolderLock(shard, "profile"):
        with pytest.raises(FolderLocked, match=rf"^shard {shard} is still being written by mpsearch profile \(pid {os.getpid()} "):
            merge(tmp_path / "m", [shard])
    assert not (tmp_path / "m").exists()
    with FolderLock(tmp_path / "m", "profile"):
        with pytest.raises(FolderLocked, match=rf"^{tmp_path / 'm'} is in use by mpsearch profile"):
            merge(tmp_path / "m", [shard])
        assert [p.name for p in (tmp_path / "m").iterdir()] == [LOCK_NAME]
    merged = merge(tmp_path / "m", [shard])  # free again: merges, and leaves no lock file
    assert len(merged) > 0 and not (tmp_path / "m" / LOCK_NAME).exists()

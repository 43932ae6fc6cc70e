"""Folders written all-or-nothing: the staged sibling becomes the target whole, or disappears."""

from __future__ import annotations

import fcntl
import os

import pytest

from mpsearch.export import atomic
from mpsearch.export.atomic import PARTIAL, check_target, remove_stale, staged


def _is_ours(p):
    return (p / "done").is_file()


def _write(tmp, text):
    (tmp / "sub").mkdir()
    (tmp / "sub" / "a.txt").write_text(text)
    (tmp / "done").write_text("")


def test_staged_folder_appears_whole_and_replaces_a_previous_one(tmp_path):
    out = tmp_path / "deep" / "out"
    with staged(out) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(".out" + PARTIAL) and not out.exists()
        _write(tmp, "one")
    assert (out / "sub" / "a.txt").read_text() == "one"
    (out / "stale.txt").write_text("from the first run")
    with pytest.raises(FileExistsError, match="not empty"):
        with staged(out, is_ours=_is_ours):
            pass
    with staged(out, overwrite=True, is_ours=_is_ours) as tmp:
        _write(tmp, "two")
    assert sorted(p.name for p in out.iterdir()) == ["done", "sub"]  # replaced whole: no stale file
    assert (out / "sub" / "a.txt").read_text() == "two"
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]


def test_overwrite_without_renameat2_uses_two_renames(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with staged(out) as tmp:
        _write(tmp, "one")
    monkeypatch.setattr(atomic, "_renameat2", lambda: None)
    with staged(out, overwrite=True, is_ours=_is_ours) as tmp:
        _write(tmp, "two")
    assert (out / "sub" / "a.txt").read_text() == "two" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_error_in_the_block_leaves_the_target_as_it_was(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with staged(out) as tmp:
            _write(tmp, "half")
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []
    with staged(out) as tmp:
        _write(tmp, "one")
    with pytest.raises(KeyboardInterrupt):
        with staged(out, overwrite=True, is_ours=_is_ours) as tmp:
            _write(tmp, "half")
            raise KeyboardInterrupt
    assert (out / "sub" / "a.txt").read_text() == "one" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stale_siblings_are_removed_but_not_a_live_writers(tmp_path):
    out = tmp_path / "out"
    dead = tmp_path / (".out" + PARTIAL + "dead")
    (dead / "unet").mkdir(parents=True)
    live = tmp_path / (".out" + PARTIAL + "live")
    live.mkdir()
    other = tmp_path / (".other" + PARTIAL + "x")  # another target's sibling: not ours to judge
    other.mkdir()
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert remove_stale(out) == [dead]
        assert live.is_dir() and other.is_dir() and not dead.exists()
    finally:
        os.close(fd)
    assert remove_stale(out) == [live]


def test_check_target_refuses_files_and_foreign_folders(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder$"):
        check_target(tmp_path / "f")
    with pytest.raises(NotADirectoryError, match="cannot create"):
        check_target(tmp_path / "f" / "a" / "b")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes").write_text("keep")
    with pytest.raises(FileExistsError, match="not a folder this tool wrote"):
        check_target(tmp_path / "mine", overwrite=True, is_ours=_is_ours)
    check_target(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_target(tmp_path / "empty")


@pytest.mark.parametrize("when", ["before open", "after open"])
def test_claim_survives_a_cleaner_removing_its_new_sibling(tmp_path, monkeypatch, when):
    """A concurrent `remove_stale` may take a sibling between its mkdir and its flock: claim another."""
    real_open, calls = os.open, []

    def racing_open(path, flags, *args):
        calls.append(path)
        if len(calls) == 1 and when == "before open":
            os.rmdir(path)
        fd = real_open(path, flags, *args)
        if len(calls) == 1 and when == "after open":
            os.rmdir(path)
        return fd

    monkeypatch.setattr(os, "open", racing_open)
    tmp, fd = atomic._claim(tmp_path / "out")
    monkeypatch.undo()
    try:
        assert len(calls) == 2 and tmp == calls[1] and tmp.is_dir()
        assert [p.name for p in tmp_path.iterdir()] == [tmp.name]
        assert remove_stale(tmp_path / "out") == []  # held
    finally:
        os.close(fd)

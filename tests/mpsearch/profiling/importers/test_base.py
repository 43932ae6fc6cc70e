"""The importer contract: a registered importer is reached by name (an unknown one is named with the known
ones), and `write_profile` writes a folder all at once: it reads back as the same profile, and a folder
that is taken or rows that do not read back leave nothing behind."""

import json
import math

import pytest

from mpsearch.model import Inventory
from mpsearch.profiling import calibration as cal
from mpsearch.profiling.importers import IMPORTERS
from mpsearch.profiling.importers.base import import_profile, register_importer, write_profile
from mpsearch.profiling.profiler import profile
from mpsearch.profiling.store import Profile, ProfileError


@pytest.fixture(scope="module")
def measured(tiny_pipe_factory, tmp_path_factory):
    """A real profile folder of the tiny pipeline (one layer, two widths), as an importer would produce it."""
    out = tmp_path_factory.mktemp("src") / "p"
    profile(tiny_pipe_factory(), out=out, layers=r"^conv_in$", prompts=cal.demo_prompts(1), steps=2,
            tensors=("weight",), bits=(2, 8), metrics=["sqnr"])  # fmt: skip
    return out


def _parts(folder):
    meta = json.loads((folder / "meta.json").read_text())
    rows = [json.loads(line) for line in (folder / "measurements.jsonl").read_text().splitlines()]
    return meta, Inventory.load(folder / "inventory.json"), rows


def test_write_profile_reads_back_as_the_same_profile(measured, tmp_path):
    meta, inv, rows = _parts(measured)
    got = write_profile(tmp_path / "copy", meta, inv, rows)
    assert got.df.equals(Profile.load(measured).df) and len(got) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no staging folder left beside it
    assert Inventory.load(tmp_path / "copy" / "inventory.json").names == inv.names
    (tmp_path / "empty").mkdir()  # an empty folder may be the target
    assert len(write_profile(tmp_path / "empty", meta, inv, rows)) == 2


def test_a_taken_folder_or_bad_rows_leave_nothing(measured, tmp_path):
    meta, inv, rows = _parts(measured)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(ProfileError, match="already exists and is not an empty folder"):
        write_profile(taken, meta, inv, rows)
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
    bad = [dict(rows[0], degradation=math.nan), *rows[1:]]
    with pytest.raises(ProfileError, match=r"measurements.jsonl:1: degradation nan: must be a finite number"):
        write_profile(tmp_path / "bad", meta, inv, bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # neither `bad` nor a staging folder


def test_importers_are_reached_by_name(measured, tmp_path):
    @register_importer("copy-of-a-profile")
    def copy(src, out, *, model=None):
        return write_profile(out, *_parts(src))

    try:
        got = import_profile("copy-of-a-profile", measured, tmp_path / "out")
        assert len(got) == 2 and (tmp_path / "out" / "meta.json").is_file()
        assert "mixdq" in IMPORTERS
        with pytest.raises(ValueError, match=r"unknown profile format 'nope'; available: .*copy-of-a-profile.*mixdq"):
            import_profile("nope", measured, tmp_path / "other")
    finally:
        IMPORTERS.pop("copy-of-a-profile")

"""The demo job (`mpsearch/evaluation/demo.py`): which profile folder a path or a bundled model names, that
the job refuses a missing profile or an unreadable/infeasible budget before it writes anything, and that
`make demo`'s CLI refuses an unknown model in one line. (The whole job, evaluation included, is `make demo`:
minutes on 2 cores, too slow for a unit test.)"""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mpsearch.cli import app
from mpsearch.evaluation.demo import (
    BUDGETS,
    DEFAULT_PROFILE,
    PROFILE,
    PROFILE_DIT,
    PROFILES,
    profile_folder,
    run_demo,  # fmt: skip
)
from mpsearch.planning.budget import BudgetError, BudgetInfeasible
from mpsearch.planning.planner import solve


def test_the_bundled_profile_is_package_data_and_solves_every_demo_budget():
    assert PROFILE.parent.name == "profiles" and PROFILE.parent.parent.name == "mpsearch"
    assert json.loads((PROFILE / "meta.json").read_text())["model"] == "demo"
    bits = [solve(PROFILE, b).predicted["mean_w_bits"] for b in BUDGETS]
    assert BUDGETS == ("3bits", "2.5bits", "4bits")
    assert all(got <= float(b.removesuffix("bits")) + 1e-9 for got, b in zip(bits, BUDGETS, strict=True))


def test_profile_folder_names_the_bundled_profile_unless_one_is_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert profile_folder() == profile_folder(None) == PROFILE
    assert profile_folder("demo") == profile_folder(DEFAULT_PROFILE) == profile_folder("profiles/demo") == PROFILE
    assert profile_folder("elsewhere") == Path("elsewhere")  # any other path is itself, profile or not
    (tmp_path / "profiles" / "demo").mkdir(parents=True)
    assert profile_folder(DEFAULT_PROFILE) == PROFILE  # a folder without a profile in it: still the bundled one
    shutil.copy(PROFILE / "meta.json", tmp_path / "profiles" / "demo" / "meta.json")
    assert profile_folder(DEFAULT_PROFILE) == DEFAULT_PROFILE  # `mpsearch profile` wrote one here: that one
    assert profile_folder(None) == PROFILE


def test_a_missing_profile_is_refused_with_the_command_that_makes_it(tmp_path):
    empty = tmp_path / "empty"
    with pytest.raises(FileNotFoundError, match=f"no profile in {empty}: run `mpsearch profile --out {empty}` first"):
        run_demo(tmp_path / "out", profile=empty)
    assert not (tmp_path / "out").exists()


def test_a_bad_budget_stops_the_job_before_anything_is_written(tmp_path):
    """Every budget is solved before any plan is saved: an infeasible second budget leaves no folder."""
    logged = []
    with pytest.raises(BudgetInfeasible, match="budget 0.1bits is infeasible: the smallest feasible is 2bits"):
        run_demo(tmp_path / "out", budgets=("3bits", "0.1bits"), log=logged.append)
    assert len(logged) == 1 and logged[0].startswith("solved 3bits: ") and "mean 3.00 bits" in logged[0]
    assert not (tmp_path / "out").exists()
    with pytest.raises(BudgetError, match="cannot read budget 'nonsense'"):
        run_demo(tmp_path / "out", budgets=("nonsense",))
    assert not (tmp_path / "out").exists()


def test_bundled_profile_names_resolve_to_the_shipped_profiles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./profiles here
    assert profile_folder(None) == profile_folder("demo") == profile_folder("profiles/demo") == PROFILE
    assert profile_folder("demo-dit") == profile_folder(Path("profiles/demo-dit")) == PROFILE_DIT
    assert profile_folder("elsewhere") == Path("elsewhere")
    assert set(PROFILES) == {"demo", "demo-dit"}
    for folder in PROFILES.values():
        assert (folder / "meta.json").is_file() and (folder / "inventory.json").is_file()


def test_a_local_profile_of_that_name_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "profiles" / "demo-dit").mkdir(parents=True)
    (tmp_path / "profiles" / "demo-dit" / "meta.json").write_text("{}")
    assert profile_folder("profiles/demo-dit") == Path("profiles/demo-dit")


def test_demo_refuses_an_unknown_model_in_one_line():
    result = CliRunner().invoke(app, ["demo", "--model", "sd15"])
    assert result.exit_code == 2
    assert "error: --model sd15: choose among demo, demo-dit" in " ".join(result.output.split())

"""`mpsearch solve` on the shipped demo profile: plans, fronts, pruning, JSON, and the error contract
(fuzzed budgets and damaged profile folders: one `error:` line, exit 2, nothing written)."""

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from typer.testing import CliRunner

from mpsearch.cli import app
from mpsearch.planning.budget import Budget, BudgetError
from tests.mpsearch.cli.damage import BUDGETS, DEMO, FUZZ, damage_json, damage_rows, refused, snapshot

runner = CliRunner()


def test_solve_with_the_shipped_profile(tmp_path):
    from mpsearch.planning.plan import Plan

    out = tmp_path / "plan.json"
    result = runner.invoke(app, ["solve", "--budget", "3bits", "-o", str(out), "--pareto", "2.5bits:4bits:4"])
    assert result.exit_code == 0, result.output
    assert "mean of 3 weight bits" in result.output and "optimal" in result.output
    plan = Plan.load(out)
    assert plan.predicted["mean_w_bits"] <= 3.0
    assert out.with_suffix(".pareto.csv").is_file() and out.with_suffix(".pareto.png").is_file()


def test_solve_with_a_model_reranks_by_sampling(tmp_path):
    from mpsearch.planning.plan import Plan

    out = tmp_path / "plan.json"
    args = ["solve", "--budget", "2.5bits", "--model", "demo", "--fitness-prompts", "1", "-o", str(out)]
    result = runner.invoke(app, [*args, "--rerank", "2"])
    assert result.exit_code == 0, result.output
    record = Plan.load(out).solver["rerank"]
    assert "re-ranked 2 plans by ssim on 1 prompts" in result.output and len(record["candidates"]) == 2
    assert record["cost"]["renders"] == 3
    # predicted beside measured, per candidate, and the cost, on the console
    assert "re-ranked by sampling: 2 plans under the budget" in result.output
    for c in record["candidates"]:
        assert f"{c['predicted_loss']:.4g}" in result.output and f"{c['measured_ssim']:.4g}" in result.output
    assert f"re-ranking cost: 3 renders (3 images of 1 prompts, FP included), {record['cost']['seconds']:.1f} s" \
        in result.output
    off = record["chosen"] != record["predicted_best"]
    assert ("the additive model is off at this budget" in result.output) == off
    result = runner.invoke(app, [*args, "--rerank", "0"])
    assert result.exit_code == 0 and "rerank" not in Plan.load(out).solver  # the ILP's optimum, no sampling


def test_solve_infeasible_budget_names_the_smallest():
    result = runner.invoke(app, ["solve", "--budget", "100kB", "-o", "/tmp/never.json"])
    assert result.exit_code == 2
    assert "infeasible" in result.output and "smallest" in result.output
    result = runner.invoke(app, ["solve", "--budget", "lots"])
    assert result.exit_code == 2 and "accepted budgets" in result.output
    for solver in ("ilp", "mixdq", "evolution"):  # below every width: each solver names the smallest budget
        result = runner.invoke(app, ["solve", "--budget", "0.5bits", "--solver", solver, "-o", "/tmp/never.json"])
        assert result.exit_code == 2, result.output
        assert "0.5bits is infeasible: the smallest feasible is 2bits" in result.output


def test_solve_prune_on_the_shipped_profile(tmp_path):
    """1 MB is below uniform 2-bit: only --prune fits it; the plan names its pruned blocks."""
    from mpsearch.planning.plan import Plan

    assert runner.invoke(app, ["solve", "--budget", "1MB", "-o", str(tmp_path / "no.json")]).exit_code == 2
    for solver in ("ilp", "evolution"):
        out = tmp_path / f"{solver}.json"
        result = runner.invoke(app, ["solve", "--budget", "1MB", "--prune", "--solver", solver, "-o", str(out)])
        assert result.exit_code == 0, result.output
        plan = Plan.load(out)
        assert plan.pruned_units and plan.predicted["bytes"] <= 10**6
        assert "pruned units" in result.output
    result = runner.invoke(app, ["solve", "--budget", "2bits", "--prune", "--solver", "mixdq"])
    assert result.exit_code == 2 and "bits only" in result.output


def test_solve_says_when_the_budget_needs_no_quantization(tmp_path, monkeypatch):
    """A budget at or above the fp16 size gets an all-16-bit plan and a note saying so. Run where there is
    no ./profiles/demo: the default profile is the bundled one (package data)."""
    from mpsearch.evaluation.demo import PROFILE
    from mpsearch.planning.plan import Plan

    monkeypatch.chdir(tmp_path)
    for budget in ("100MB", "16bits", "100%bitops"):
        result = runner.invoke(app, ["solve", "--budget", budget, "-o", "plan.json"])
        assert result.exit_code == 0, result.output
        assert f"note: budget {budget} is at or above the " in result.output
        assert "every layer stays at 16 bits, nothing is quantized" in result.output
        assert {(b.w_bits, b.a_bits) for b in Plan.load(tmp_path / "plan.json").layers.values()} == {(16, 16)}
    assert "fp16 size (8,385,800 bytes)" in runner.invoke(app, ["solve", "--budget", "100MB"]).output
    result = runner.invoke(app, ["solve", "--budget", "3bits", "-o", "plan.json"])
    assert result.exit_code == 0 and "note: budget" not in result.output
    assert Plan.load(tmp_path / "plan.json").solver["profile"] == str(PROFILE)


@pytest.mark.parametrize("args,why", [
    (["-b", "1e400B"], "budget '1e400B' is too large"),
    (["-b", "1e400bits"], "budget '1e400bits' is too large"),
    (["-b", "3bits", "--protect", "["], "--protect '[' is not a regular expression"),
    (["-b", "3bits", "--pareto", "2MB:1MB:0"], "N is the number of budgets"),
    (["-b", "3bits", "--pareto", "2MB:4bits:5"], "LO and HI must budget the same thing"),
    (["-b", "3bits", "--pareto", "2MB:1MB:5"], "LO must be a smaller budget than HI"),
    (["-b", "3bits", "--pareto", "1kB:2kB:3"], "no budget from 1kB to 2kB can be met"),
    (["-b", "3bits", "--time-limit", "-1"], "--time-limit -1: seconds, more than 0"),
    (["-b", "3bits", "--protect-top", "2"], "--protect-top 2: a fraction of the layers"),
    (["-b", "3bits", "--steps", "0"], "Invalid value for '--steps'"),
    (["-b", "3bits", "-o", "{tmp}"], "is a folder: give a file name"),
    (["-b", "3bits", "-o", "{tmp}/afile/plan.json"], "afile is a file, not a folder"),
])
def test_solve_bad_options_are_one_line_and_write_nothing(tmp_path, args, why):
    (tmp_path / "afile").write_text("")
    args = [a.format(tmp=tmp_path) for a in args]
    out = [] if "-o" in args else ["-o", str(tmp_path / "plan.json")]
    result = runner.invoke(app, ["solve", *args, *out])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [result.stderr.strip()] and result.stderr.startswith("error: ")
    assert why in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # no plan, no front, nothing else


def test_solve_json(tmp_path):
    out = tmp_path / "plan.json"
    result = runner.invoke(app, ["solve", "-b", "3bits", "-o", str(out), "--pareto", "2.5bits:4bits:3", "--json"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)  # stdout is the JSON alone: no tables, no budget line
    assert d["plan"] == json.loads(out.read_text()) and d["out"] == str(out)
    assert d["budget"] == "3bits = size-weighted mean of 3 weight bits"
    assert d["pareto"]["csv"] == str(out.with_suffix(".pareto.csv")) and len(d["pareto"]["points"]) >= 2
    assert all(p["mean_w_bits"] <= 4 for p in d["pareto"]["points"])


@FUZZ
@given(text=BUDGETS)
def test_budget_parser(text):
    """An unreadable budget is refused before anything else; a readable one solves or is refused as
    infeasible (then stdout holds only the echoed budget), never a traceback."""
    assume("\x00" not in text and not text.startswith("-"))  # argv cannot hold NUL; '-…' reads as an option
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "plan.json"
        result = runner.invoke(app, ["solve", "--budget", text, "--profile", str(DEMO), "-o", str(out)])
        try:
            Budget.parse(text)
        except BudgetError:
            line = refused(result, Path(tmp), {})
            assert "budget" in line and result.stdout == ""
            return
        if result.exit_code == 0:
            assert out.is_file()
        else:
            refused(result, Path(tmp), {})
            assert result.stdout.startswith("budget: ") and len(result.stdout.splitlines()) == 1


@pytest.fixture(scope="module")
def profile_copy(tmp_path_factory):
    """A pristine copy of the demo profile; each example damages a copy of it."""
    folder = tmp_path_factory.mktemp("fuzz") / "demo"
    shutil.copytree(DEMO, folder)
    return folder


@FUZZ
@given(data=st.data())
def test_profile_loader(profile_copy, data):
    """A damaged measurements.jsonl, meta.json or inventory.json: one line naming the file (and line)."""
    name = data.draw(st.sampled_from(["measurements.jsonl", "meta.json", "inventory.json"]), label="file")
    text, line = damage_rows(data) if name == "measurements.jsonl" else damage_json(data, name)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "demo"
        shutil.copytree(profile_copy, folder)
        (folder / name).write_text(text)
        before = snapshot(Path(tmp))
        result = runner.invoke(app, ["solve", "--budget", "4bits", "--profile", str(folder), "-o",
                                     str(Path(tmp) / "plan.json")])
        error = refused(result, Path(tmp), before)
        assert name in error
        if line is not None:
            assert f"{name}:{line}:" in error

"""The command line: verbs listed, version, inspect on a bundled config (meta device, no weights)."""

import json

import pytest
from typer.testing import CliRunner

import mpsearch
from mpsearch.cli import app
from mpsearch.planning.plan import Plan

runner = CliRunner()


def test_help_lists_verbs():
    out = runner.invoke(app, ["--help"]).output
    assert "inspect" in out
    # the app's own help text says "profile", "solve", "export": check the registered commands instead
    from typer.main import get_command

    verbs = {"inspect", "generate", "profile", "merge", "solve", "export", "evaluate", "distill", "demo"}
    assert set(get_command(app).commands) == verbs


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and mpsearch.__version__ in result.output


def test_inspect_sdxl_turbo_offline():
    result = runner.invoke(app, ["inspect", "--model", "sdxl-turbo", "--limit", "3"])
    assert result.exit_code == 0, result.output
    assert "794 quantizable layers" in result.output
    assert "5,134,927,368 bytes" in result.output  # fp16 size of the SDXL UNet


def test_inspect_json_and_group_override():
    result = runner.invoke(app, ["inspect", "--model", "sd15", "--json", "--group", "conv_out=content"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.output)
    layers = {l["name"]: l for l in d["layers"]}
    assert len(layers) == 282 and layers["conv_out"]["group"] == "content"


def test_inspect_bad_input_is_a_clear_error():
    result = runner.invoke(app, ["inspect", "--model", "sd15", "--group", "nonsense"])
    assert result.exit_code == 2 and "REGEX=content" in result.output


def test_generate_writes_an_image_and_a_grid(tmp_path):
    from PIL import Image

    one = tmp_path / "one.png"
    result = runner.invoke(app, ["generate", "-p", "a red circle at the top left", "-o", str(one), "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert Image.open(one).size == (32, 32)
    grid = tmp_path / "grid.png"
    result = runner.invoke(app, ["generate", "-p", "a red circle at the top left", "-p", "a blue square in the center",
                                 "-o", str(grid), "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert Image.open(grid).size[0] > 2 * 32
    assert runner.invoke(app, ["generate", "-o", str(grid)]).exit_code == 2


def test_solve_with_the_shipped_profile(tmp_path):
    from mpsearch.planning.plan import Plan

    out = tmp_path / "plan.json"
    result = runner.invoke(app, ["solve", "--budget", "3bits", "-o", str(out), "--pareto", "2.5bits:4bits:4"])
    assert result.exit_code == 0, result.output
    assert "mean of 3 weight bits" in result.output and "optimal" in result.output
    plan = Plan.load(out)
    assert plan.predicted["mean_w_bits"] <= 3.0
    assert out.with_suffix(".pareto.csv").is_file() and out.with_suffix(".pareto.png").is_file()


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
    from mpsearch.demo import PROFILE
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


def test_generate_refuses_damaged_weights_in_one_line(tiny_pipe, tmp_path):
    """A truncated weights file, in an exported checkpoint or a model folder, is one error line, exit 2."""
    from mpsearch.export.write import export
    from mpsearch.model import inventory

    model, q = tmp_path / "model", tmp_path / "q"
    tiny_pipe.save_pretrained(model)
    export(Plan.uniform(inventory(tiny_pipe), 4), q, model=str(model))
    for folder, weights in ((q, q / "unet" / "mpsearch_quantized.safetensors"),
                            (model, next((model / "text_encoder").glob("*.safetensors")))):
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        option = "--quantized" if folder == q else "--model"
        result = runner.invoke(app, ["generate", "-p", "a red circle", option, str(folder), "-o", str(tmp_path / "g.png")])
        assert result.exit_code == 2, result.output
        assert result.stderr.strip() == result.stderr.splitlines()[0]
        assert result.stderr.startswith(f"error: {folder}: a weights file is damaged or truncated")
        assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("args,why", [
    (["profile", "--bits", "1"], "candidate weight bit-width 1: plans and checkpoints hold only 2, 3, 4, 5, 6, 8, 16"),
    (["profile", "--bits", "4,7"], "candidate weight bit-width 7"),
    (["profile", "--act-bits", "2"], "candidate activation bit-width 2"),
    (["profile", "--layers", "["], "--layers '[' is not a regular expression"),
    (["inspect", "--model", "sd15", "--group", "(=content"], "--group '(' is not a regular expression"),
])
def test_profile_and_inspect_refuse_bad_options_writing_nothing(tmp_path, args, why):
    """1-bit weights gave NaN measurements and left a meta.json; 7 bits no format stores; a bad regex was a traceback."""
    result = runner.invoke(app, [*args, *(["--out", str(tmp_path / "prof")] if args[0] == "profile" else [])])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [f"error: {result.stderr[7:].strip()}"] and why in result.stderr
    assert not any(tmp_path.iterdir())

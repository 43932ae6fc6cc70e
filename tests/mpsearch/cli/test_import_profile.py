"""`mpsearch import-profile mixdq` on a tiny fixture in MixDQ's format for a saved tiny pipeline; `mpsearch
solve --solver mixdq` reads the result without weights; bad input is one `error:` line and exit 2."""

import json

import yaml
from typer.testing import CliRunner

from mpsearch.cli import app
from mpsearch.model import inventory
from mpsearch.planning.plan import Plan
from tests.mpsearch.profiling.importers.mixdq_logs import log_file, write_logs

runner = CliRunner()


def test_import_profile_then_solve(tmp_path, tiny_pipe):
    model, src, out = tmp_path / "model", tmp_path / "MixDQ", tmp_path / "profile"
    tiny_pipe.save_pretrained(model)
    inv = inventory(str(model))
    write_logs(src, inv)
    r = runner.invoke(app, ["import-profile", "mixdq", str(src), "--out", str(out), "--model", str(model), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output[r.output.index("{"):])
    assert summary["layers"] == len(inv) and summary["tensors"] == ["weight", "act"]
    r = runner.invoke(app, ["solve", "--profile", str(out), "--budget", "5bits", "--solver", "mixdq", "--weight-only",
                            "-o", str(tmp_path / "plan.json")])  # fmt: skip  (the activation stage: test_mixdq.py)
    assert r.exit_code == 0, r.output
    plan = Plan.load(tmp_path / "plan.json")
    assert plan.solver["mixdq"]["pick"].startswith("no images") and "act" not in plan.solver["mixdq"]
    assert abs(plan.predicted["mean_w_bits"] - 5) <= 0.3 + 0.02 and {b.a_bits for b in plan.layers.values()} == {16}
    # --model without --steps goes to MixDQ's pick by images (not refused as a timestep option); MixDQ's logs
    # say nothing of how they sampled, so there is nothing to render: one line says so
    r = runner.invoke(app, ["solve", "--profile", str(out), "--budget", "5bits", "--solver", "mixdq", "--weight-only",
                            "--model", str(model), "-o", str(tmp_path / "picked.json")])  # fmt: skip
    assert r.exit_code == 2 and "records no calibration prompts" in r.output and not (tmp_path / "picked.json").exists()
    r = runner.invoke(app, ["solve", "--profile", str(out), "--budget", "5bits", "--solver", "ilp", "--model", str(model)])
    assert r.exit_code == 2 and "cannot sample the candidate plans" in r.output  # the ILP's re-ranking samples
    r = runner.invoke(app, ["import-profile", "mixdq", str(src), "--out", str(out), "--model", str(model)])
    assert r.exit_code == 2 and "already exists" in r.output


def test_import_profile_errors(tmp_path, tiny_pipe):
    model, src = tmp_path / "model", tmp_path / "MixDQ"
    tiny_pipe.save_pretrained(model)
    inv = inventory(str(model))
    write_logs(src, inv, acts=False)
    path = log_file(src, "weight", "sqnr")
    data = yaml.safe_load(path.read_text())
    data[f"model.{inv.names[2]}"][2] = float("nan")
    path.write_text(yaml.safe_dump(data))
    r = runner.invoke(app, ["import-profile", "mixdq", str(src), "--out", str(tmp_path / "p"), "--model", str(model)])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert r.output.startswith(f"error: {path}: key 'model.{inv.names[2]}': sqnr at 8 bits nan is not a number")
    assert not (tmp_path / "p").exists()
    r = runner.invoke(app, ["import-profile", "hawq", str(src), "--out", str(tmp_path / "p")])
    assert r.exit_code == 2 and "unknown log format 'hawq'; available: mixdq" in r.output
    r = runner.invoke(app, ["import-profile", "mixdq", str(tmp_path / "none"), "--out", str(tmp_path / "p")])
    assert r.exit_code == 2 and "is not a folder" in r.output

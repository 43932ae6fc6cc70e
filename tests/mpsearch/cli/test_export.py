"""`mpsearch export` / `mpsearch evaluate` on a saved tiny pipeline."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from mpsearch.cli import app
from mpsearch.model import inventory
from mpsearch.planning.plan import LayerBits, Plan

runner = CliRunner()


def test_export_and_evaluate_commands(tiny_pipe, tmp_path):
    model = tmp_path / "model"
    tiny_pipe.save_pretrained(model)
    inv = inventory(tiny_pipe)
    plan = Plan.uniform(inv, 4, fmt="quanto", budget="40%")
    plan.save(tmp_path / "plan.json")

    res = runner.invoke(app, ["export", "--plan", str(tmp_path / "plan.json"), "--model", str(model),
                              "--out", str(tmp_path / "q")])
    assert res.exit_code == 0, res.output
    assert "written == predicted: True" in res.output
    e = json.loads((tmp_path / "q" / "export.json").read_text())
    assert e["tensor_bytes"] == e["predicted_bytes"] <= e["budget_bytes"]

    res = runner.invoke(app, ["evaluate", "--quantized", str(tmp_path / "q"), "--model", str(model), "--out",
                              str(tmp_path / "rep"), "--no-baselines", "--steps", "2", "--calib-prompts",
                              str(_prompts(tmp_path))])
    assert res.exit_code == 0, res.output
    assert "peak RSS" in res.output
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "| checkpoint | calib |" in text and "| plan | calib |" in text

    other = dict(plan.layers)
    other["mid_block.attentions.7.proj_out"] = LayerBits(4)
    Plan(other, fingerprint=inv.fingerprint).save(tmp_path / "bad.json")
    res = runner.invoke(app, ["export", "--plan", str(tmp_path / "bad.json"), "--model", str(model),
                              "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2
    assert "mid_block.attentions.7.proj_out" in res.output


def _prompts(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("a red circle at the top left\n# comment\na blue square in the center\n")
    return p


def test_export_refuses_a_non_empty_out_unless_overwrite_and_an_over_budget_plan(tiny_pipe, tmp_path):
    model = tmp_path / "model"
    tiny_pipe.save_pretrained(model)
    inv = inventory(tiny_pipe)
    Plan.uniform(inv, 8).save(tmp_path / "w8.json")
    Plan.uniform(inv, 4, budget="40%").save(tmp_path / "w4.json")
    Plan.uniform(inv, 4, budget="20%").save(tmp_path / "over.json")
    out = tmp_path / "q"

    def run(plan, *extra):
        return runner.invoke(app, ["export", "--plan", str(tmp_path / plan), "--model", str(model), "--out", str(out),
                                   "--denoiser-only", *extra])

    assert run("w8.json").exit_code == 0
    first = (out / "plan.json").read_text()
    res = run("w4.json")
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "pass --overwrite" in res.output
    assert (out / "plan.json").read_text() == first
    res = run("over.json", "--overwrite")
    assert res.exit_code == 2 and "over its budget 20%" in res.output and "nothing written" in res.output
    assert (out / "plan.json").read_text() == first
    res = run("w4.json", "--overwrite")
    assert res.exit_code == 0, res.output
    assert Plan.load(out / "plan.json").w_bits() == Plan.uniform(inv, 4).w_bits()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "over.json", "q", "w4.json", "w8.json"]


def test_export_and_evaluate_json(tiny_pipe, tmp_path):
    """--json: stdout is one JSON document (export.json's numbers; evaluate's results.json), no tables."""
    model = tmp_path / "model"
    tiny_pipe.save_pretrained(model)
    Plan.uniform(inventory(tiny_pipe), 4, budget="40%").save(tmp_path / "plan.json")
    res = runner.invoke(app, ["export", "--plan", str(tmp_path / "plan.json"), "--model", str(model),
                              "--out", str(tmp_path / "q"), "--json"])
    assert res.exit_code == 0, res.output
    e = json.loads(res.stdout)
    assert e == {**json.loads((tmp_path / "q" / "export.json").read_text()), "out": str(tmp_path / "q")}
    assert e["tensor_bytes"] == e["predicted_bytes"]
    res = runner.invoke(app, ["evaluate", "--quantized", str(tmp_path / "q"), "--model", str(model), "--out",
                              str(tmp_path / "rep"), "--no-baselines", "--steps", "2", "--calib-prompts",
                              str(_prompts(tmp_path)), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["report"] == str(tmp_path / "rep" / "report.md")
    assert {r["name"] for r in d["results"]} >= {"checkpoint"} and d["memory"]

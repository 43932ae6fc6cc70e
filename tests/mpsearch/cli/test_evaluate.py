"""`mpsearch evaluate` on a checkpoint that `mpsearch export` wrote from a saved tiny pipeline: the report
and, with --json, results.json on stdout."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mpsearch.cli import app
from mpsearch.model import inventory
from mpsearch.planning.plan import Plan

runner = CliRunner()


@pytest.fixture()
def export(tiny_pipe, tmp_path):
    """`export(fmt)`: `tiny_pipe` saved and a uniform 4-bit plan of it in `fmt` exported by `mpsearch export`;
    returns (model folder, checkpoint folder)."""

    def run(fmt: str) -> tuple:
        model = tmp_path / "model"
        tiny_pipe.save_pretrained(model)
        Plan.uniform(inventory(tiny_pipe), 4, fmt=fmt, budget="40%").save(tmp_path / "plan.json")
        res = runner.invoke(app, ["export", "--plan", str(tmp_path / "plan.json"), "--model", str(model),
                                  "--out", str(tmp_path / "q")])
        assert res.exit_code == 0, res.output
        return model, tmp_path / "q"

    return run


def _prompts(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("a red circle at the top left\n# comment\na blue square in the center\n")
    return p


def test_evaluate_command(export, tmp_path):
    model, q = export("quanto")
    res = runner.invoke(app, ["evaluate", "--quantized", str(q), "--model", str(model), "--out",
                              str(tmp_path / "rep"), "--no-baselines", "--steps", "2", "--calib-prompts",
                              str(_prompts(tmp_path))])
    assert res.exit_code == 0, res.output
    assert "peak RSS" in res.output
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "| checkpoint | calib |" in text and "| plan | calib |" in text


def test_evaluate_json(export, tmp_path):
    """--json: stdout is one JSON document (results.json and the report's path), no tables."""
    model, q = export("packed")
    res = runner.invoke(app, ["evaluate", "--quantized", str(q), "--model", str(model), "--out",
                              str(tmp_path / "rep"), "--no-baselines", "--steps", "2", "--calib-prompts",
                              str(_prompts(tmp_path)), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["report"] == str(tmp_path / "rep" / "report.md")
    assert {r["name"] for r in d["results"]} >= {"checkpoint"} and d["memory"]


def test_evaluate_refuses_a_profile_folder_that_is_not_one(tmp_path):
    Plan.uniform(inventory("demo"), 4, budget="40%").save(tmp_path / "plan.json")
    res = runner.invoke(app, ["evaluate", "--plan", str(tmp_path / "plan.json"), "--profile", str(tmp_path),
                              "--out", str(tmp_path / "rep")])
    assert res.exit_code == 2
    assert res.output.strip() == f"error: --profile {tmp_path}: not a profile folder (no meta.json)"
    assert not (tmp_path / "rep").exists()

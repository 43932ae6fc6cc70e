"""`mpsearch export` on a saved tiny pipeline: bytes written == predicted, refusals (a non-empty --out, an
over-budget plan, a layer the model lacks), --json; and fuzzed plan files refused in one line."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from mpsearch.cli import app
from mpsearch.model import inventory
from mpsearch.planning.cost import ACT_BITS, WEIGHT_BITS
from mpsearch.planning.plan import LayerBits, Plan
from tests.mpsearch.cli.damage import BAD_PLAN_FIELDS, DEMO, FUZZ, refused, snapshot

runner = CliRunner()


def export_tiny(tiny_pipe, tmp_path, plan: Plan, *extra: str):
    """Save `tiny_pipe` to tmp_path/model and `plan` to tmp_path/plan.json, then `mpsearch export` it to
    tmp_path/q; returns the model folder and the command's result."""
    model = tmp_path / "model"
    tiny_pipe.save_pretrained(model)
    plan.save(tmp_path / "plan.json")
    return model, runner.invoke(app, ["export", "--plan", str(tmp_path / "plan.json"), "--model", str(model),
                                      "--out", str(tmp_path / "q"), *extra])


def test_export_command(tiny_pipe, tmp_path):
    inv = inventory(tiny_pipe)
    plan = Plan.uniform(inv, 4, fmt="quanto", budget="40%")
    model, res = export_tiny(tiny_pipe, tmp_path, plan)
    assert res.exit_code == 0, res.output
    assert "written == predicted: True" in res.output
    e = json.loads((tmp_path / "q" / "export.json").read_text())
    assert e["tensor_bytes"] == e["predicted_bytes"] <= e["budget_bytes"]

    other = dict(plan.layers)
    other["mid_block.attentions.7.proj_out"] = LayerBits(4)
    Plan(other, fingerprint=inv.fingerprint).save(tmp_path / "bad.json")
    res = runner.invoke(app, ["export", "--plan", str(tmp_path / "bad.json"), "--model", str(model),
                              "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2
    assert "mid_block.attentions.7.proj_out" in res.output


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


def test_export_json(tiny_pipe, tmp_path):
    """--json: stdout is one JSON document (export.json's numbers), no tables."""
    _, res = export_tiny(tiny_pipe, tmp_path, Plan.uniform(inventory(tiny_pipe), 4, budget="40%"), "--json")
    assert res.exit_code == 0, res.output
    e = json.loads(res.stdout)
    assert e == {**json.loads((tmp_path / "q" / "export.json").read_text()), "out": str(tmp_path / "q")}
    assert e["tensor_bytes"] == e["predicted_bytes"]


@pytest.fixture(scope="module")
def good_plan(tmp_path_factory) -> dict:
    from mpsearch.planning.planner import solve

    return solve(DEMO, "3bits").to_dict()


@FUZZ
@given(data=st.data())
def test_plan_loader(good_plan, data):
    """A plan with any field of the wrong type or value, a layer's bits out of range, or cut short: export
    refuses it in one line naming the file and line, and writes no checkpoint."""
    d = json.loads(json.dumps(good_plan))
    kind = data.draw(st.sampled_from(["field", "layer", "truncate"]), label="kind")
    if kind == "field":
        key = data.draw(st.sampled_from(sorted(BAD_PLAN_FIELDS)), label="field")
        d[key] = data.draw(BAD_PLAN_FIELDS[key], label="value")
    elif kind == "layer":
        name = data.draw(st.sampled_from(sorted(d["layers"])), label="layer")
        attr, allowed = data.draw(st.sampled_from([("w_bits", WEIGHT_BITS), ("a_bits", ACT_BITS)]), label="attr")
        d["layers"][name] = {**d["layers"][name],
                             attr: data.draw(st.one_of(st.integers(), st.text(), st.none(), st.floats())
                                             .filter(lambda v: v not in allowed or isinstance(v, (bool, float))))}
    text = json.dumps(d, indent=1)
    if kind == "truncate":
        text = text[: data.draw(st.integers(0, len(text) - 2), label="cut")]
    with tempfile.TemporaryDirectory() as tmp:
        plan = Path(tmp) / "plan.json"
        plan.write_text(text)
        before = snapshot(Path(tmp))
        result = runner.invoke(app, ["export", "--plan", str(plan), "--out", str(Path(tmp) / "q")])
        assert f"error: {plan}:" in refused(result, Path(tmp), before)

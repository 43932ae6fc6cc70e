"""`mpsearch distill` on a saved tiny pipeline: the recovered model loads, the plan applies to it and its
deployed output moves towards full precision; bad plans are refused with a message naming the problem."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from mpsearch.cli import app
from mpsearch.export.simulate import fake_quantize
from mpsearch.model import find_denoiser, inventory, load_pipeline
from mpsearch.planning.plan import LayerBits, Plan
from mpsearch.profiling import calibration as cal
from mpsearch.profiling.pruning import find_units

runner = CliRunner()


def _plan(pipe) -> Plan:
    """W3A8 with one block pruned."""
    inv = inventory(pipe)
    unit = next(u for u in find_units(pipe) if u.name == "mid_block.attentions.0")
    plan = Plan({n: LayerBits(0, 0) if n in unit.layers else LayerBits(3, 8) for n in inv.names}, model=inv.model,
                fingerprint=inv.fingerprint, pruned_units=[unit.name], pruned_fixed_params=unit.fixed_params)
    plan.predict(inv)
    return plan


def _gap(pipe, plan, ref) -> float:
    _, den = find_denoiser(pipe)
    with torch.no_grad(), fake_quantize(pipe, plan, calib=ref):
        got = ref.forward(den, torch.arange(ref.n_rows)).double()
    target = ref.outputs.flatten(0, 1).double()
    return float((got - target).pow(2).sum() / target.pow(2).sum())


def test_distill_command_recovers_a_loadable_model(tiny_pipe, tmp_path):
    model, out = tmp_path / "model", tmp_path / "rec"
    tiny_pipe.save_pretrained(model)
    plan = _plan(tiny_pipe)
    plan.save(tmp_path / "plan.json")
    res = runner.invoke(app, ["distill", "--plan", str(tmp_path / "plan.json"), "--model", str(model), "--out", str(out),
                              "--steps", "30", "--batch", "8", "--n-prompts", "4", "--lr", "5e-4"])
    assert res.exit_code == 0, res.output
    assert "loss" in res.output and str(out) in res.output
    d = json.loads((out / "distill.json").read_text())
    assert d["steps"] == 30 and d["loss_last"] < 0.9 * d["loss_first"]
    assert d["settings"]["activation_bits"] == [8] and d["settings"]["pruned_units"] == plan.pruned_units
    assert Plan.load(out / "plan.json").to_dict() == plan.to_dict()
    rec = load_pipeline(out)
    assert inventory(rec).fingerprint == plan.fingerprint
    # on the teacher trajectories distill trained on (its prompts: the demo sampler at seed 1000), the
    # recovered model with the plan applied is closer to FP than the original with the plan applied
    orig = load_pipeline(model)
    ref = cal.reference(orig, cal.demo_prompts(4, 1000), seeds=list(range(1000, 1004)), steps=cal.demo_settings()[0],
                        guidance=cal.demo_settings()[1])
    assert _gap(rec, plan, ref) < _gap(orig, plan, ref)


def test_distill_command_bad_inputs(tiny_pipe, tmp_path):
    model = tmp_path / "model"
    tiny_pipe.save_pretrained(model)
    missing = runner.invoke(app, ["distill", "--plan", str(tmp_path / "nope.json"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "nope.json" in missing.output and "does not exist" in missing.output

    plan = _plan(tiny_pipe)
    plan.save(tmp_path / "tiny.json")
    other = runner.invoke(app, ["distill", "--plan", str(tmp_path / "tiny.json"), "--out", str(tmp_path / "o")])
    assert other.exit_code == 2  # a tiny-model plan on the demo model: says so, and names a layer
    assert "plan was made for model" in other.output and "'demo'" in other.output
    assert "has no bits in the plan" in other.output

    wrong = Plan.from_dict({**plan.to_dict(), "fingerprint": "0123456789abcdef"})
    wrong.save(tmp_path / "wrong.json")
    res = runner.invoke(app, ["distill", "--plan", str(tmp_path / "wrong.json"), "--model", str(model),
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "0123456789abcdef" in res.output and "plan was made for" in res.output

    (tmp_path / "garbage.json").write_text("{not json")
    res = runner.invoke(app, ["distill", "--plan", str(tmp_path / "garbage.json"), "--model", str(model),
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "not valid JSON" in res.output
    assert not (tmp_path / "o").exists()  # nothing written on bad input

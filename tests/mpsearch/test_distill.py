"""Distillation: the student (plan applied, STE quantizers) moves towards the FP teacher; the saved
pipeline reproduces it when the plan is applied."""

from __future__ import annotations

import torch

from mpsearch import calibration as cal
from mpsearch.distill import distill
from mpsearch.exporter import fake_quantize
from mpsearch.model import find_denoiser, inventory, load_pipeline
from mpsearch.plan import LayerBits, Plan
from mpsearch.pruning import find_units


def _plan(pipe) -> Plan:
    inv = inventory(pipe)
    unit = next(u for u in find_units(pipe) if u.name == "mid_block.attentions.0")
    plan = Plan({n: LayerBits(0, 0) if n in unit.layers else LayerBits(3) for n in inv.names}, model=inv.model,
                fingerprint=inv.fingerprint, pruned_units=[unit.name], pruned_fixed_params=unit.fixed_params)
    plan.predict(inv)
    return plan


def _gap(pipe, plan, ref) -> float:
    """Relative output error of the plan applied to `pipe` against the FP outputs stored in `ref`."""
    _, den = find_denoiser(pipe)
    with torch.no_grad(), fake_quantize(pipe, plan):
        got = ref.forward(den, torch.arange(ref.n_rows)).double()
    target = ref.outputs.flatten(0, 1).double()
    return float((got - target).pow(2).sum() / target.pow(2).sum())


def test_distill_recovers_and_saves_a_usable_pipeline(tiny_pipe_factory, tmp_path):
    pipe = tiny_pipe_factory()
    plan = _plan(pipe)
    # the teacher trajectories distill() trains on (a random tiny model: no held-out claim here; the demo
    # benchmark measures held-out prompts)
    ref = cal.reference(pipe, cal.demo_prompts(8, 1000), seeds=list(range(1000, 1008)), steps=2, guidance=3.0)
    before = _gap(pipe, plan, ref)
    out = tmp_path / "rec"
    rec, result = distill(plan, model=pipe, out=out, steps=30, batch=8, lr=5e-4, n_prompts=8, sample_steps=2,
                          guidance=3.0)
    assert result.loss_last < 0.9 * result.loss_first
    after = _gap(rec, plan, ref)
    assert after < before
    # the folder is a pipeline with the same architecture; the plan applies to it and gives the same student
    loaded = load_pipeline(out)
    assert inventory(loaded).fingerprint == plan.fingerprint
    assert abs(_gap(loaded, plan, ref) - after) < 1e-6

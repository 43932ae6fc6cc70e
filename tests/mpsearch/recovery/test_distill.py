"""Distillation: the student (plan applied, STE quantizers) moves towards the FP teacher; the saved
pipeline reproduces it when the plan is applied."""

from __future__ import annotations

import torch

from mpsearch.export.simulate import fake_quantize
from mpsearch.model import find_denoiser, inventory, load_pipeline
from mpsearch.planning.plan import LayerBits, Plan
from mpsearch.profiling import calibration as cal
from mpsearch.profiling.pruning import find_units
from mpsearch.recovery.distill import Student, distill


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


def _act_plan(pipe, a_bits=4) -> Plan:
    """W4 A`a_bits` everywhere, one unit pruned: weights and activations quantized, as deployed."""
    inv = inventory(pipe)
    unit = next(u for u in find_units(pipe) if u.name == "mid_block.attentions.0")
    plan = Plan({n: LayerBits(0, 0) if n in unit.layers else LayerBits(4, a_bits) for n in inv.names},
                model=inv.model, fingerprint=inv.fingerprint, pruned_units=[unit.name],
                pruned_fixed_params=unit.fixed_params)
    plan.predict(inv)
    return plan


def _out(pipe, ref, plan=None) -> torch.Tensor:
    from contextlib import nullcontext

    _, den = find_denoiser(pipe)
    ctx = fake_quantize(pipe, plan, calib=ref, round_float=False) if plan is not None else nullcontext()
    with torch.no_grad(), ctx:
        return ref.forward(den, torch.arange(ref.n_rows)).double()


def test_student_computes_what_fake_quantize_deploys(tiny_pipe_factory):
    """The training student (STE quantizers) gives the outputs of the deployed simulation, activation
    quantizers and BOS rows included; without its activation quantizers it would be far off."""
    pipe = tiny_pipe_factory()
    ref = cal.reference(pipe, cal.demo_prompts(4, 1000), seeds=list(range(4)), steps=2, guidance=3.0)
    plan = _act_plan(pipe)
    deployed = _out(pipe, ref, plan)
    weights_only = _out(pipe, ref, Plan({n: LayerBits(b.w_bits, 16) for n, b in plan.layers.items()},
                                        pruned_units=plan.pruned_units, pruned_fixed_params=plan.pruned_fixed_params))
    _, den = find_denoiser(pipe)
    with torch.no_grad(), Student(pipe, plan, ref) as student:
        got = ref.forward(student, torch.arange(ref.n_rows)).double()
    act_effect = (deployed - weights_only).pow(2).sum()
    assert act_effect > 1e-3 * deployed.pow(2).sum()  # A4 matters on this model
    assert torch.allclose(got, deployed, rtol=0, atol=1e-6)  # measured: identical
    assert torch.equal(_out(pipe, ref), ref.outputs.flatten(0, 1).double())  # closed: the FP model again


def test_gradient_passes_activation_quantizers(tiny_pipe_factory):
    """W16A4: every path from the time embedding to the output crosses a quantized input, whose rounding
    has zero gradient; the straight-through estimator lets the gradient through."""
    pipe = tiny_pipe_factory()
    ref = cal.reference(pipe, cal.demo_prompts(2, 1000), seeds=[0, 1], steps=2, guidance=3.0)
    inv = inventory(pipe)
    plan = Plan({n: LayerBits(16, 4) for n in inv.names}, model=inv.model, fingerprint=inv.fingerprint)
    _, den = find_denoiser(pipe)
    with Student(pipe, plan, ref) as student:
        student.requires_grad_(True)
        y = ref.forward(student, torch.arange(4))
        y.pow(2).sum().backward()
    g = den.time_embedding.linear_1.weight.grad
    den.requires_grad_(False)
    assert g is not None and g.abs().sum() > 0


def test_distill_with_activation_quantization_improves_the_deployed_plan(tiny_pipe_factory, tmp_path):
    pipe = tiny_pipe_factory()
    plan = _act_plan(pipe, a_bits=6)
    ref = cal.reference(pipe, cal.demo_prompts(8, 1000), seeds=list(range(1000, 1008)), steps=2, guidance=3.0)
    target = ref.outputs.flatten(0, 1).double()

    def gap(p):
        return float((_out(p, ref, plan) - target).pow(2).sum() / target.pow(2).sum())

    before = gap(pipe)
    rec, result = distill(plan, model=pipe, steps=30, batch=8, lr=5e-4, n_prompts=8, sample_steps=2,
                          guidance=3.0, recalibrate=10)
    assert result.settings["activation_bits"] == [6] and result.settings["recalibrate"] == 10
    assert result.loss_last < 0.9 * result.loss_first
    assert gap(rec) < before

"""Layer pruning: units, identity stand-ins, unit scores, tied "pruned" options, exact bytes, real removal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mpsearch.export.load import load_quantized
from mpsearch.export.simulate import fake_quantize
from mpsearch.export.write import export
from mpsearch.model import find_denoiser, inventory
from mpsearch.planning.budget import BudgetInfeasible
from mpsearch.planning.plan import LayerBits, Plan, PlanError
from mpsearch.planning.planner import solve
from mpsearch.planning.problem import SearchSpace, build_problem, solution_to_plan
from mpsearch.profiling import calibration as cal
from mpsearch.profiling.profiler import profile
from mpsearch.profiling.pruning import find_units, pruned
from solvers.evolution import EvolutionConfig
from solvers.ilp import solve_ilp

PROMPTS = cal.demo_prompts(2)


@pytest.fixture(scope="module")
def pipe(tiny_pipe_factory):
    return tiny_pipe_factory()


@pytest.fixture(scope="module")
def scored(pipe, tmp_path_factory):
    """A weight profile at 4 bits with every unit scored (output and image metrics)."""
    return profile(pipe, out=tmp_path_factory.mktemp("p") / "prof", prompts=PROMPTS, steps=2, bits=(4,),
                   tensors=("weight",), metrics=["sqnr", "ssim"], prune=True)


def _latents(pipe, steps=2):
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    with torch.inference_mode():
        return pipe(PROMPTS, num_inference_steps=steps, guidance_scale=3.0, generator=gens,
                    output_type="latent").images.float()


def test_units_of_an_sd_unet(pipe):
    units = {u.name: u for u in find_units(pipe)}
    # down resnet 32→32 is a unit; the 32→64 one (conv_shortcut) and up-block resnets (skip concat) are not
    assert set(units) == {"down_blocks.0.attentions.0", "down_blocks.0.resnets.0", "mid_block.attentions.0",
                          "mid_block.resnets.0", "mid_block.resnets.1", "up_blocks.1.attentions.0",
                          "up_blocks.1.attentions.1"}
    u = units["down_blocks.0.attentions.0"]
    assert u.kind == "transformer" and "down_blocks.0.attentions.0.proj_in" in u.layers
    _, den = find_denoiser(pipe)
    own = sum(p.numel() for p in den.get_submodule(u.name).parameters())
    inv = inventory(pipe)
    assert u.fixed_params == own - sum(inv[n].params + inv[n].bias for n in u.layers) > 0


def test_removing_a_unit_keeps_the_pipeline_working(pipe):
    full = _latents(pipe)
    for u in find_units(pipe):
        with pruned(pipe, [u.name]):
            out = _latents(pipe)
        assert out.shape == full.shape and torch.isfinite(out).all() and not torch.equal(out, full), u.name
    assert torch.equal(_latents(pipe), full)  # restored exactly


def test_unit_scores_are_profile_rows(scored, pipe):
    units = {u.name for u in find_units(pipe)}
    rows = scored.df[scored.df.tensor == "unit"]
    assert set(rows.layer) == units and set(rows.bits) == {0}
    assert set(rows.metric) == {"sqnr", "ssim"} and (rows.degradation > 0).all()
    assert set(scored.meta["units"]) == units
    again = profile(pipe, out=scored.path, prompts=PROMPTS, steps=2, bits=(4,), tensors=("weight",),
                    metrics=["sqnr", "ssim"], prune=True)  # resume: every unit row is already stored
    assert len(again.df) == len(scored.df)
    assert (scored.path / "measurements.jsonl").read_text().count('"tensor":"unit"') == len(rows)


def test_unit_scores_join_a_layer_profile(pipe, tmp_path):
    """A layer profile gains unit scores by resuming it with prune=True and tensors=() (or by merging a
    units-only profile into it); a later resume without prune keeps them."""
    from mpsearch.profiling.store import merge

    kw = dict(prompts=PROMPTS, steps=2, bits=(4,), metrics=["sqnr"])
    layers = profile(pipe, out=tmp_path / "layers", tensors=("weight",), **kw)
    assert "units" not in layers.meta and (layers.df.tensor == "weight").all()
    n_units = len(find_units(pipe))
    both = profile(pipe, out=tmp_path / "layers", tensors=(), prune=True, **kw)
    assert len(both.df) == len(layers.df) + n_units and len(both.meta["units"]) == n_units
    pd.testing.assert_frame_equal(both.df[both.df.tensor == "weight"].reset_index(drop=True), layers.df)
    again = profile(pipe, out=tmp_path / "layers", tensors=("weight",), **kw)
    assert again.meta["units"] == both.meta["units"] and len(again.df) == len(both.df)

    fresh = profile(pipe, out=tmp_path / "w", tensors=("weight",), **kw)
    units = profile(pipe, out=tmp_path / "u", tensors=(), prune=True, **kw)
    merged = merge(tmp_path / "m", [tmp_path / "w", tmp_path / "u"])
    assert len(merged.df) == len(fresh.df) + len(units.df) and merged.meta["units"] == units.meta["units"]
    inv = inventory(pipe)
    plan = solve(tmp_path / "m", "30%", space=SearchSpace(prune=True))
    assert plan.predicted["bytes"] <= 0.3 * Plan.uniform(inv, 16).predicted["bytes"] + 1


def _check_all_or_nothing(plan: Plan, pipe) -> None:
    for u in find_units(pipe):
        states = {plan.layers[n].pruned for n in u.layers}
        assert len(states) == 1, u.name
        assert states == {u.name in plan.pruned_units}


def test_tied_pruned_options_are_all_or_nothing_and_bytes_exact(scored, pipe, tmp_path):
    inv = inventory(pipe)
    w4 = Plan.uniform(inv, 4).predicted["bytes"]
    plan = solve((scored.df, inv, scored.meta), f"{int(w4 * 0.8)}B",  # below uniform 4-bit: only pruning gets there
                 space=SearchSpace(prune=True))
    assert plan.pruned_units and plan.predicted["bytes"] <= int(w4 * 0.8)
    _check_all_or_nothing(plan, pipe)
    kept = [n for n, b in plan.layers.items() if not b.pruned]
    assert kept and all(plan.layers[n].w_bits in (4, 16) for n in kept)
    # round trip, and the exporter writes exactly the predicted bytes
    back = Plan.load(plan.save(tmp_path / "plan.json")).validate(inv)
    assert back.pruned_units == plan.pruned_units and back.layers == plan.layers
    assert back.predict(inv)["bytes"] == plan.predicted["bytes"]
    result = export(back, tmp_path / "q", model=pipe)
    assert result.tensor_bytes == result.predicted_bytes == plan.predicted["bytes"]
    # without pruning the same budget is infeasible
    sp = build_problem(inv, scored.df, f"{int(w4 * 0.8)}B", space=SearchSpace(prune=False))
    assert solve_ilp(sp.problem).status == "infeasible"


def test_partial_pruning_is_never_chosen_even_when_cheaper(scored, pipe):
    """A unit whose first layer has a huge prune loss: its other layers would love "pruned" (0 bytes,
    0 loss) alone, but the tie forbids it; a generous budget then prunes nothing."""
    inv = inventory(pipe)
    units = scored.meta["units"]
    sp = build_problem(inv, scored.df, "100%", units=units, space=SearchSpace(prune=True))
    sol = solve_ilp(sp.problem)
    plan = solution_to_plan(sol, inv, units=units)
    assert plan.pruned_units == []
    _check_all_or_nothing(plan, pipe)
    viol = sp.problem.violations(np.array([sp.problem.option_index(i, "pruned") if i == 5 else 0
                                           for i in range(len(inv))]))
    assert viol  # one layer of a unit pruned alone breaks the tie rows


def test_plan_schema_for_pruned_layers(pipe):
    inv = inventory(pipe)
    unit = find_units(pipe)[0]
    layers = {n: LayerBits(0, 0) if n in unit.layers else LayerBits(8) for n in inv.names}
    plan = Plan(layers, pruned_units=[unit.name], pruned_fixed_params=unit.fixed_params)
    d = plan.to_dict()
    assert d["layers"][unit.layers[0]] == {"pruned": True}
    assert Plan.from_dict(d).validate(inv).layers == layers
    bad = {**d, "pruned_units": []}
    with pytest.raises(PlanError, match="pruned but lies in no unit"):
        Plan.from_dict(bad)
    other = {**d, "layers": {**d["layers"], unit.layers[0]: {"w_bits": 8, "a_bits": 16}}}
    with pytest.raises(PlanError, match="lies in a pruned unit"):
        Plan.from_dict(other)
    with pytest.raises(PlanError, match="pruned_fixed_params"):
        fake_quantize(pipe, Plan(layers, pruned_units=[unit.name], pruned_fixed_params=1))


def _export_pruned(pipe, units, tmp_path):
    """Export a plan that prunes `units` and keeps every other layer at W8; checks the exported denoiser
    lost exactly the units' parameters. Returns (plan, reloaded pipeline)."""
    inv = inventory(pipe)
    names = {n for u in units for n in u.layers}
    plan = Plan({n: LayerBits(0, 0) if n in names else LayerBits(8) for n in inv.names}, model=inv.model,
                fingerprint=inv.fingerprint, pruned_units=[u.name for u in units],
                pruned_fixed_params=sum(u.fixed_params for u in units))
    plan.predict(inv)
    result = export(plan, tmp_path / "q", model=pipe)
    assert result.matches and result.pruned_units == len(units)
    qpipe = load_quantized(tmp_path / "q", dequantize=True)
    _, qden = find_denoiser(qpipe)
    _, den = find_denoiser(pipe)
    n_full = sum(p.numel() for p in den.parameters())
    n_pruned = sum(p.numel() for p in qden.parameters())
    assert n_full - n_pruned == sum(inv[n].params + inv[n].bias for n in names) + plan.pruned_fixed_params
    return plan, qpipe


def test_exported_pruned_model_is_smaller_and_matches_fake_pruning(pipe, tmp_path):
    units = [u for u in find_units(pipe) if u.name in ("mid_block.attentions.0", "down_blocks.0.resnets.0")]
    plan, qpipe = _export_pruned(pipe, units, tmp_path)
    with fake_quantize(pipe, plan):
        sim = _latents(pipe)
    got = _latents(qpipe)
    assert torch.allclose(got, sim, atol=1e-5)
    assert not torch.allclose(_latents(pipe), sim, atol=1e-3)  # the simulation was really pruned


def test_offering_pruning_does_not_reweight_bit_plans(scored, pipe):
    """The metric scales come from the bit options alone: a plan that prunes nothing scores the same
    with and without the pruning option (the flat and the per-step-group objectives alike)."""
    inv = inventory(pipe)
    units = scored.meta["units"]
    plain = build_problem(inv, scored.df, "30%", units=units)
    joint = build_problem(inv, scored.df, "30%", units=units, space=SearchSpace(prune=True))
    assert joint.problem.scales == pytest.approx(plain.problem.scales)
    rng = np.random.default_rng(0)
    for _ in range(5):
        choice = rng.integers(0, plain.problem.n_options)
        assert joint.problem.evaluate(choice).objective == pytest.approx(plain.problem.evaluate(choice).objective)
    so = joint.step_objective.sum(axis=0)
    valid = joint.problem.valid
    assert np.allclose(so[valid], joint.problem.objective_matrix[valid])


def test_unit_rows_without_unit_table_are_refused(scored, pipe):
    inv = inventory(pipe)
    with pytest.raises(ValueError, match="unit table"):
        build_problem(inv, pd.DataFrame(scored.df), "50%", space=SearchSpace(prune=True))


def test_pruning_is_opt_in_and_mixdq_refuses_it(scored, pipe):
    inv = inventory(pipe)
    w4 = Plan.uniform(inv, 4).predicted["bytes"]
    with pytest.raises(BudgetInfeasible):  # the unit rows are there, but not offered unless asked for
        solve((scored.df, inv, scored.meta), f"{int(w4 * 0.8)}B")
    with pytest.raises(ValueError, match="allocates bits only"):
        solve((scored.df, inv, scored.meta), "4bits", solver="mixdq", space=SearchSpace(prune=True))
    no_units = scored.df[scored.df.tensor != "unit"]
    with pytest.raises(ValueError, match="scores no prunable unit"):
        solve((no_units, inv, scored.meta), "50%", space=SearchSpace(prune=True))


def test_evolution_searches_pruning_through_the_planner(scored, pipe):
    """Below uniform 4-bit only pruning fits: the evolution prunes whole units, like the ILP."""
    inv = inventory(pipe)
    budget = f"{int(Plan.uniform(inv, 4).predicted['bytes'] * 0.8)}B"
    plan = solve((scored.df, inv, scored.meta), budget, solver="evolution", space=SearchSpace(prune=True),
                 config=EvolutionConfig(epochs=5))
    ilp = solve((scored.df, inv, scored.meta), budget, space=SearchSpace(prune=True))
    assert plan.pruned_units and plan.predicted["bytes"] <= int(budget[:-1])
    _check_all_or_nothing(plan, pipe)
    assert plan.predicted["loss"] >= ilp.predicted["loss"] - 1e-12  # the ILP is exact


def test_search_profiles_units_and_evolution_prunes(pipe, tmp_path):
    """`mpsearch.search` = profile (with unit scores) + solve, the evolution searching pruning."""
    import mpsearch

    inv = inventory(pipe)
    budget = f"{int(Plan.uniform(inv, 4).predicted['bytes'] * 0.8)}B"
    plan = mpsearch.search(pipe, budget, profile_dir=tmp_path / "p", solver="evolution",
                           space=SearchSpace(prune=True), config=EvolutionConfig(epochs=3),
                           profile_options=dict(prompts=PROMPTS, steps=2, bits=(4,), tensors=("weight",),
                                                metrics=["sqnr"], prune=True))
    assert plan.pruned_units and plan.predicted["bytes"] <= int(budget[:-1])
    _check_all_or_nothing(plan, pipe)


def test_shipped_demo_profile_solves_with_pruning_by_ilp_and_evolution():
    """profiles/demo holds unit scores: 1 MB (below uniform 2-bit, the smallest bits alone reach) needs
    pruning; both solvers prune whole units only, and without pruning the budget is infeasible."""
    from pathlib import Path

    from mpsearch.planning.inputs import load_profile

    prof = Path(__file__).resolve().parents[3] / "profiles" / "demo"
    _, meta, inv = load_profile(prof)
    with pytest.raises(BudgetInfeasible):
        solve(prof, "1MB")
    plans = {s: solve(prof, "1MB", solver=s, space=SearchSpace(prune=True), **kw)
             for s, kw in (("ilp", {}), ("evolution", {"config": EvolutionConfig(epochs=5)}))}
    for plan in plans.values():
        assert plan.pruned_units and plan.predicted["bytes"] <= 10**6
        for unit in meta["units"]:
            states = {b.pruned for n, b in plan.layers.items() if n.startswith(unit + ".")}
            assert states == {unit in plan.pruned_units}, unit
        assert plan.validate(inv) is plan
    assert plans["ilp"].predicted["loss"] <= plans["evolution"].predicted["loss"] + 1e-12


def test_pixart_blocks_are_units_removed_for_real(tmp_path):
    """A DiT (PixArt): each top-level transformer block is a unit; removing it keeps the pipeline working,
    its score is profiled, and the exported model without it matches the fake-pruned one."""
    from tests.conftest import build_tiny_pixart_pipeline

    px = build_tiny_pixart_pipeline()

    def latents(p):
        with torch.inference_mode():
            return p(PROMPTS, num_inference_steps=2, generator=[torch.Generator().manual_seed(i) for i in range(2)],
                     use_resolution_binning=False, output_type="latent").images.float()

    units = find_units(px)
    assert [(u.name, u.kind) for u in units] == [("transformer_blocks.0", "transformer_block"),
                                                 ("transformer_blocks.1", "transformer_block")]
    assert "transformer_blocks.1.attn2.to_k" in units[1].layers and units[1].fixed_params > 0  # adaLN table, norms
    full = latents(px)
    with pruned(px, [units[1].name]):
        fake = latents(px)
    assert fake.shape == full.shape and torch.isfinite(fake).all() and not torch.equal(fake, full)
    assert torch.equal(latents(px), full)

    prof = profile(px, out=tmp_path / "prof", prompts=PROMPTS, steps=2, bits=(4,), tensors=("weight",),
                   metrics=["sqnr"], prune=True)
    rows = prof.df[prof.df.tensor == "unit"]
    assert set(rows.layer) == {u.name for u in units} and (rows.degradation > 0).all()

    plan, qpx = _export_pruned(px, [units[1]], tmp_path)
    with fake_quantize(px, plan):
        sim = latents(px)
    got = latents(qpx)
    assert torch.allclose(got, sim, rtol=1e-5, atol=1e-5)
    assert (sim - fake).abs().max() < (full - fake).abs().max()  # the W8 simulation is the pruned model

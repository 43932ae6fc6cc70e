"""Timestep search: evolution with the real fitness on a tiny pipeline, BitOPs budgets over kept steps,
plans that keep timesteps through save/load, export and generate."""

import json

import pandas as pd
import pytest

from mpsearch.model import inventory
from mpsearch.planning.budget import Budget, BudgetInfeasible
from mpsearch.planning.plan import Plan
from mpsearch.planning.planner import solve
from solvers.evolution import EvolutionConfig
from tests.mpsearch.planning.profiles import PROMPTS, tiny_profile

POOL = [999, 749, 499, 249]
SMALL = EvolutionConfig(population=12, parents=4, mutations=6, crossovers=3, epochs=4)


@pytest.fixture()
def profile(tiny_pipe):
    return tiny_profile(inventory(tiny_pipe), POOL, step_groups=([0, 1], [2, 3]), act_bits=(8,))


def test_evolution_with_real_fitness_keeps_one_step_per_group_within_budget(tiny_pipe, profile):
    inv = profile[1]
    plan = solve(profile, "20%bitops", steps=2, solver="evolution", model=tiny_pipe, rerank=3, config=SMALL)
    groups = plan.solver["step_groups"]
    assert groups == [[999, 749], [499, 249]]
    assert len(plan.kept_timesteps) == 2 and all(t in g for t, g in zip(plan.kept_timesteps, groups, strict=True))
    ceiling = Budget.parse("20%bitops").resolve(inv) * 4  # one image over the 4-step schedule
    assert plan.predicted["steps"] == 2
    assert plan.predicted["bitops_run"] == 2 * plan.predicted["bitops"] <= ceiling
    fit = plan.solver["fitness"]
    assert fit["metric"] == "ssim" and fit["prompts"] == 2  # the profile's content metric and prompts
    assert len(fit["finalists"]) == 3 + 3  # re-ranked by sampling, and the winner's bits at the 3 best other step sets
    assert fit["fitness"] == min(f["fitness"] for f in fit["finalists"])
    sets = plan.solver["step_sets"]  # every kept-step set the search met, sampled once with the ILP's bits
    assert sets["bits"] == "ilp" and 1 <= sets["measured"] <= sets["of"] == 4
    assert plan.kept_timesteps in [b["timesteps"] for b in sets["best"]]
    assert not any(hasattr(m, "_mpsearch_orig_forward") for m in tiny_pipe.unet.modules())  # restored
    again = solve(profile, "20%bitops", steps=2, solver="evolution", model=tiny_pipe, rerank=3, config=SMALL)
    assert again.kept_timesteps == plan.kept_timesteps and again.to_dict()["layers"] == plan.to_dict()["layers"]


def test_bitops_budget_counts_kept_steps(profile):
    """Half the steps, twice the BitOPs per call under the same per-image budget; still a ceiling."""
    inv = profile[1]
    ceiling = Budget.parse("15%bitops").per_image(inv, 4)
    all_steps = solve(profile, "15%bitops")  # per denoiser call: the same ratio over all 4 steps
    half = solve(profile, "15%bitops", steps=2, solver="ilp")
    assert half.kept_timesteps == [999, 499]  # evenly spaced: ILP chooses bits only
    assert all_steps.predicted["bitops"] * 4 <= ceiling * (1 + 1e-9)
    assert half.predicted["bitops_run"] <= ceiling * (1 + 1e-9)
    assert half.predicted["bitops"] > ceiling / 4  # spends the steps it saved on bits
    assert half.predicted["loss"] < all_steps.predicted["loss"]
    with pytest.raises(BudgetInfeasible, match=r"with 2 kept steps: the smallest plan needs .* BitOPs per image"):
        solve(profile, "0.5%bitops", steps=2, solver="ilp")


def test_budget_is_described_per_image_and_per_call(profile):
    """A --steps BitOPs budget is of one image; the per-call ceiling is its share for each kept step (the
    message printed the % of one call before, a quarter of what each of 4 kept calls gets at 8 steps)."""
    from mpsearch.planning.steps import describe_budget

    df, inv, meta = profile
    w16a16 = inv.total_macs * 16 * 16
    pct = describe_budget(Budget.parse("50%bitops"), inv, 2, meta)
    assert pct == (f"50%bitops = 50% of the W16A16 BitOPs of one image at 4 steps = {2 * w16a16:,} BitOPs per image; "
                   f"2 kept steps: at most {w16a16:,} BitOPs per denoiser call")
    absolute = describe_budget(Budget.parse("3Gbitops"), inv, 4, meta)
    assert absolute == "3Gbitops = 3,000,000,000 BitOPs per image; 4 kept steps: at most 750,000,000 BitOPs per denoiser call"
    pooled = describe_budget(Budget.parse("50%bitops"), inv, 2, {}, pool=8)  # no profile schedule: the pool's
    assert f"at 8 steps = {4 * w16a16:,} BitOPs per image" in pooled
    assert describe_budget(Budget.parse("3bits"), inv, 2, meta) == Budget.parse("3bits").describe(inv)


def test_plan_keeps_timesteps_through_save_export_and_generate(tiny_pipe, profile, tmp_path):
    from mpsearch.export.load import load_quantized
    from mpsearch.export.write import export
    from mpsearch.pipelines.generate import generate

    plan = solve(profile, "15%bitops", steps=2, solver="ilp")
    plan.layers = {n: type(b)(b.w_bits, 16) for n, b in plan.layers.items()}  # weights only: export packs weights
    plan.predict(profile[1])
    loaded = Plan.load(plan.save(tmp_path / "plan.json"))
    assert loaded.kept_timesteps == [999, 499] and loaded.predicted["bitops_run"] == plan.predicted["bitops_run"]
    export(loaded, tmp_path / "q", model=tiny_pipe)
    qpipe = load_quantized(tmp_path / "q")
    seen = []
    qpipe.unet.register_forward_pre_hook(lambda m, args: seen.append(int(args[1].reshape(-1)[0])))
    generate(qpipe, PROMPTS[:1], guidance=1.0)
    assert seen == [999, 499]


def test_step_search_errors(profile, tiny_pipe):
    with pytest.raises(ValueError, match="cannot keep 5 of the 4 timesteps"):
        solve(profile, "20%bitops", steps=5, solver="ilp")
    with pytest.raises(ValueError, match="quadratic group"):
        solve(profile, "20%bitops", steps=3, solver="ilp", grouping="quad")
    df, inv, meta = profile
    pndm = (df, inv, {**meta, "sampling": {**meta["sampling"], "scheduler": "PNDMScheduler"}})
    with pytest.raises(ValueError, match="PNDMScheduler cannot sample at chosen timesteps"):
        solve(pndm, "20%bitops", steps=2, solver="ilp")
    units = (pd.concat([df, pd.DataFrame([{**df.iloc[0].to_dict(), "tensor": "unit", "layer": "down_blocks.0"}])]),
             inv, meta)
    from mpsearch.planning.problem import SearchSpace

    with pytest.raises(ValueError, match="does not prune blocks"):
        solve(units, "20%bitops", steps=2, solver="ilp", space=SearchSpace(prune=True))
    with pytest.raises(ValueError, match="reads 'output'"):
        solve(profile, "20%bitops", steps=2, solver="evolution", model=tiny_pipe, fitness_metric="sqnr", config=SMALL)


def test_cli_solve_with_steps_and_generate_with_the_plan(tmp_path, monkeypatch):
    """`solve --steps` on the shipped demo profile (ILP: evenly spaced steps, no model needed), then
    `generate --plan` samples at the plan's kept timesteps."""
    from typer.testing import CliRunner

    import mpsearch.pipelines.generate
    from mpsearch.cli import app

    runner = CliRunner()
    out = tmp_path / "plan.json"
    args = ["solve", "--budget", "25%bitops", "--steps", "4", "--solver", "ilp", "--weight-only", "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "kept timesteps (4 of 8): [999, 749, 499, 249]" in result.output
    # the budget as understood: 25% of W16A16 over the demo's 8 steps for one image, a quarter of it per call
    assert ("budget: 25%bitops = 25% of the W16A16 BitOPs of one image at 8 steps = 50,331,648,000 BitOPs per "
            "image; 4 kept steps: at most 12,582,912,000 BitOPs per denoiser call") in result.output
    as_json = runner.invoke(app, [*args, "--json"])
    assert as_json.exit_code == 0 and "50,331,648,000 BitOPs per image" in json.loads(as_json.stdout)["budget"]
    plan = Plan.load(out)
    assert plan.predicted["bitops_run"] <= Budget.parse("25%bitops").resolve(inventory(None)) * 8
    calls = []
    real = mpsearch.pipelines.generate.generate
    monkeypatch.setattr(mpsearch.pipelines.generate, "generate", lambda *a, **k: calls.append(k) or real(*a, **k))
    result = runner.invoke(app, ["generate", "-p", "a red circle at the top left", "--plan", str(out),
                                 "-o", str(tmp_path / "g.png")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert calls[0]["timesteps"] == [999, 749, 499, 249] and calls[0]["steps"] is None
    assert (tmp_path / "g.png").is_file()
    result = runner.invoke(app, ["solve", "--budget", "25%bitops", "--pool", "16", "-o", str(out)])
    assert result.exit_code == 2 and "belong to the timestep search" in result.output

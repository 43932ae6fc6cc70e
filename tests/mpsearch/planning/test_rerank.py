"""Re-ranking the ILP's plan by sampling on the tiny pipeline: the chosen plan is the best measured of
distinct candidates that all fit the budget, the plan records predicted vs measured and the cost, and the
pure profile path (no model, or rerank=0) is the ILP's optimum as before."""

import pytest

from mpsearch.model import inventory
from mpsearch.planning.planner import solve
from mpsearch.planning.problem import build_problem
from mpsearch.planning.rerank import fitness_metric, rerank
from solvers.ilp import solve_ilp
from tests.mpsearch.planning.profiles import tiny_profile


@pytest.fixture()
def profile(tiny_pipe):
    return tiny_profile(inventory(tiny_pipe))


def test_the_kept_plan_is_the_best_measured_and_all_fit_the_budget(tiny_pipe, profile):
    df, inv, meta = profile
    plan = solve(profile, "3bits", model=tiny_pipe, rerank=4)
    record = plan.solver["rerank"]
    cands = record["candidates"]
    assert 2 <= len(cands) <= 4 and cands[0]["how"] == "ilp"
    fitness = [c["fitness"] for c in cands]
    assert record["chosen"] == fitness.index(min(fitness))
    limit = build_problem(inv, df, "3bits").problem.constraint("budget").upper
    assert all(c["budget_total"] <= limit * (1 + 1e-6) for c in cands)  # as recorded: 6 significant digits
    assert plan.predicted["mean_w_bits"] <= 3 + 1e-9
    assert plan.predicted["loss"] == pytest.approx(cands[record["chosen"]]["predicted_loss"], rel=1e-5)
    assert {"measured_ssim", "pixel_mse"} <= set(cands[0]) and record["metric"] == "ssim"
    cost = record["cost"]
    assert cost["renders"] == len(cands) + 1 and cost["images"] == cost["renders"] * len(meta["sampling"]["prompts"])
    assert cost["seconds"] > 0
    assert not any(hasattr(m, "_mpsearch_orig_forward") for m in tiny_pipe.unet.modules())  # restored


def test_without_a_model_or_with_rerank_0_the_plan_is_the_ilp_optimum(tiny_pipe, profile):
    plain = solve(profile, "3bits")
    off = solve(profile, "3bits", model=tiny_pipe, rerank=0)
    assert "rerank" not in plain.solver and "rerank" not in off.solver
    assert plain.layers == off.layers
    df, inv, _ = profile
    optimum = solve_ilp(build_problem(inv, df, "3bits").problem)
    assert plain.predicted["loss"] == pytest.approx(optimum.objective)


def test_rerank_returns_the_measured_best_solution(tiny_pipe, profile):
    df, inv, meta = profile
    problem = build_problem(inv, df, "2.5bits").problem
    solution, record = rerank(problem, 3, inv.names, tiny_pipe, meta, df, metric="ssim", prompts=["a red circle"])
    best = record["candidates"][record["chosen"]]
    assert solution.objective == pytest.approx(best["predicted_loss"], rel=1e-5)
    assert record["cost"]["prompts"] == 1 and not problem.violations(solution.choice)


def test_the_fitness_metric_is_the_profiles_content_metric_unless_given(profile):
    df, _, meta = profile
    assert fitness_metric(meta, df) == "ssim" and fitness_metric(meta, df, "adherence") == "adherence"
    assert fitness_metric(meta, df[df["metric"] == "sqnr"]) == "ssim"  # no content metric: SSIM


def test_a_profile_without_its_sampling_record_cannot_be_reranked(tiny_pipe, profile):
    df, inv, meta = profile
    with pytest.raises(ValueError, match="cannot sample the candidate plans"):
        solve((df, inv, {k: v for k, v in meta.items() if k != "sampling"}), "3bits", model=tiny_pipe, rerank=2)


def test_a_flow_matching_model_is_reranked_at_its_own_fractional_timesteps():
    """The DiT's flow schedule is [1000, 857.29, ...]: the profile's timesteps are sampled as recorded (they
    were cut to integers, which its schedule does not have), for the re-ranking and for MixDQ mode's pick."""
    from mpsearch.evaluation.demo import PROFILE_DIT
    from mpsearch.model import load_pipeline
    from mpsearch.planning.inputs import load_profile
    from mpsearch.planning.steps import profile_timesteps

    pipe = load_pipeline("demo-dit")
    _, meta, _ = load_profile(PROFILE_DIT)
    ts = profile_timesteps(pipe, meta)
    assert ts == meta["sampling"]["timesteps"] and any(not float(t).is_integer() for t in ts)
    assert profile_timesteps(pipe, {"sampling": {"steps": 8, "resolution": 32}}) == ts  # its own schedule
    plan = solve(PROFILE_DIT, "2.5bits", model=pipe, rerank=2, fitness_prompts=1)
    record = plan.solver["rerank"]
    assert len(record["candidates"]) == 2 and record["cost"]["renders"] == 3
    assert all(0 < c["measured_ssim"] <= 1 for c in record["candidates"])

"""Inventory + profile + budget → Problem, on a synthetic profile of the SD 1.5 meta inventory."""

import numpy as np
import pandas as pd
import pytest

from mpsearch.model import inventory
from mpsearch.planning.budget import Budget
from mpsearch.planning.cost import fixed_bytes, layer_bytes
from mpsearch.planning.problem import SearchSpace, build_problem

from .profiles import A_BITS, W_BITS, synthetic_profile


@pytest.fixture(scope="module")
def inv():
    return inventory("sd15")


def test_problem_costs_match_cost_model(inv):
    df = synthetic_profile(inv)
    sp = build_problem(inv, df, "30%")
    p = sp.problem
    assert p.keys[0] == tuple((w, a) for w in (2, 4, 8, 16) for a in (4, 8, 16))
    i = inv.index("conv_out")
    k = p.keys[i].index((4, 8))
    assert p.costs["bytes"][i, k] == layer_bytes(inv["conv_out"], 4)
    assert p.costs["bitops"][i, k] == inv["conv_out"].macs * 32
    budget = p.constraint("budget")
    assert budget.offset == fixed_bytes(inv) and budget.upper == Budget.parse("30%").resolve(inv)
    # additivity: loss of (w, a) = loss(w) + loss(a); 16 bits costs nothing
    row = df[(df.layer == "conv_out")]
    lw = row[(row.tensor == "weight") & (row.bits == 4)].degradation.item()
    la = row[(row.tensor == "act") & (row.bits == 8)].degradation.item()
    assert p.losses["sqnr"][i, k] == pytest.approx(lw + la)
    assert p.losses["sqnr"][i, p.keys[i].index((16, 16))] == 0
    assert p.losses["ssim"][i].sum() == 0  # quality layer: not measured on the content metric


def test_profile_for_another_model_is_refused(inv):
    df = synthetic_profile(inventory("sdxl-base"))
    with pytest.raises(ValueError, match="not a quantizable layer of 'sd15'"):
        build_problem(inv, df, "30%")
    partial = synthetic_profile(inv)
    partial = partial[partial.layer != "conv_in"]
    with pytest.raises(ValueError, match="no measurement for layer 'conv_in'"):
        build_problem(inv, partial, "30%")


def test_step_groups_are_kept_for_the_timestep_search(inv):
    df = synthetic_profile(inv, step_groups=3)
    sp = build_problem(inv, df, "30%")
    assert sp.step_losses["sqnr"].shape[0] == 3
    np.testing.assert_allclose(sp.problem.losses["sqnr"], sp.step_losses["sqnr"].sum(axis=0))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1e-3])
def test_a_bad_degradation_is_an_error_not_a_zero(inv, bad):
    df = synthetic_profile(inv)
    df.loc[5, "degradation"] = bad
    with pytest.raises(ValueError, match=r"measurement \('time_embedding.linear_1', 'weight', 2, 'sqnr', 0\) has "
                                         "degradation "
                                         f"{bad!r}: it must be a finite number ≥ 0"):
        build_problem(inv, df, "30%")


def test_duplicate_rows_must_agree_in_a_frame(inv):
    df = synthetic_profile(inv)
    same = pd.concat([df, df.iloc[[3]]], ignore_index=True)  # an identical copy is one measurement
    np.testing.assert_array_equal(build_problem(inv, same, "30%").problem.losses["sqnr"],
                                  build_problem(inv, df, "30%").problem.losses["sqnr"])
    other = df.iloc[[3]].assign(degradation=df.degradation[3] * 2)
    with pytest.raises(ValueError, match=r"measurement \('conv_in', 'act', 4, 'sqnr', 0\) has two different"):
        build_problem(inv, pd.concat([df, other], ignore_index=True), "30%")


def _reference_step_losses(df, inv, pairs):
    """The row-by-row loss tables the builder had before it was vectorised (its meaning, kept as the
    reference): metric → (G, L, options) with w and a degradations added, unmeasured = 0."""
    groups = sorted(df.step_group.unique())
    out = {}
    for m in sorted(df.metric.unique()):
        t = np.zeros((len(groups), len(inv), len(pairs)))
        for row in df[df.metric == m].itertuples(index=False):
            for k, (w, a) in enumerate(pairs):
                if (row.tensor, row.bits) in (("weight", w), ("act", a)):
                    t[groups.index(row.step_group), inv.index(row.layer), k] += row.degradation
        out[m] = t
    return out


def test_vectorised_build_matches_the_row_by_row_reference(inv):
    rng = np.random.default_rng(3)
    df = synthetic_profile(inv, seed=3, step_groups=2)
    df = df.drop(index=rng.choice(len(df), 40, replace=False)).reset_index(drop=True)  # holes everywhere
    sp = build_problem(inv, df, "30%", space=SearchSpace(assume_missing="zero"))
    pairs = [(w, a) for w in (*W_BITS, 16) for a in (*A_BITS, 16)]
    assert sp.problem.keys == tuple(tuple(pairs) for _ in inv.layers)
    for m, ref in _reference_step_losses(df, inv, pairs).items():
        np.testing.assert_array_equal(sp.step_losses[m], ref)
    assert len(sp.info["unmeasured"]) == len({(r.layer, r.tensor, r.bits) for r in
                                              synthetic_profile(inv, 3, 2).merge(df, how="left", indicator=True)
                                              .query("_merge == 'left_only'").itertuples()})
    offered = build_problem(inv, df, "30%")  # the same numbers, only measured options kept per layer
    for i, keys in enumerate(offered.problem.keys):
        for k, key in enumerate(keys):
            j = pairs.index(key)
            assert offered.problem.costs["bytes"][i, k] == sp.problem.costs["bytes"][i, j]
            assert offered.step_losses["sqnr"][:, i, k].tolist() == sp.step_losses["sqnr"][:, i, j].tolist()


def test_plan_choice_inverts_solution_to_plan(inv):
    from mpsearch.planning.problem import plan_choice, solution_to_plan
    from solvers.ilp import solve_ilp

    problem = build_problem(inv, synthetic_profile(inv), "4bits").problem
    solution = solve_ilp(problem)
    plan = solution_to_plan(solution, inv)
    choice = plan_choice(problem, plan, inv)
    assert choice == [int(k) for k in solution.choice]
    assert problem.evaluate(choice).objective == pytest.approx(solution.objective, rel=1e-12)
    del plan.layers[inv.names[3]]
    with pytest.raises(ValueError, match=f"the plan has no bits for layer '{inv.names[3]}'"):
        plan_choice(problem, plan, inv)

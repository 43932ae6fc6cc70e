"""K distinct plans under one budget (`solvers.candidates`): the ILP's optimum first, every plan within the
budget, no duplicates, metric-weight variants before no-good cuts, and an infeasible budget giving none."""

import numpy as np
import pytest

from solvers.candidates import distinct_plans
from solvers.ilp import solve_ilp
from solvers.problem import Constraint, Problem


def two_metric_problem(n=8, seed=0, budget=3.0):
    """n layers at 2/4/8 bits (bytes = bits/8 per layer), two metrics with different sensitivities."""
    rng = np.random.default_rng(seed)
    keys = [[2, 4, 8]] * n
    cost = np.tile([0.25, 0.5, 1.0], (n, 1))
    a, b = rng.lognormal(0, 1.5, n), rng.lognormal(0, 1.5, n)
    losses = {"sqnr": a[:, None] * 4.0 ** -np.array([2, 4, 8]), "ssim": b[:, None] * 3.0 ** -np.array([2, 4, 8])}
    return Problem(keys=keys, costs={"bytes": cost}, losses=losses, constraints=[Constraint("bytes", upper=budget)])


def test_the_optimum_comes_first_and_every_plan_is_distinct_and_within_budget():
    p = two_metric_problem()
    plans = distinct_plans(p, 6)
    assert len(plans) == 6
    assert plans[0].how == "ilp"
    assert plans[0].solution.objective == pytest.approx(solve_ilp(p).objective)
    assert len({tuple(c.solution.choice) for c in plans}) == 6
    for c in plans:
        assert not p.violations(c.solution.choice) and c.solution.totals["bytes"] <= 3.0 + 1e-9
        # the predicted loss is under the problem's own weights, never below the optimum
        assert c.solution.objective == pytest.approx(p.evaluate(c.solution.choice).objective)
        assert c.solution.objective >= plans[0].solution.objective - 1e-12


def test_weight_variants_come_before_no_good_cuts():
    plans = distinct_plans(two_metric_problem(), 11, min_distance=1)
    hows = [c.how for c in plans]
    first_cut = next((i for i, h in enumerate(hows) if h.startswith("no-good")), len(hows))
    assert all(h.startswith("weights ") for h in hows[1:first_cut])
    assert first_cut < len(hows)  # 8 weight variants cannot give 11 plans: the cuts fill up


def test_no_good_cuts_keep_their_distance():
    q = two_metric_problem(n=7, budget=3.5)
    p = q.replace(losses={"sqnr": q.losses["sqnr"]}, weights=None)
    plans = distinct_plans(p, 4, min_distance=2)  # one metric: no weight variants, only cuts
    assert [c.how for c in plans][0] == "ilp" and all(c.how.startswith("no-good") for c in plans[1:])
    for i, c in enumerate(plans):
        for earlier in plans[:i]:
            assert (c.solution.choice != earlier.solution.choice).sum() >= 2


def test_an_infeasible_budget_gives_no_plans_and_k_is_checked():
    assert distinct_plans(two_metric_problem(budget=1.0), 3) == []  # 8 layers need at least 2 bytes
    with pytest.raises(ValueError, match="at least 1"):
        distinct_plans(two_metric_problem(), 0)


def act_option_problem(n=6, budget=3.0):
    """`two_metric_problem` with each width offered twice: (w, 16) and (w, 8), the second at the same bytes
    and slightly more loss on one metric (quantized activations under a weight-only budget)."""
    q = two_metric_problem(n=n, budget=budget)
    keys = [[(w, a) for w in (2, 4, 8) for a in (16, 8)]] * n
    cost = np.repeat(q.costs["bytes"], 2, axis=1)
    losses = {m: np.repeat(v, 2, axis=1) for m, v in q.losses.items()}
    losses["sqnr"][:, 1::2] += 1e-9  # (w, 8): a hair worse
    return Problem(keys=keys, costs={"bytes": cost}, losses=losses, constraints=q.constraints)


def test_no_candidate_takes_a_dominated_option():
    from solvers.candidates import dominated_options

    p = act_option_problem()
    mask = dominated_options(p)
    assert mask[:, 1::2].all() and not mask[:, 0::2].any()  # every (w, 8) is beaten by (w, 16) at equal bytes
    plans = distinct_plans(p, 12, min_distance=1)
    assert len(plans) >= 2
    for c in plans:
        assert all(a == 16 for _, a in c.solution.keys)
        assert c.solution.objective == pytest.approx(p.evaluate(c.solution.choice).objective)  # on the original
    # with a lower bound on bytes, a cheaper option is no longer "better" there: equal cost still dominates
    band = p.replace(constraints=(Constraint("bytes", upper=3.0, lower=2.5),))
    assert (dominated_options(band) == mask).all()
    # a fixed or tied item keeps every option
    fixed = p.replace(fixed={0: (2, 8)}, ties=((1, 2),))
    m = dominated_options(fixed)
    assert not m[[0, 1, 2]].any() and m[3:, 1::2].all()
    assert all(c.solution.keys[0] == (2, 8) for c in distinct_plans(fixed, 3, min_distance=1))

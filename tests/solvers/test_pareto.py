import numpy as np
import pytest

from solvers import Constraint, Problem, pareto_front, solve_ilp


def problem(L=25, seed=0):
    rng = np.random.default_rng(seed)
    bits = np.array([2, 3, 4, 6, 8])
    params = rng.integers(10, 1000, L)
    return Problem(keys=[list(bits)] * L, costs={"bytes": params[:, None] * bits[None] / 8 * 8},
                   losses={"m": rng.lognormal(0, 1.5, (L, 1)) * 3.0 ** -bits[None]},
                   constraints=[Constraint("bytes", upper=params.sum() * 4.0, offset=100)])


def test_front_is_monotone_nondominated_and_exact():
    p = problem()
    front = pareto_front(p, n_points=12)
    t, o = front.totals, front.objectives
    assert np.all(np.diff(t) > 0) and np.all(np.diff(o) < 0)
    assert front.solves <= len(front.budgets) + 2
    for b, s in zip(front.budgets, front.at_budget, strict=True):
        ref = solve_ilp(p.replace(constraints=[Constraint("bytes", b, offset=100)]), backend="cbc")
        assert s.feasible == ref.feasible
        if ref.feasible:
            assert s.objective == pytest.approx(ref.objective, rel=1e-7, abs=1e-12)
            assert s.constraint_totals["bytes"] <= b


def test_explicit_budgets_and_infeasible_low_end():
    p = problem()
    least = p.costs["bytes"][:, 0].sum() + 100
    front = pareto_front(p, budgets=[least - 1, least, least * 2])
    assert not front.at_budget[0].feasible and front.at_budget[1].feasible
    assert front.at_budget[0].smallest_feasible == pytest.approx(least)

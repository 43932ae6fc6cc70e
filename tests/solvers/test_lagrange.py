"""Lagrangian bounds of the unit model, held to exhaustive enumeration on random small problems: the bound is
≤ every feasible objective (with each choice's reduced costs added), reduced-cost fixing keeps every optimal
option, and the incumbent is feasible and scored as it says."""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings

from solvers import Constraint, Problem
from solvers.lagrange import Bound, lp_bound, single_budget_bound
from solvers.units import UnitModel, build_units
from tests.solvers.solver_strategies import small_problems
from tests.solvers.unit_models import feasible_choices

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_bound(m: UnitModel, b: Bound) -> None:
    """The properties `solvers.ilp` relies on, checked against every feasible choice of `m`."""
    choices, obj = feasible_choices(m)
    rows = np.arange(m.n_units)
    tol = 1e-9 * (1.0 + abs(b.lower))
    assert np.isfinite(b.lower)
    assert (b.rc[m.valid] >= -tol).all()
    for c, z in zip(choices, obj, strict=True):  # J(x) ≥ L + Σ_u rc[u, x_u]: a lower bound for every x
        assert z >= b.lower + b.rc[rows, c].sum() - tol
    if b.incumbent is not None:
        assert m.feasible(b.incumbent, rtol=0.0)
        assert b.upper == pytest.approx(m.objective(b.incumbent), abs=1e-12)
    if not len(obj):
        assert b.incumbent is None
        return
    best = obj.min()
    assert b.lower <= best + tol <= b.upper + 2 * tol
    if np.isfinite(b.upper):
        keep = m.valid & (b.rc <= b.upper - b.lower + tol)  # what reduced-cost fixing leaves to the MIP
        for c in choices[np.isclose(obj, best, rtol=0, atol=1e-12)]:
            assert keep[rows, c].all(), c


def one_budget(p: Problem) -> UnitModel:
    return build_units(p.with_constraints(p.constraints[:1]))


@FAST
@given(small_problems(lower=False))
def test_single_budget_bound_is_valid_and_fixing_keeps_the_optimum(p):
    m = one_budget(p)
    assume((m.min_cost() <= m.hi).all())  # `solve_ilp` reports the infeasible ones before bounding
    b = single_budget_bound(m)
    check_bound(m, b)
    assert b.incumbent is not None  # the cheapest choice is feasible, so bisection ends on a feasible argmin
    assert b.penalty.shape == (1,) and b.penalty[0] >= 0


@FAST
@given(small_problems(lower=False))
def test_single_budget_bound_is_as_strong_as_the_lp_relaxation(p):
    """For one knapsack row the best multiplier's bound is the LP relaxation's optimum; bisection finds it."""
    m = one_budget(p)
    assume((m.min_cost() <= m.hi).all())
    lp = lp_bound(m)
    assert lp is not None
    assert single_budget_bound(m).lower == pytest.approx(lp.lower, rel=1e-6, abs=1e-9)


def test_an_unconstrained_best_that_fits_is_the_optimum():
    p = Problem(keys=[[4, 8]] * 3, costs={"bytes": [[4.0, 8.0]] * 3}, losses={"m": [[0.3, 0.0]] * 3},
                constraints=[Constraint("bytes", upper=24.0)])
    b = single_budget_bound(build_units(p))
    assert b.lower == b.upper == 0.0 and b.incumbent.tolist() == [1, 1, 1] and b.penalty.tolist() == [0.0]


def test_a_binding_budget_gives_a_bound_above_the_unconstrained_best():
    """22 bytes for three W4/W8 layers that cost 16 at W4: 6 bytes to spend. The bound is the LP value (one
    layer and a quarter of another at W8), strictly between the unconstrained best (0) and the optimum (0.7)."""
    p = Problem(keys=[[4, 8]] * 3, costs={"bytes": [[4.0, 8.0], [4.0, 8.0], [8.0, 16.0]]},
                losses={"m": [[0.3, 0.0], [0.2, 0.0], [0.5, 0.0]]}, constraints=[Constraint("bytes", upper=22.0)],
                scales={"m": 1.0})  # fmt: skip
    m = build_units(p)
    b = single_budget_bound(m)
    check_bound(m, b)
    # LP: upgrade by loss per byte (0.075, 0.05, 0.0625): item 0 (4 bytes), then 2 of item 2's 8 bytes
    assert b.lower == pytest.approx(0.2 + 0.5 * (1 - 2 / 8), rel=1e-9)
    assert b.upper == pytest.approx(0.7) and b.incumbent.tolist() == [1, 0, 0]
    assert b.penalty[0] == pytest.approx(0.0625, rel=1e-6)


@FAST
@given(small_problems())
def test_lp_bound_is_valid_with_floors_ties_and_several_rows(p):
    m = build_units(p)
    b = lp_bound(m)
    if b is None:  # the LP relaxation is infeasible, so is every integer choice
        assert len(feasible_choices(m)[0]) == 0
        return
    check_bound(m, b)
    assert b.penalty.shape == (len(m.names),)

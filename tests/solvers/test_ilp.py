import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from solvers import Constraint, InfeasibleBudget, Problem, smallest_feasible, solve_ilp
from solvers.bruteforce import solve_bruteforce
from tests.solvers.solver_strategies import small_problems

BACKENDS = ["cbc", "scip", "cpsat"]
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(small_problems())
def test_cbc_matches_bruteforce_and_keeps_budgets(p):
    a, b = solve_ilp(p), solve_bruteforce(p)
    assert a.status == ("optimal" if b.feasible else "infeasible")
    if b.feasible:
        assert a.objective == pytest.approx(b.objective, abs=1e-9)
        assert not p.violations(a.choice, rtol=0.0)
        for c in p.constraints:
            t = a.constraint_totals[c.name]
            assert c.upper is None or t <= c.upper
            assert c.lower is None or t >= c.lower
    else:
        assert a.binding == b.binding
        assert a.smallest_feasible == pytest.approx(b.smallest_feasible) if b.smallest_feasible else True


@settings(max_examples=15, deadline=None)
@given(small_problems())
def test_all_backends_agree(p):
    objs = {be: solve_ilp(p, backend=be) for be in BACKENDS}
    statuses = {s.status for s in objs.values()}
    assert len(statuses) == 1
    if "optimal" in statuses:
        ref = objs["cbc"].objective
        for s in objs.values():
            assert s.objective == pytest.approx(ref, rel=1e-7, abs=1e-9)


@settings(max_examples=20, deadline=None)
@given(small_problems(lower=False))
def test_smallest_feasible_is_tight(p):
    con = p.constraints[0]
    least = smallest_feasible(p, con.name)
    if least is None:
        return
    at = p.replace(constraints=[Constraint(con.resource, least, con.lower, con.items, con.offset, con.name),
                                *p.constraints[1:]])
    below = p.replace(constraints=[Constraint(con.resource, least - 0.5, con.lower, con.items, con.offset,
                                              con.name), *p.constraints[1:]])
    assert solve_bruteforce(at).feasible
    assert not solve_bruteforce(below).feasible  # integer costs: nothing between least − 1 and least
    sol = solve_ilp(below)
    assert sol.status == "infeasible" and sol.binding == con.name
    assert sol.smallest_feasible == pytest.approx(least)


def _bits_problem(L=6, budget=20.0, **kw):
    rng = np.random.default_rng(1)
    params = rng.integers(1, 5, L).astype(float)
    bits = np.array([2, 4, 8])
    return Problem(keys=[[2, 4, 8]] * L, costs={"bytes": params[:, None] * bits / 8 * 4},
                   losses={"m": rng.random((L, 1)) * 4.0 ** -bits}, constraints=[Constraint("bytes", budget)],
                   **kw)


def test_infeasible_raises_with_smallest_budget():
    p = _bits_problem(budget=1.0)
    sol = solve_ilp(p)
    assert sol.status == "infeasible" and sol.binding == "bytes"
    assert sol.smallest_feasible == pytest.approx(p.costs["bytes"][:, 0].sum())
    with pytest.raises(InfeasibleBudget, match="smallest feasible"):
        sol.raise_if_infeasible()


def test_ties_all_or_nothing_and_fixed_respected():
    p = _bits_problem(ties=[[0, 1, 2]], fixed={5: 2})
    for be in BACKENDS:
        s = solve_ilp(p, backend=be)
        assert len({s.keys[0], s.keys[1], s.keys[2]}) == 1
        assert s.keys[5] == 2
        assert s.objective == pytest.approx(solve_bruteforce(p).objective)


def test_tie_with_pruned_key():
    p = Problem(keys=[[4, 8, "pruned"], [4, 8, "pruned"], [4, 8]],
                costs={"bytes": [[2, 4, 0], [2, 4, 0], [2, 4]]},
                losses={"m": [[0.1, 0, 0.3], [0.1, 0, 0.3], [0.5, 0]]},
                constraints=[Constraint("bytes", 4)], ties=[[0, 1]])
    s = solve_ilp(p)
    assert s.keys == ("pruned", "pruned", 8)


def test_dominated_options_dropped_without_changing_optimum():
    p = Problem(keys=[[4, 6, 8]] * 3, costs={"bytes": [[4, 6, 8]] * 3},
                losses={"m": [[1, 2, 0], [1, 0.5, 0], [1, 0.5, 0]]}, constraints=[Constraint("bytes", 16)])
    s = solve_ilp(p)
    assert s.info["options"] == 8  # option 6 of item 0 is worse and dearer than option 4
    assert s.objective == pytest.approx(solve_bruteforce(p).objective)


def test_hint_and_time_limit_accepted():
    p = _bits_problem()
    ref = solve_ilp(p)
    s = solve_ilp(p, backend="scip", time_limit=5, hint=ref.choice)
    assert s.objective == pytest.approx(ref.objective)


def test_core_off_gives_same_answer():
    p = _bits_problem(L=30, budget=150)
    assert solve_ilp(p, core=False).objective == pytest.approx(solve_ilp(p).objective)

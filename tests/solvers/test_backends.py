"""The MIP backends of the ILP, called directly on unit models: each returns the brute-force optimum (a
feasible choice, a bound no higher than it) or says infeasible; CP-SAT stays feasible in floats when its rows
cannot be scaled to integers exactly; an unknown backend is an error naming the choices."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from solvers import Constraint, Problem, available_backends
from solvers.backends import MipResult, get_backend
from solvers.units import UnitModel, build_units
from tests.solvers.solver_strategies import small_problems
from tests.solvers.unit_models import feasible_choices, optimum

FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _importable(name: str) -> bool:
    """CBC ships with PuLP; SCIP and CP-SAT come with OR-Tools (SCIP only where OR-Tools was built with it)."""
    if name == "cbc":
        return True
    try:
        from ortools.linear_solver import pywraplp
    except ImportError:
        return False
    return name != "scip" or pywraplp.Solver.CreateSolver("SCIP") is not None


BACKENDS = [pytest.param(n, marks=pytest.mark.skipif(not _importable(n), reason=f"{n} is not installed"))
            for n in ("cbc", "scip", "cpsat")]


def run(name: str, m: UnitModel, **opts) -> MipResult:
    return get_backend(name)(m.obj, m.A, m.lo, m.hi, m.valid, **opts)


def check_against_enumeration(m: UnitModel, res: MipResult, rtol: float = 1e-9) -> None:
    best = optimum(m)
    if best is None:
        assert res.status == "infeasible" and res.choice is None
        return
    assert res.status == "optimal"
    assert m.valid[np.arange(m.n_units), res.choice].all()
    assert m.feasible(res.choice, rtol=rtol)
    scale = max(1.0, float(np.abs(m.obj[m.valid]).max()))
    assert m.objective(res.choice) == pytest.approx(best, abs=1e-7 * scale)
    assert res.bound <= best + 1e-7 * scale  # a proven lower bound (−inf where the backend gives none)


def test_get_backend_of_an_unknown_name_lists_the_choices():
    assert {"cbc", "scip", "cpsat"} <= set(available_backends())
    with pytest.raises(ValueError, match=r"unknown ILP backend 'gurobi'; available: cbc, cpsat, scip"):
        get_backend("gurobi")


@pytest.mark.parametrize("name", BACKENDS)
@FAST
@given(p=small_problems())
def test_backend_matches_brute_force(name, p):
    m = build_units(p, prune=False)
    check_against_enumeration(m, run(name, m))


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_takes_a_hint_and_a_time_limit(name):
    rng = np.random.default_rng(4)
    bits = np.array([2, 4, 8])
    params = rng.integers(1, 9, 8).astype(float)
    p = Problem(keys=[[2, 4, 8]] * 8, costs={"bytes": params[:, None] * bits / 8},
                losses={"m": rng.random((8, 1)) * 4.0 ** -bits},
                constraints=[Constraint("bytes", upper=0.5 * params.sum())])  # fmt: skip
    m = build_units(p, prune=False)
    cold = run(name, m)
    check_against_enumeration(m, cold)
    hinted = run(name, m, hint=cold.choice, time_limit=30)
    check_against_enumeration(m, hinted)
    assert m.objective(hinted.choice) == pytest.approx(m.objective(cold.choice))


@pytest.mark.skipif(not _importable("cpsat"), reason="cpsat is not installed")
@FAST
@given(small_problems())
def test_cpsat_rounds_rows_it_cannot_scale_exactly_to_the_safe_side(p):
    """Rows times √2/3 have no exact integer scale: CP-SAT rounds them conservatively and its choice keeps
    every float row with no tolerance. Bounds move by half a unit off the integer totals, so no feasible
    choice sits within rounding distance of a bound and the optimum is unchanged."""
    m = build_units(p, prune=False)
    f = np.sqrt(2) / 3
    irrational = UnitModel(obj=m.obj, A=m.A * f, lo=(m.lo - 0.5) * f, hi=(m.hi + 0.5) * f, valid=m.valid,
                           names=m.names, unit_of=m.unit_of, opt_of=m.opt_of)  # fmt: skip
    res = run("cpsat", irrational)
    assert (res.choice is None) == (optimum(m) is None)
    if res.choice is not None:
        assert irrational.feasible(res.choice, rtol=0.0)
        choices, obj = feasible_choices(m)
        assert m.objective(res.choice) == pytest.approx(obj.min(), abs=1e-7)
        assert "objective rounding" in res.note


@pytest.mark.skipif(not _importable("cpsat"), reason="cpsat is not installed")
def test_cpsat_refuses_a_choice_over_a_bound_by_less_than_its_rounding_step():
    """Option 1 is better but costs √2/3 against a bound 1e-13 (relative) lower: below the 2^-40 step of the
    integer scale. Rounded to nearest, both would be 2^40 and option 1 would pass; rounded to the safe side
    (coefficient up, bound down) it is refused, as the float row says."""
    x = np.sqrt(2) / 3
    m = UnitModel(obj=np.array([[1.0, 0.0]]), A=np.array([[[0.0, x]]]), lo=np.array([-np.inf]),
                  hi=np.array([x * (1 - 1e-13)]), valid=np.ones((1, 2), bool), names=("bytes",),
                  unit_of=np.zeros(1, np.int64), opt_of=np.array([[0, 1]]))  # fmt: skip
    assert not m.feasible(np.array([1]), rtol=0.0)
    res = run("cpsat", m)
    assert res.status == "optimal" and res.choice.tolist() == [0]

"""`build_units`: ties merged into units with their common keys, fixed items pinned, constraint offsets moved to
the bounds, and dominated options pruned without losing the optimum (held to brute force on random problems)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from solvers import Constraint, Problem
from solvers.bruteforce import solve_bruteforce
from solvers.units import build_units
from tests.solvers.solver_strategies import small_problems
from tests.solvers.unit_models import all_choices, feasible_choices, optimum

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def item_objective(p: Problem, choice: np.ndarray) -> float:
    return float(p.objective_matrix[np.arange(p.n_items), choice].sum())


def tied_problem(**kw) -> Problem:
    """Items 0-1-2 tied in a chain (common keys 4 and 8), item 3 free; bytes = params·bits/8."""
    keys = [[2, 4, 8], [4, 8], [2, 4, 8], [2, 8]]
    params = [8, 16, 24, 40]
    return Problem(keys=keys, costs={"bytes": [[n * b / 8 for b in k] for n, k in zip(params, keys, strict=True)]},
                   losses={"m": [[4.0 ** -b * (i + 1) for b in k] for i, k in enumerate(keys)]},
                   ties=[[0, 1], [1, 2]], **kw)  # fmt: skip


def test_a_tie_chain_is_one_unit_over_the_common_keys():
    p = tied_problem(constraints=[Constraint("bytes", upper=60.0)])
    m = build_units(p, prune=False)
    assert m.n_units == 2
    assert m.unit_of[0] == m.unit_of[1] == m.unit_of[2] != m.unit_of[3]
    u = m.unit_of[0]
    assert m.valid[u].sum() == 2  # keys 4 and 8: the only ones items 0, 1 and 2 all have
    keys_of = [tuple(p.keys[i][m.opt_of[i, k]] for i in (0, 1, 2)) for k in range(2)]
    assert keys_of == [(4, 4, 4), (8, 8, 8)]
    # a unit option costs and scores what its members do together
    for k in range(2):
        items = [m.opt_of[i, k] for i in (0, 1, 2)]
        assert m.A[0, u, k] == sum(p.costs["bytes"][i, o] for i, o in zip((0, 1, 2), items, strict=True))
        assert m.obj[u, k] == pytest.approx(sum(p.objective_matrix[i, o] for i, o in zip((0, 1, 2), items,
                                                                                          strict=True)))
    for c in all_choices(m):
        items = m.decode(c)
        assert len({p.keys[i][items[i]] for i in (0, 1, 2)}) == 1
        assert np.array_equal(m.encode(items), c)
        assert m.objective(c) == pytest.approx(item_objective(p, items))
    # an item choice that breaks the tie has no unit choice
    assert m.encode(np.array([p.keys[0].index(4), p.keys[1].index(8), p.keys[2].index(8), 0])) is None


def test_a_fixed_item_leaves_its_unit_one_option():
    p = tied_problem(fixed={1: 8, 3: 2})
    m = build_units(p, prune=False)
    assert m.valid.sum(axis=1).tolist() == [1, 1]
    items = m.decode(np.zeros(m.n_units, np.int64))
    assert [p.keys[i][items[i]] for i in range(4)] == [8, 8, 8, 2]


def test_offsets_move_to_the_bounds_and_item_subsets_select_rows():
    p = tied_problem(constraints=[Constraint("bytes", upper=50.0, offset=7.0, items=[3]),
                                  Constraint("bytes", upper=None, lower=20.0, offset=2.0, name="floor")])
    m = build_units(p, prune=False)
    assert m.names == ("bytes", "floor")
    assert m.hi.tolist() == [43.0, np.inf] and m.lo.tolist() == [-np.inf, 18.0]
    assert not m.A[0, m.unit_of[0]].any()  # the tie's items are not in row 0
    for c in all_choices(m):
        items = m.decode(c)
        for row, con in zip(m.totals(c), p.constraints, strict=True):
            assert row + con.offset == pytest.approx(p.constraint_total(con, items))


def test_identical_options_keep_exactly_the_first():
    p = Problem(keys=[[4, 5, 8]], costs={"bytes": [[4.0, 4.0, 8.0]]}, losses={"m": [[0.5, 0.5, 0.0]]},
                constraints=[Constraint("bytes", upper=8.0)])
    assert build_units(p).valid.tolist() == [[True, False, True]]


def test_a_floor_keeps_dominated_options():
    """W8 costs more and loses more than W4 here, but only W8 meets the floor: with a lower bound,
    dominance is not exact, and nothing is pruned."""
    p = Problem(keys=[[4, 8]], costs={"bytes": [[4.0, 8.0]]}, losses={"m": [[0.0, 0.5]]},
                constraints=[Constraint("bytes", upper=None, lower=8.0)])
    m = build_units(p)
    assert m.valid.tolist() == [[True, True]]
    assert optimum(m) == pytest.approx(solve_bruteforce(p).objective)
    ceiling = build_units(p.with_constraints([Constraint("bytes", upper=8.0)]))
    assert ceiling.valid.tolist() == [[True, False]]


def _dominates(m, u: int, j: int, k: int) -> bool:
    """Option j of unit u is no worse than option k in objective and in every row."""
    return bool(m.obj[u, j] <= m.obj[u, k] and (m.A[:, u, j] <= m.A[:, u, k]).all())


@FAST
@given(small_problems())
def test_units_keep_the_brute_force_optimum(p):
    full, pruned = build_units(p, prune=False), build_units(p)
    ref = solve_bruteforce(p)
    # every unit choice is an item choice that keeps the ties and fixed items, scored and costed alike
    for c in all_choices(full):
        items = full.decode(c)
        structural = [k for k in p.violations(items) if k.startswith(("tie", "fixed"))]
        assert structural == []
        assert full.objective(c) == pytest.approx(item_objective(p, items))
        assert full.feasible(c) == (not p.violations(items))
    best_full, best_pruned = optimum(full), optimum(pruned)
    if not ref.feasible:
        assert best_full is None and best_pruned is None
        return
    assert best_full == pytest.approx(ref.objective, abs=1e-12)
    assert best_pruned == pytest.approx(ref.objective, abs=1e-12)
    choices, obj = feasible_choices(pruned)
    best = choices[np.argmin(obj)]
    assert not p.violations(pruned.decode(best))


@FAST
@given(small_problems())
def test_pruning_drops_exactly_the_dominated_options(p):
    full, pruned = build_units(p, prune=False), build_units(p)
    assert (pruned.valid <= full.valid).all() and pruned.valid.any(axis=1).all()
    if np.isfinite(full.lo).any():
        assert np.array_equal(pruned.valid, full.valid)
        return
    for u in range(full.n_units):
        kept = np.flatnonzero(pruned.valid[u])
        for k in np.flatnonzero(full.valid[u] & ~pruned.valid[u]):
            assert any(_dominates(full, u, j, k) for j in kept), (u, k)
        for j in kept:  # no survivor is dominated by another (of two identical options, one survives)
            for k in kept:
                assert j == k or not _dominates(full, u, j, k), (u, j, k)

"""All-or-nothing rows: encoded, read back exactly, and honoured by the exact solvers."""

import pytest

from solvers import Constraint, Problem
from solvers.all_or_nothing import AllOrNothing, all_or_nothing_rows, groups_of
from solvers.bruteforce import solve_bruteforce
from solvers.ilp import solve_ilp

KEYS = [[4, 8, "pruned"], [4, 8, "pruned"], [4, 8, "pruned"], [4, 8]]


def problem(budget: float, extra=()) -> Problem:
    costs = {"bytes": [[4, 8, 0], [4, 8, 0], [4, 8, 0], [4, 8]]}
    rows, cons = all_or_nothing_rows(KEYS, "unit", "pruned", [0, 1, 2])
    # item 0 carries the unit's score; items 1 and 2 would love "pruned" on their own (0 bytes, 0 loss)
    losses = {"m": [[0.2, 0.0, 1.0], [0.5, 0.4, 0.0], [0.5, 0.4, 0.0], [0.3, 0.0]]}
    return Problem(keys=KEYS, costs=costs | rows, losses=losses,
                   constraints=[Constraint("bytes", upper=budget), *cons, *extra])


def test_rows_read_back_as_the_group():
    p = problem(16)
    assert groups_of(p) == [AllOrNothing("unit", "pruned", (0, 1, 2))]
    assert [c.name for c in p.constraints[1:]] == ["unit:first-if-any", "unit:all-if-first"]


def test_lookalike_rows_are_not_groups():
    p = problem(16)
    bad = dict(p.costs)
    bad["unit:all-if-first"] = bad["unit:all-if-first"] * 2  # no longer the exact encoding
    assert groups_of(p.replace(costs=bad)) == []
    assert groups_of(p.replace(constraints=p.constraints[:2])) == []  # partner row missing


def test_single_item_needs_no_rows_and_missing_key_is_an_error():
    assert all_or_nothing_rows(KEYS, "u", "pruned", [1]) == ({}, [])
    with pytest.raises(ValueError, match="no option 'pruned'"):
        all_or_nothing_rows(KEYS, "u", "pruned", [2, 3])


@pytest.mark.parametrize("budget", [4, 8, 12, 16, 20, 28, 32])
def test_exact_solvers_never_prune_part_of_a_group(budget):
    p = problem(budget)
    best = solve_bruteforce(p)
    ilp = solve_ilp(p)
    assert ilp.objective == pytest.approx(best.objective)
    for s in (best, ilp):
        if s.status == "infeasible":
            continue
        assert len({s.keys[i] == "pruned" for i in (0, 1, 2)}) == 1
        assert p.violations(s.choice) == {}


def test_without_the_rows_part_of_the_group_would_be_pruned():
    p = problem(16)
    free = Problem(keys=KEYS, costs={"bytes": p.costs["bytes"]}, losses={"m": p.losses["m"]},
                   constraints=[Constraint("bytes", upper=16)])
    keys = solve_bruteforce(free).keys
    assert keys[1:3] == ("pruned", "pruned") and keys[0] != "pruned"
    assert solve_bruteforce(p).keys[:3] in (("pruned",) * 3, *((a, b, c) for a in (4, 8) for b in (4, 8) for c in (4, 8)))

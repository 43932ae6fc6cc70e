import pytest

from solvers import Constraint, Problem
from solvers.bruteforce import solve_bruteforce


def test_bruteforce_picks_best_feasible():
    p = Problem(keys=[[4, 8], [4, 8]], costs={"bytes": [[2, 4], [5, 10]]},
                losses={"m": [[0.3, 0.0], [0.1, 0.0]]}, constraints=[Constraint("bytes", upper=9)])
    s = solve_bruteforce(p)
    assert s.keys == (8, 4) and s.totals["bytes"] == 9


def test_bruteforce_refuses_large():
    p = Problem(keys=[[1, 2, 3, 4]] * 12, costs={"c": [[1, 2, 3, 4]] * 12}, losses={"m": [[4, 3, 2, 1]] * 12})
    with pytest.raises(ValueError, match="too many"):
        solve_bruteforce(p)

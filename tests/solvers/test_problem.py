import numpy as np
import pytest

from solvers import Constraint, InfeasibleBudget, Option, Problem


def tiny(**kw):
    base = dict(keys=[[4, 8], [4, 8]], costs={"bytes": [[2, 4], [5, 10]]},
                losses={"mse": [[0.3, 0.0], [0.1, 0.0]]}, constraints=[Constraint("bytes", upper=9)])
    return Problem(**(base | kw))


def test_objective_is_normalised_by_worst_total():
    p = tiny(losses={"a": [[2.0, 0.0], [1.0, 0.0]], "b": [[10.0, 0.0], [30.0, 0.0]]}, weights={"b": 2.0})
    assert p.scales == {"a": 3.0, "b": 40.0}
    s = p.evaluate([0, 1])
    assert s.objective == pytest.approx(2 / 3 + 2 * 10 / 40)
    assert s.losses == {"a": 2.0, "b": 10.0}


def test_totals_include_global_offset_and_constraint_totals():
    p = tiny(constraints=[Constraint("bytes", upper=100, offset=7), Constraint("bytes", upper=5, items=[0],
                                                                               name="first")])
    s = p.evaluate([1, 0])
    assert s.totals["bytes"] == 4 + 5 + 7
    assert s.constraint_totals == {"bytes": 16.0, "first": 4.0}


@pytest.mark.parametrize("bad, msg", [
    (dict(keys=[[4, 4], [4, 8]]), "duplicate"),
    (dict(losses={"mse": [[-1.0, 0.0], [0.1, 0.0]]}), "≥ 0"),
    (dict(constraints=[Constraint("nope", upper=1)]), "unknown resource"),
    (dict(fixed={0: 3}), "not among"),
    (dict(ties=[[0, 1]], keys=[[4, 8], [2, 3]]), "share no"),
    (dict(costs={"bytes": [[2, np.nan], [5, 10]]}), "finite"),
])
def test_validation_errors(bad, msg):
    with pytest.raises(ValueError, match=msg):
        tiny(**bad)


def test_constraint_needs_a_bound():
    with pytest.raises(ValueError, match="neither"):
        Constraint("bytes", upper=None)


def test_names_and_ragged_options():
    p = Problem(keys=[[2, 4, 8], [4, 8]], costs={"bytes": [[1, 2, 4], [2, 4]]},
                losses={"m": [[3, 1, 0], [1, 0]]}, names=["a", "b"], fixed={"b": 8},
                constraints=[Constraint("bytes", upper=6, items=["a", "b"])])
    assert p.n_options.tolist() == [3, 2]
    assert p.fixed == {1: 8}
    assert p.constraints[0].items == (0, 1)
    assert np.isinf(p.objective_matrix[1, 2])


def test_from_options_and_from_frame_agree():
    pd = pytest.importorskip("pandas")
    opts = [[Option(4, {"bytes": 2}, {"m": 0.3}), Option(8, {"bytes": 4}, {"m": 0.0})],
            [Option(4, {"bytes": 5}, {"m": 0.1}), Option(8, {"bytes": 10}, {"m": 0.0})]]
    a = Problem.from_options(opts)
    df = pd.DataFrame({"item": ["x", "x", "y", "y"], "key": [4, 8, 4, 8], "bytes": [2, 4, 5, 10],
                       "m": [0.3, 0.0, 0.1, 0.0]})
    b = Problem.from_frame(df, costs=["bytes"], losses=["m"])
    assert a.keys == b.keys and b.names == ("x", "y")
    np.testing.assert_array_equal(a.costs["bytes"], b.costs["bytes"])


def test_infeasible_budget_message():
    e = InfeasibleBudget("bytes", 1.2e9, 1.35e9, "bytes")
    assert "1.2e+09" in str(e) and "1.35e+09" in str(e)


def test_subset_keeps_offsets_and_restricts_items():
    p = tiny(constraints=[Constraint("bytes", upper=9, offset=1, items=[1])], fixed={1: 8})
    s = p.subset([1])
    assert s.n_items == 1 and s.fixed == {0: 8} and s.constraints[0].items == (0,)
